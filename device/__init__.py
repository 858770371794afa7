"""device: what runs where the artifact runs (a board, a phone's host side, this machine), with numpy
and the runtime only: never torch (the ExecuTorch pip wheel's Python bindings are the exception they
impose: a .pte is measured without torch by the native runner), never edge's model side.

    import device
    a = device.load_artifact("out/minilm-acm-executorch")   # plan + files checked against their digests
    run = a.runner(threads=1)                               # inputs then knobs -> outputs, as the plan says

Modules: artifact (open and check an artifact), driver (the routed plan's driver), runtime (the
registry), onnx / executorch / litert (one per runtime), measure (the measuring program).
"""
from device import executorch as _executorch  # noqa: F401  (registers "executorch"; imports it lazily)
from device import litert as _litert  # noqa: F401  (registers "litert")
from device import onnx as _onnx  # noqa: F401  (registers "onnx")
from device.artifact import Artifact, load_artifact
from device.runtime import MODES, RUNTIMES

__all__ = ["Artifact", "MODES", "RUNTIMES", "load_artifact"]
