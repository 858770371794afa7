"""FAKE ANDROID DEVICE - NOT A PHONE. A stand-in for the adb transport (profiler.targets.AdbClient's
five methods) so that the adb target's push / run / pull sequence is tested here, where no phone is:
the device's /data/local/tmp is a local directory, shell commands run on this machine with the
device paths mapped into it (an aarch64 binary through qemu-user, so the runner really is the aarch64
build), and getprop answers a fixed arm64 identity. Everything it runs is logged in `commands`."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PROPS = {"ro.product.cpu.abi": "arm64-v8a", "ro.product.manufacturer": "FAKE", "ro.product.model": "not-a-phone",
         "ro.board.platform": "qemu-aarch64", "ro.build.version.release": "14"}


class FakeDevice:
    emulated = True  # (what runs here is qemu: the profiler reports no latency verdict)

    def __init__(self, root: Path, serial: str = "FAKE-0001"):
        self.root, self.serial, self.commands = Path(root), serial, []

    def local(self, remote: str) -> Path:
        assert remote.startswith("/data/local/tmp"), remote  # the adb target stays where apps may write
        return self.root / remote.lstrip("/")

    def devices(self) -> list[tuple[str, str]]:
        return [(self.serial, "device")]

    def shell(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        self.commands.append(argv)
        if argv[0] == "getprop":
            return subprocess.CompletedProcess(argv, 0, PROPS.get(argv[1], "") + "\n", "")
        args = [str(self.local(a)) if a.startswith("/data/") else a for a in argv]
        for i, a in enumerate(args):  # an aarch64 ELF runs through qemu-user (EM_AARCH64 = 0xB7)
            p = Path(a)
            if p.is_file() and p.read_bytes()[:4] == b"\x7fELF" and p.read_bytes()[18] == 0xB7:
                args.insert(i, "qemu-aarch64-static")
                break
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout)

    def push(self, local: Path, remote: str) -> None:
        dest = self.local(remote)
        dest.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if Path(local).is_dir() else shutil.copyfile)(local, dest)

    def pull(self, remote: str, local: Path) -> None:
        shutil.copyfile(self.local(remote), local)
