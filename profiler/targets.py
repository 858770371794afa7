"""Where an artifact is profiled. A target does five things: describe the device, push the files,
name the measuring program there (`command`: device.measure on the Python runtimes, or the native
runner, pushed first where it must be), run it, pull the results. Every remote step has a timeout; a
failure is one EdgeError that says what to check. Its USAGE says how a user writes it.

Registered: "local" (this machine, in a subprocess), "cuda" (its NVIDIA GPU, ONNX Runtime), "ssh"
(a Linux board) and "adb" (an Android phone). An unknown target name lists the registered ones."""
from __future__ import annotations

import re
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
HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:%-]{0,252}")  # a host name, IPv4 or IPv6 address (no leading -)
USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
CPU = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.,=+-]{0,127}")  # a qemu -cpu model and its features (max,sme=off)
SERIAL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")  # an adb serial (USB serial, or host:port)


@dataclass(frozen=True)
class Local:
    """The host CPU: the artifact is already here; the measuring side runs as `python -m
    device.measure` in a subprocess (so its peak memory is the artifact's, not this process's)."""

    spec: str = "local"
    USAGE = "local (this CPU)"  # how a user writes this target (the CLI's --target help lists every one)

    def __post_init__(self):
        name = type(self).__dataclass_fields__["spec"].default
        if self.spec != name:
            raise EdgeError(f"bad target {self.spec[:120]!r}: write {name} (it takes no address)")

    def describe(self) -> dict:
        from device.measure import machine

        return {"target": self.spec, **machine()}

    def push(self, artifact: Path, work: Path) -> Path:
        return artifact

    def command(self, runner: str) -> list[str]:
        """The measuring program: "python" (device.measure) or "native" (the C++ runner, built once)."""
        _not_app(runner)
        if runner == "native":
            from profiler import native

            return native.command(native.ensure(), native.host_arch())
        return [sys.executable, "-m", "device.measure"]

    def run(self, command: list[str], artifact: Path, results: Path, options: list[str], timeout: float,
            watch=None) -> None:
        """Run the measuring side; watch(): called about 5 times a second while it runs (progress)."""
        # absolute paths: the measuring process runs in the results' directory, and a path the user gave
        # relative to their own working directory would point elsewhere there
        argv = [*command, str(Path(artifact).resolve()), "--out", str(Path(results).resolve()), *options]
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

    def pull(self, results: Path, local: Path, suffix: str = "") -> Path:
        """Fetch the results (or the file beside them named results + suffix, e.g. ".etdump")."""
        shutil.copyfile(f"{results}{suffix}", local)
        return local


TARGETS.register("local")(Local)


def _check_exit(spec: str, code: int, output: str, timeout: float, who: str) -> None:
    """The exit status of `timeout N PROGRAM ...` run on a target, as one EdgeError (124: timed out)."""
    if code == 124:
        raise EdgeError(f"profiling on {spec} did not finish in {timeout:.0f} s; lower --runs or raise "
                        "--timeout (the results so far are kept)")
    if code != 0:
        last = [line for line in output.splitlines() if line.strip()][-1:] or ["no message"]
        raise EdgeError(f"the {who} on {spec} failed (exit {code}: {last[0][:300]})")


def _not_app(runner: str) -> None:
    if runner == "app":
        raise EdgeError("the app runner is android_demo's benchmark on a phone: profile with --target adb")


@dataclass(frozen=True)
class Cuda(Local):
    """This machine's NVIDIA GPU through ONNX Runtime's CUDA execution provider (onnxruntime-gpu, the
    `cuda` extra). Without it the measuring side stops with an error: a CPU fallback is not a result."""

    spec: str = "cuda"
    USAGE = "cuda (this machine's NVIDIA GPU through ONNX Runtime; the cuda extra)"

    def command(self, runner: str) -> list[str]:
        if runner == "native":
            raise EdgeError("the native runner runs on the CPU (ExecuTorch, XNNPACK); profile cuda with --runner python")
        return [*super().command(runner), "--device", "cuda"]


TARGETS.register("cuda")(Cuda)


def target_for(spec):
    """"local" -> Local(); other schemes ("ssh://...", "adb:...") by their registered name; a target
    object is used as it is."""
    if not isinstance(spec, str):
        return spec
    scheme = spec.split("://", 1)[0].split(":", 1)[0]
    return TARGETS.get(scheme)(spec)


class Ssh:
    """A Linux board over SSH: ssh://user@host[:port][?key=PATH&python=PYTHON&dir=REMOTE_DIR&known_hosts=PATH
    &arch=ARCH&emulator=QEMU&emulator_cpu=CPU]. The system's OpenSSH client, key auth only (BatchMode: never a password
    prompt), every call with a timeout. Files go over as a tar stream (`tar -x` on the board); the
    measuring side is `PYTHON -m device.measure` (edge installed there) or the native runner, built
    here for the board's architecture (`uname -m`, or arch=) and pushed with its libraries; the
    results come back with `cat`. emulator= runs the runner through that qemu-user binary on the
    board: outputs are real, timings are not latencies (the report says so and gives no verdict);
    emulator_cpu= is its -cpu (qemu's default: every feature it emulates; "max,sme=off" leaves out SME,
    whose emulation in qemu 7.2 gives XNNPACK's int8 GEMMs other results than the same program on NEON:
    bench/results/int8.txt)."""

    USAGE = ("ssh://user@host[:port][?key=PATH&python=PYTHON&dir=DIR&known_hosts=PATH&arch=ARCH&emulator=QEMU"
             "&emulator_cpu=CPU] "
             "(a Linux board)")

    def __init__(self, spec: str):
        from urllib.parse import parse_qs, urlsplit

        self.spec = spec
        u = urlsplit(spec)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        unknown = sorted(set(q) - {"key", "python", "dir", "known_hosts", "arch", "emulator", "emulator_cpu"})
        if u.scheme != "ssh" or not u.hostname or unknown:
            raise EdgeError(f"bad ssh target {self.spec!r}: write ssh://user@host[:port][?key=PATH&python=PYTHON&dir=DIR]"
                            + (f" (unknown {', '.join(unknown)})" if unknown else ""))
        try:
            self.port = 22 if u.port is None else u.port
        except ValueError:
            self.port = -1
        if not 1 <= self.port <= 65535:
            raise EdgeError(f"bad ssh target {spec[:120]!r}: the port must be a number in 1..65535") from None
        # a host or user that ssh could read as an option (-oProxyCommand=...) or a shell word never reaches it
        if not HOST.fullmatch(u.hostname) or (u.username is not None and not USER.fullmatch(u.username)) or u.password:
            raise EdgeError(f"bad ssh target {spec[:120]!r}: the user and host must be plain names or addresses "
                            "(letters, digits, . _ - and : for IPv6; not starting with -)")
        self.host = f"{u.username}@{u.hostname}" if u.username else u.hostname
        self.key, self.python, self.known_hosts = q.get("key"), q.get("python", "python3"), q.get("known_hosts")
        self.dir = q.get("dir", "/tmp/edge-profile")
        if not self.dir.startswith("/") or ".." in self.dir.split("/") or self.dir.rstrip("/") == "":
            raise EdgeError(f"bad ssh target {spec[:120]!r}: dir= must be an absolute directory on the board, not / "
                            "and without ..")
        self.arch, self.emulator, self.cpu = q.get("arch"), q.get("emulator"), q.get("emulator_cpu")
        if self.cpu is not None and (not self.emulator or not CPU.fullmatch(self.cpu)):
            raise EdgeError(f"bad ssh target {spec[:120]!r}: emulator_cpu= goes with emulator= and is a qemu CPU "
                            "model with its features (letters, digits and _ . , = + -), e.g. max,sme=off")
        self.remote_results = ""

    def _ssh(self, remote: list[str], timeout: float, stdin=None, what: str = "") -> subprocess.CompletedProcess:
        import shlex

        argv = ["ssh", "-p", str(self.port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                "-o", "StrictHostKeyChecking=accept-new", *(["-i", self.key] if self.key else []),
                *(["-o", f"UserKnownHostsFile={self.known_hosts}"] if self.known_hosts else []),
                "--", self.host, shlex.join(remote)]
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise EdgeError(f"{self.spec}: {what or remote[0]} did not finish in {timeout:.0f} s") from None
        if done.returncode == 255:  # ssh's own failure: unreachable, refused, authentication
            msg = done.stderr.decode(errors="replace").strip().splitlines()
            raise EdgeError(f"cannot reach {self.spec} over ssh ({(msg or ['no message'])[-1][:200]}); "
                            "check the address, the port and that the key is authorized on the board")
        return done

    def _uname(self) -> list[str]:
        script = 'uname -m; uname -sr; nproc; grep -m1 -E "^(model name|Hardware|CPU part)" /proc/cpuinfo || echo'
        done = self._ssh(["sh", "-c", script], 60, what="describing the board")
        lines = done.stdout.decode(errors="replace").splitlines()
        if done.returncode != 0 or len(lines) < 3:
            raise EdgeError(f"{self.spec}: the board did not describe itself (uname/nproc failed: "
                            f"{done.stderr.decode(errors='replace').strip()[-200:]}); is it a Linux board?")
        return lines

    def describe(self) -> dict:
        lines = self._uname()
        cpu = lines[3].split(":", 1)[-1].strip() if len(lines) > 3 else ""
        return {"target": self.spec, "machine": lines[0], "os": lines[1], "cores": int(lines[2]), "cpu": cpu,
                "emulated": bool(self.emulator)}

    def _put(self, local: Path, remote_parent: str, what: str) -> str:
        """Copy the directory `local` to REMOTE_PARENT/NAME on the board (replacing it) as a tar stream."""
        import io
        import tarfile

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(str(local), arcname=local.name)
        remote = f"{remote_parent}/{local.name}"
        done = self._ssh(["sh", "-c", 'rm -rf "$1" && mkdir -p "$2" && tar -xf - -C "$2"', "push", remote, remote_parent],
                         600, stdin=buf.getvalue(), what=f"copying the {what}")
        if done.returncode != 0:
            raise EdgeError(f"{self.spec}: copying the {what} failed ({done.stderr.decode(errors='replace').strip()[-200:]})")
        return remote

    def push(self, artifact: Path, work: Path) -> Path:
        return Path(self._put(artifact, self.dir, "artifact"))

    def command(self, runner: str) -> list[str]:
        _not_app(runner)
        if runner != "native":
            return [self.python, "-m", "device.measure"]
        from profiler import native

        arch = native.get_arch(self.arch or self._uname()[0])
        remote = self._put(native.ensure(arch.name).parent, self.dir, f"{arch.name} runner")
        cpu = ["-cpu", self.cpu] if self.cpu else []
        return [*([self.emulator, *cpu, "-L", arch.sysroot] if self.emulator else []), f"{remote}/{native.BINARY}"]

    def run(self, command: list[str], artifact: Path, results: Path, options: list[str], timeout: float,
            watch=None) -> None:
        self.remote_results = remote = f"{artifact}.results.jsonl"
        self._ssh(["rm", "-f", remote], 60)
        done = self._ssh(["timeout", str(int(timeout)), *command, str(artifact), "--out", remote, *options],
                         timeout + 30, what="profiling")
        if done.returncode in (126, 127):  # (timeout's codes: the program is missing or cannot be executed)
            raise EdgeError(f"{self.spec}: {command[0]} cannot be run on the board; install edge there and pass "
                            "?python=, or profile with the native runner (--runner native)")
        _check_exit(self.spec, done.returncode, done.stderr.decode(errors="replace"), timeout, "measuring process")

    def pull(self, results: Path, local: Path, suffix: str = "") -> Path:
        done = self._ssh(["cat", self.remote_results + suffix], 120, what="fetching the results")
        if done.returncode != 0:
            raise EdgeError(f"{self.spec}: no results on the board ({done.stderr.decode(errors='replace').strip()[-200:]})")
        local.write_bytes(done.stdout)
        return local


TARGETS.register("ssh")(Ssh)


class AdbClient:
    """The real adb client (Debian's `adb`, or the SDK's platform-tools) for one device: every call
    an argument list with a timeout. A test can stand in another transport with the same five methods."""

    emulated = False

    def __init__(self, serial: str | None):
        if shutil.which("adb") is None:
            raise EdgeError("the adb client is not installed; apt-get install adb (or put the Android SDK's "
                            "platform-tools on PATH)")
        self.serial = serial

    def _adb(self, args: list[str], timeout: float, what: str, device: bool = True) -> subprocess.CompletedProcess:
        argv = ["adb", *(["-s", self.serial] if device and self.serial else []), *args]
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise EdgeError(f"adb: {what} did not finish in {timeout:.0f} s; is the device still connected?") from None

    def devices(self) -> list[tuple[str, str]]:
        done = self._adb(["devices"], 60, "listing the devices", device=False)
        if done.returncode != 0:
            raise EdgeError(f"adb cannot list devices ({(done.stderr.strip().splitlines() or ['no message'])[-1][:200]})")
        rows = [line.split() for line in done.stdout.splitlines()[1:] if line.strip() and not line.startswith("*")]
        return [(r[0], r[1]) for r in rows if len(r) >= 2]

    def shell(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        import shlex

        return self._adb(["shell", shlex.join(argv)], timeout, argv[0])

    def push(self, local: Path, remote: str) -> None:
        done = self._adb(["push", str(local), remote], 600, f"pushing {local.name}")
        if done.returncode != 0:
            raise EdgeError(f"adb push of {local} failed ({done.stderr.strip()[-200:]})")

    def pull(self, remote: str, local: Path) -> None:
        done = self._adb(["pull", remote, str(local)], 120, "pulling the results")
        if done.returncode != 0:
            raise EdgeError(f"adb: no results on the device ({done.stderr.strip()[-200:]})")


class Adb:
    """An Android phone over adb: adb[:SERIAL] (the only device connected, or the one with that serial).
    The artifact goes to /data/local/tmp/edge. Runner "native": the aarch64 runner with its own C
    runtime goes there too, started through its bundled loader (no NDK, no glibc on the phone).
    Runner "app": android_demo's BenchmarkActivity, started with `am start`, writes the same records
    next to the artifact; they are polled until complete. The results come back with adb pull."""

    USAGE = "adb[:SERIAL] (an Android phone over adb; runner native or app)"
    DIR = "/data/local/tmp/edge"
    APP = "org.edge.demo"
    APP_OPTIONS = {"--runs": "runs", "--warmup": "warmup", "--branch-runs": "branch_runs"}  # (as intent extras)
    ABIS = {"arm64-v8a": "aarch64", "x86_64": "x86_64"}

    def __init__(self, spec: str, transport=None):
        self.spec = spec
        serial = spec.split(":", 1)[1] if ":" in spec else None
        if serial is not None and not SERIAL.fullmatch(serial):
            raise EdgeError(f"bad adb target {spec!r}: write adb or adb:SERIAL (a serial from `adb devices`)")
        self.adb = transport or AdbClient(serial)
        self.serial, self.remote_results = serial, ""
        self._checked = False

    def _device(self) -> None:
        """The device must be there and ready: a clear error otherwise, before anything is pushed."""
        if self._checked:
            return
        devices = self.adb.devices()
        ready = [s for s, state in devices if state == "device"]
        listed = ", ".join(f"{s} ({state})" for s, state in devices) or "none"
        if self.serial is None:
            if not ready:
                raise EdgeError(f"no Android device is ready over adb (connected: {listed}); plug one in with USB "
                                "debugging on and accept the prompt, then check `adb devices`")
            if len(ready) > 1:
                raise EdgeError(f"{len(ready)} Android devices are connected ({listed}); name one: --target adb:SERIAL")
            self.serial = ready[0]
        elif self.serial not in ready:
            raise EdgeError(f"Android device {self.serial} is not ready over adb (connected: {listed}); check the "
                            "serial with `adb devices`")
        self._checked = True

    def _getprop(self, name: str) -> str:
        done = self.adb.shell(["getprop", name], 30)
        return done.stdout.strip() if done.returncode == 0 else ""

    def describe(self) -> dict:
        self._device()
        done = self.adb.shell(["sh", "-c", "nproc; uname -sr"], 30)
        lines = done.stdout.splitlines() + ["", ""]
        return {"target": self.spec, "serial": self.serial, "machine": self._getprop("ro.product.cpu.abi"),
                "cpu": f"{self._getprop('ro.product.manufacturer')} {self._getprop('ro.product.model')} "
                       f"({self._getprop('ro.soc.model') or self._getprop('ro.board.platform')})".strip(),
                "android": self._getprop("ro.build.version.release"),
                "cores": int(lines[0]) if lines[0].strip().isdigit() else None, "os": lines[1],
                "emulated": bool(self.adb.emulated)}

    def push(self, artifact: Path, work: Path) -> Path:
        self._device()
        remote = f"{self.DIR}/{artifact.name}"
        self.adb.shell(["rm", "-rf", remote], 60)
        self.adb.shell(["mkdir", "-p", self.DIR], 60)
        self.adb.push(artifact, remote)
        return Path(remote)

    def command(self, runner: str) -> list[str]:
        if runner == "app":
            done = self.adb.shell(["pm", "list", "packages", self.APP], 60)
            if f"package:{self.APP}" not in done.stdout.split():
                raise EdgeError(f"the edge demo app ({self.APP}) is not installed on {self.serial}: build and install it "
                                "(android_demo/README.md), or profile with --runner native")
            return ["am", "start", "-W", "-n", f"{self.APP}/.BenchmarkActivity"]
        if runner != "native":
            raise EdgeError("an Android phone runs the native runner or the demo app: profile with --runner native or app")
        from profiler import native

        abi = self._getprop("ro.product.cpu.abi")
        if abi not in self.ABIS:
            raise EdgeError(f"no runner build for the device's ABI {abi or '(unknown)'}; known: {', '.join(self.ABIS)}")
        arch = self.ABIS[abi]
        local = native.ensure(arch).parent
        remote = f"{self.DIR}/runner-{arch}"
        self.adb.shell(["rm", "-rf", remote], 60)
        self.adb.push(local, remote)
        binary = f"{remote}/{native.BINARY}"
        self.adb.shell(["chmod", "-R", "755", remote], 60)
        return native.standalone(binary, arch)

    def run(self, command: list[str], artifact: Path, results: Path, options: list[str], timeout: float,
            watch=None) -> None:
        self.remote_results = remote = f"{artifact}.results.jsonl"
        self.adb.shell(["rm", "-f", remote], 60)
        if command[0] == "am":
            return self._run_app(command, artifact, remote, options, timeout)
        done = self.adb.shell(["timeout", str(int(timeout)), *command, str(artifact), "--out", remote, *options],
                              timeout + 30)
        _check_exit(self.spec, done.returncode, done.stderr + done.stdout, timeout, "runner")

    def _run_app(self, command: list[str], artifact: Path, remote: str, options: list[str], timeout: float) -> None:
        """Start the app's benchmark and poll its records until the last one (memory or error) is there."""
        from device.measure import read_records

        extras = ["--es", "model_dir", str(artifact)]
        for flag, value in zip(options, options[1:]):
            if flag in self.APP_OPTIONS:
                extras += ["--ei", self.APP_OPTIONS[flag], value]
        done = self.adb.shell([*command, *extras], 120)
        if done.returncode != 0 or "Error" in done.stdout:
            raise EdgeError(f"{self.spec}: the app's benchmark did not start ({(done.stdout + done.stderr).strip()[-200:]})")
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            got = self.adb.shell(["cat", remote], 60)
            kinds = {r.get("kind") for r in read_records(got.stdout)} if got.returncode == 0 else set()
            if kinds & {"memory", "error"}:
                return
            time.sleep(1)
        raise EdgeError(f"the app's benchmark on {self.spec} did not finish in {timeout:.0f} s; lower --runs or raise "
                        "--timeout (the results so far are kept)")

    def pull(self, results: Path, local: Path, suffix: str = "") -> Path:
        self.adb.pull(self.remote_results + suffix, local)
        return local


TARGETS.register("adb")(Adb)
