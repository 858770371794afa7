"""FAKE ANDROID DEVICE - NOT A PHONE. A stand-in for the adb transport (profiler.targets.AdbClient's
five methods) so that the adb target's push / run / pull sequence is tested here, where no phone is:
the device's /data/local/tmp is a local directory, shell commands run on this machine with the
device paths mapped into it (an aarch64 binary through qemu-user, so the runner really is the aarch64
build), and getprop answers a fixed arm64 identity. The demo app cannot run here: `am start` of its
BenchmarkActivity is answered by the host's native runner writing the same records where the app
would (app=False: the app is not installed). Everything it runs is logged in `commands`."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PROPS = {"ro.product.cpu.abi": "arm64-v8a", "ro.product.manufacturer": "FAKE", "ro.product.model": "not-a-phone",
         "ro.board.platform": "qemu-aarch64", "ro.build.version.release": "14"}


class FakeDevice:
    emulated = True  # (what runs here is qemu: the profiler reports no latency verdict)

    def __init__(self, root: Path, serial: str = "FAKE-0001", app: bool = True):
        self.root, self.serial, self.commands, self.app = Path(root), serial, [], app

    def local(self, remote: str) -> Path:
        assert remote.startswith("/data/local/tmp"), remote  # the adb target stays where apps may write
        return self.root / remote.lstrip("/")

    def devices(self) -> list[tuple[str, str]]:
        return [(self.serial, "device")]

    def shell(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        self.commands.append(argv)
        if argv[0] == "getprop":
            return subprocess.CompletedProcess(argv, 0, PROPS.get(argv[1], "") + "\n", "")
        if argv[:3] == ["pm", "list", "packages"]:
            return subprocess.CompletedProcess(argv, 0, "package:org.edge.demo\n" if self.app else "", "")
        if argv[:2] == ["am", "start"]:
            return self._benchmark(argv, timeout)
        args = [str(self.local(a)) if a.startswith("/data/") else a for a in argv]
        for i, a in enumerate(args):  # an aarch64 ELF runs through qemu-user (EM_AARCH64 = 0xB7)
            p = Path(a)
            if p.is_file() and p.read_bytes()[:4] == b"\x7fELF" and p.read_bytes()[18] == 0xB7:
                args.insert(i, "qemu-aarch64-static")
                break
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout)

    def _benchmark(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        """What BenchmarkActivity does, done by the host's native runner (the same records)."""
        from profiler import native

        extras = {argv[i + 1]: argv[i + 2] for i in range(len(argv) - 2) if argv[i] in ("--es", "--ei")}
        model_dir = self.local(extras["model_dir"])
        flags = [x for key in ("runs", "warmup", "branch_runs") if key in extras
                 for x in (f"--{key.replace('_', '-')}", extras[key])]
        subprocess.run([str(native.ensure()), str(model_dir), "--out", f"{model_dir}.results.jsonl", "--no-ops", *flags],
                       capture_output=True, timeout=timeout)
        return subprocess.CompletedProcess(argv, 0, "Starting: Intent { cmp=org.edge.demo/.BenchmarkActivity }\nStatus: ok\n", "")

    def push(self, local: Path, remote: str) -> None:
        dest = self.local(remote)
        dest.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if Path(local).is_dir() else shutil.copyfile)(local, dest)

    def pull(self, remote: str, local: Path) -> None:
        shutil.copyfile(self.local(remote), local)
