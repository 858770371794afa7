"""Where an artifact is profiled. A target does four things: describe the device, push the files,
run the measuring side there (profiler.measure, or the native runner on a board), pull the results.
Every remote step has a timeout; a failure is one EdgeError that says what to check.

Registered: "local" (this machine, the Python runtimes, in a subprocess). Boards over SSH, phones
over adb and CUDA are issue 5's next steps: an unknown target name lists the registered ones."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edge.errors import EdgeError
from edge.registry import Registry

TARGETS: Registry[type] = Registry("profiling target")


@dataclass(frozen=True)
class Local:
    """The host CPU: the artifact is already here; the measuring side runs as `python -m
    profiler.measure` in a subprocess (so its peak memory is the artifact's, not this process's)."""

    spec: str = "local"

    def describe(self) -> dict:
        from profiler.measure import describe

        return {"target": self.spec, **{k: v for k, v in describe(1, "onnx").items()
                                        if k in ("machine", "cpu", "cores", "os", "python")}}

    def push(self, artifact: Path, work: Path) -> Path:
        return artifact

    def run(self, artifact: Path, results: Path, options: list[str], timeout: float, watch=None) -> None:
        """Run the measuring side; watch(): called about 5 times a second while it runs (progress)."""
        argv = [sys.executable, "-m", "profiler.measure", str(artifact), "--out", str(results), *options]
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, text=True, cwd=results.parent)
            t0 = time.monotonic()
            while proc.poll() is None:
                if time.monotonic() - t0 > timeout:
                    proc.kill()
                    proc.wait()
                    raise EdgeError(f"profiling {artifact} did not finish in {timeout:.0f} s; lower --runs "
                                    "or raise --timeout (the results so far are kept)")
                time.sleep(0.2)
                if watch:
                    watch()
            if watch:
                watch()
            if proc.returncode != 0:
                err.seek(0)
                last = [line for line in err.read().strip().splitlines() if line.strip()][-1:] or ["no message"]
                raise EdgeError(f"the measuring process failed (exit {proc.returncode}: {last[0][:300]})")

    def pull(self, results: Path, local: Path) -> Path:
        if results != local:
            shutil.copyfile(results, local)
        return local


TARGETS.register("local")(Local)


def target_for(spec: str):
    """"local" -> Local(); other schemes ("ssh://...", "adb:...", "cuda") by their registered name."""
    scheme = spec.split("://", 1)[0].split(":", 1)[0]
    return TARGETS.get(scheme)(spec)
