"""Where an artifact is profiled. A target does five things: describe the device, push the files,
name the measuring program there (`command`: profiler.measure on the Python runtimes, or the native
runner, pushed first where it must be), run it, pull the results. Every remote step has a timeout; a
failure is one EdgeError that says what to check.

Registered: "local" (this machine, in a subprocess) and "ssh" (a Linux board). An unknown target
name lists the registered ones."""
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
        from profiler.measure import machine

        return {"target": self.spec, **machine()}

    def push(self, artifact: Path, work: Path) -> Path:
        return artifact

    def command(self, runner: str) -> list[str]:
        """The measuring program: "python" (profiler.measure) or "native" (the C++ runner, built once)."""
        if runner == "native":
            from profiler import native

            return native.command(native.ensure(), native.host_arch())
        return [sys.executable, "-m", "profiler.measure"]

    def run(self, command: list[str], artifact: Path, results: Path, options: list[str], timeout: float,
            watch=None) -> None:
        """Run the measuring side; watch(): called about 5 times a second while it runs (progress)."""
        argv = [*command, str(artifact), "--out", str(results), *options]
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
        shutil.copyfile(results, local)
        return local


TARGETS.register("local")(Local)


def target_for(spec: str):
    """"local" -> Local(); other schemes ("ssh://...", "adb:...", "cuda") by their registered name."""
    scheme = spec.split("://", 1)[0].split(":", 1)[0]
    return TARGETS.get(scheme)(spec)


class Ssh:
    """A Linux board over SSH: ssh://user@host[:port][?key=PATH&python=PYTHON&dir=REMOTE_DIR&known_hosts=PATH
    &arch=ARCH&emulator=QEMU]. The system's OpenSSH client, key auth only (BatchMode: never a password
    prompt), every call with a timeout. Files go over as a tar stream (`tar -x` on the board); the
    measuring side is `PYTHON -m profiler.measure` (edge installed there) or the native runner, built
    here for the board's architecture (`uname -m`, or arch=) and pushed with its libraries; the
    results come back with `cat`. emulator= runs the runner through that qemu-user binary on the
    board: outputs are real, timings are not latencies (the report says so and gives no verdict)."""

    def __init__(self, spec: str):
        from urllib.parse import parse_qs, urlsplit

        self.spec = spec
        u = urlsplit(spec)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        unknown = sorted(set(q) - {"key", "python", "dir", "known_hosts", "arch", "emulator"})
        if u.scheme != "ssh" or not u.hostname or unknown:
            raise EdgeError(f"bad ssh target {self.spec!r}: write ssh://user@host[:port][?key=PATH&python=PYTHON&dir=DIR]"
                            + (f" (unknown {', '.join(unknown)})" if unknown else ""))
        try:
            self.port = u.port or 22
        except ValueError:
            raise EdgeError(f"bad ssh target {spec!r}: the port must be a number") from None
        self.host = f"{u.username}@{u.hostname}" if u.username else u.hostname
        self.key, self.python, self.known_hosts = q.get("key"), q.get("python", "python3"), q.get("known_hosts")
        self.dir = q.get("dir", "/tmp/edge-profile")
        self.arch, self.emulator = q.get("arch"), q.get("emulator")
        self.remote_results = ""

    def _ssh(self, remote: list[str], timeout: float, stdin=None, what: str = "") -> subprocess.CompletedProcess:
        import shlex

        argv = ["ssh", "-p", str(self.port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                "-o", "StrictHostKeyChecking=accept-new", *(["-i", self.key] if self.key else []),
                *(["-o", f"UserKnownHostsFile={self.known_hosts}"] if self.known_hosts else []),
                self.host, shlex.join(remote)]
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
        if runner != "native":
            return [self.python, "-m", "profiler.measure"]
        from profiler import native

        arch = native.get_arch(self.arch or self._uname()[0])
        remote = self._put(native.ensure(arch.name).parent, self.dir, f"{arch.name} runner")
        return [*([self.emulator, "-L", arch.sysroot] if self.emulator else []), f"{remote}/{native.BINARY}"]

    def run(self, command: list[str], artifact: Path, results: Path, options: list[str], timeout: float,
            watch=None) -> None:
        self.remote_results = remote = f"{artifact}.results.jsonl"
        self._ssh(["rm", "-f", remote], 60)
        done = self._ssh(["timeout", str(int(timeout)), *command, str(artifact), "--out", remote, *options],
                         timeout + 30, what="profiling")
        if done.returncode == 124:
            raise EdgeError(f"profiling on {self.spec} did not finish in {timeout:.0f} s; lower --runs or raise "
                            "--timeout (the results so far are kept)")
        if done.returncode in (126, 127):  # (timeout's codes: the program is missing or cannot be executed)
            raise EdgeError(f"{self.spec}: {command[0]} cannot be run on the board; install edge there and pass "
                            "?python=, or profile with the native runner (--runner native)")
        if done.returncode != 0:
            last = [line for line in done.stderr.decode(errors="replace").splitlines() if line.strip()][-1:] or ["no message"]
            raise EdgeError(f"the measuring process on {self.spec} failed (exit {done.returncode}: {last[0][:300]})")

    def pull(self, results: Path, local: Path) -> Path:
        done = self._ssh(["cat", self.remote_results], 120, what="fetching the results")
        if done.returncode != 0:
            raise EdgeError(f"{self.spec}: no results on the board ({done.stderr.decode(errors='replace').strip()[-200:]})")
        local.write_bytes(done.stdout)
        return local


TARGETS.register("ssh")(Ssh)
