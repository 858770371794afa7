"""The native runner (profiler/runner/edge_runner.cpp): build it against the executorch wheel's headers
and shared libraries, for this machine or cross-compiled for an ARM Linux board, into a directory that
holds the binary and the libraries it needs (lib/, found through its RPATH), ready to push.

    edge runner --arch aarch64 -o build/runner-aarch64

The aarch64 libraries come from executorch's aarch64 wheel, which setup.sh downloads from PyPI into
the data directory (no download at build time). The runner runs ExecuTorch artifacts only.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from edge.files import data_dir
from edge.errors import EdgeError

SOURCE = Path(__file__).parent / "runner" / "edge_runner.cpp"
BINARY = "edge_runner"
# what the runner links (the XNNPACK backend and the kernels register themselves when loaded)
LIBS = ["executorch", "executorch_backend_xnnpack", "executorch_kernels_optimized", "executorch_threadpool",
        "executorch_etdump"]
# a cross build also carries its C/C++ runtime in glibc/ (not in lib/: a board's own glibc must not
# pick these up through the RPATH), so that it runs where no glibc is installed: an Android phone
GLIBC = ["libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1", "libpthread.so.0", "libdl.so.2"]


@dataclass(frozen=True)
class RunnerPlatform:
    """A CPU architecture the runner can be built for: its compiler and the qemu that runs it here."""

    name: str
    compiler: str
    package: str  # the Debian package of the compiler
    wheel_platform: str  # the executorch wheel whose libraries it links
    qemu: str | None = None  # (to run it on an x86_64 host: user-mode emulation, outputs only)
    sysroot: str | None = None  # the cross toolchain's C runtime, bundled in glibc/ (see standalone)
    loader: str | None = None


PLATFORMS = {a.name: a for a in [
    RunnerPlatform("x86_64", "g++", "g++", "manylinux_2_28_x86_64"),
    RunnerPlatform("aarch64", "aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu", "manylinux_2_28_aarch64", "qemu-aarch64-static", "/usr/aarch64-linux-gnu",
         "ld-linux-aarch64.so.1"),
]}


def host_arch() -> str:
    return platform.machine()


def get_arch(name: str) -> RunnerPlatform:
    if name not in PLATFORMS:
        raise EdgeError(f"no runner build for architecture {name!r}; known: {', '.join(sorted(PLATFORMS))}")
    return PLATFORMS[name]


def wheel_cache() -> Path:
    return data_dir() / "wheels"


def wheel_name(arch: RunnerPlatform) -> str:
    return f"executorch-{version('executorch')}-cp311-cp311-{arch.wheel_platform}.whl"


def fetch_wheel(arch: RunnerPlatform) -> Path:
    """Download executorch's wheel for `arch` into the data directory (setup.sh calls this)."""
    path = wheel_cache() / wheel_name(arch)
    if not path.is_file():
        wheel_cache().mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                        "--only-binary=:all:", "--platform", arch.wheel_platform, "--python-version", "3.11",
                        f"executorch=={version('executorch')}", "-d", str(wheel_cache())], check=True)
    return path


def _executorch_dir(arch: RunnerPlatform, scratch: Path) -> Path:
    """The executorch package directory whose lib/ the runner links: the installed one on its own
    architecture, else the one unpacked from the cached wheel."""
    if arch.name == host_arch():
        return Path(importlib.util.find_spec("executorch").submodule_search_locations[0])
    wheel = wheel_cache() / wheel_name(arch)
    if not wheel.is_file():
        raise EdgeError(f"the executorch wheel for {arch.name} is not in {wheel_cache()}; run `bash setup.sh` "
                        f"(or python -c 'from profiler.native import *; fetch_wheel(get_arch(\"{arch.name}\"))')")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(scratch, [n for n in z.namelist() if n.startswith("executorch/lib/") and n.endswith(".so")])
    return scratch / "executorch"


def build(arch_name: str | None = None, out: str | Path | None = None, replace: bool = True) -> Path:
    """Build the runner for `arch_name` (default: this machine's) into `out` (default:
    build/runner-ARCH); returns the path of the binary. The build happens in a temporary directory
    that replaces `out` only when it succeeded; with replace=False an `out` that another process
    finished meanwhile is kept (it may be running) and this build dropped."""
    arch = get_arch(arch_name or host_arch())
    out = Path(out or Path("build") / f"runner-{arch.name}")
    if shutil.which(arch.compiler) is None:
        raise EdgeError(f"{arch.compiler} is not installed; on Debian: apt-get install {arch.package} "
                        "(setup.sh does it as root)")
    include = Path(importlib.util.find_spec("executorch").submodule_search_locations[0]) / "include"
    from edge.files import writable_parent

    writable_parent(out, "the runner directory")
    try:
        scratch = tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.")
    except OSError as e:
        raise EdgeError(f"cannot write the runner directory {out}: {e.strerror or e}") from None
    with scratch as tmp:
        tmp = Path(tmp)
        stage = tmp / "runner"
        (stage / "lib").mkdir(parents=True)
        et = _executorch_dir(arch, tmp / "wheel")
        for lib in LIBS:
            shutil.copy2(et / "lib" / f"lib{lib}.so", stage / "lib")
        if arch.sysroot:
            (stage / "glibc").mkdir()
            for lib in [arch.loader, *GLIBC]:
                shutil.copy2(Path(arch.sysroot) / "lib" / lib, stage / "glibc" / lib)  # (follows the symlinks)
        cmd = [arch.compiler, "-O3", "-std=c++17", "-DC10_USING_CUSTOM_GENERATED_MACROS", "-DET_EVENT_TRACER_ENABLED",
               f"-DEDGE_EXECUTORCH_VERSION=\"{version('executorch')}\"", f"-I{include}",
               f"-I{include / 'executorch/runtime/core/portable_type/c10'}", str(SOURCE),
               "-o", str(stage / BINARY), f"-L{stage / 'lib'}", "-Wl,--no-as-needed",
               *[f"-l{lib}" for lib in LIBS], "-Wl,-rpath,$ORIGIN/lib", "-pthread"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise EdgeError(f"building the {arch.name} runner failed: {r.stderr.strip().splitlines()[-1][:300]}")
        if out.exists() and replace:
            shutil.rmtree(out)
        try:
            os.replace(stage, out)
        except OSError:  # (a directory onto a non-empty one: another build won)
            if replace or not (out / BINARY).is_file():
                raise
    return out / BINARY


def build_runner(arch_name: str | None = None, out: str | Path | None = None, overwrite: bool = False) -> Path:
    """`edge runner`: build the runner for `arch_name` (default: this machine's) into `out` (default
    build/runner-ARCH), which must not exist unless `overwrite`. Returns the path of the binary."""
    from edge.files import check_output

    arch = get_arch(arch_name or host_arch())
    return build(arch.name, check_output(out or Path("build") / f"runner-{arch.name}", overwrite))


def host_runner() -> tuple[str, str | None]:
    """The runner to measure with on this machine: ("native", None) where the native runner builds
    here (once: ensure), else ("python", why not)."""
    try:
        ensure()
        return "native", None
    except EdgeError as e:
        return "python", str(e)


def ensure(arch_name: str | None = None) -> Path:
    """The runner binary for `arch_name`, built once per source and executorch version into the data
    directory (runners/ARCH-HASH) and reused."""
    import hashlib

    arch = get_arch(arch_name or host_arch())
    digest = hashlib.sha256(SOURCE.read_bytes() + Path(__file__).read_bytes() + version("executorch").encode()).hexdigest()[:12]
    out = data_dir() / "runners" / f"{arch.name}-{digest}"
    return out / BINARY if (out / BINARY).is_file() else build(arch.name, out, replace=False)


def standalone(binary: str, arch_name: str) -> list[str]:
    """The command that runs a cross-built runner at `binary` (a path on the device) with its own
    bundled C runtime, through the bundled dynamic loader: no glibc needed on the device."""
    arch = get_arch(arch_name)
    if not arch.loader:
        raise EdgeError(f"the {arch.name} runner carries no C runtime of its own; it runs only where glibc is installed")
    glibc = f"{Path(binary).parent}/glibc"
    return [f"{glibc}/{arch.loader}", "--library-path", f"{glibc}:{Path(binary).parent}/lib", binary]


def command(binary: Path, arch_name: str) -> list[str]:
    """The command that runs `binary` here: itself, or through qemu when it is built for another
    architecture (outputs only: emulated timings mean nothing)."""
    arch = get_arch(arch_name)
    if arch.name == host_arch():
        return [str(binary)]
    if arch.qemu is None or shutil.which(arch.qemu) is None:
        raise EdgeError(f"a {arch.name} runner cannot run on this {host_arch()} machine without "
                        f"{arch.qemu or 'an emulator'}; apt-get install qemu-user-static")
    return [arch.qemu, "-L", arch.sysroot, str(binary)]
