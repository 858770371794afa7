"""Where an artifact is profiled. A target does four things: describe the device, push the files,
run the measuring side there (profiler.measure, or the native runner on a board), pull the results.
Every remote step has a timeout; a failure is one EdgeError that says what to check.

Registered: "local" (this machine, the Python runtimes, in a subprocess) and "ssh" (a Linux board
with edge installed). Phones over adb, CUDA and the native runner are issue 5's next steps: an
unknown target name lists the registered ones."""
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
        shutil.copyfile(results, local)
        return local


TARGETS.register("local")(Local)


def target_for(spec: str):
    """"local" -> Local(); other schemes ("ssh://...", "adb:...", "cuda") by their registered name."""
    scheme = spec.split("://", 1)[0].split(":", 1)[0]
    return TARGETS.get(scheme)(spec)


class Ssh:
    """A Linux board over SSH: ssh://user@host[:port][?key=PATH&python=PYTHON&dir=REMOTE_DIR&known_hosts=PATH].
    The system's OpenSSH client, key auth only (BatchMode: never a password prompt), every call with
    a timeout. The artifact goes over as a tar stream (`tar -x` on the board), the measuring side runs
    as `PYTHON -m profiler.measure` there (edge and the runtime installed on the board; the native
    runner will take its place), the results come back with `cat`."""

    def __init__(self, spec: str):
        from urllib.parse import parse_qs, urlsplit

        self.spec = spec
        u = urlsplit(spec)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        unknown = sorted(set(q) - {"key", "python", "dir", "known_hosts"})
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

    def describe(self) -> dict:
        code = "import json; from profiler.measure import machine; print(json.dumps(machine()))"
        done = self._ssh([self.python, "-c", code], 60, what="describing the board")
        if done.returncode != 0:
            raise EdgeError(f"{self.spec}: {self.python} on the board cannot run edge's profiler "
                            f"({done.stderr.decode(errors='replace').strip()[-200:]}); install edge there or pass ?python=")
        import json

        return {"target": self.spec, **json.loads(done.stdout)}

    def push(self, artifact: Path, work: Path) -> Path:
        import io
        import tarfile

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(str(artifact), arcname=artifact.name)
        remote = f"{self.dir}/{artifact.name}"
        done = self._ssh(["sh", "-c", 'rm -rf "$1" && mkdir -p "$2" && tar -xf - -C "$2"', "push", remote, self.dir],
                         600, stdin=buf.getvalue(), what="copying the artifact")
        if done.returncode != 0:
            raise EdgeError(f"{self.spec}: copying the artifact failed ({done.stderr.decode(errors='replace').strip()[-200:]})")
        return Path(remote)

    def run(self, artifact: Path, results: Path, options: list[str], timeout: float, watch=None) -> None:
        self.remote_results = remote = f"{artifact}.results.jsonl"
        self._ssh(["rm", "-f", remote], 60)
        done = self._ssh(["timeout", str(int(timeout)), self.python, "-m", "profiler.measure", str(artifact),
                          "--out", remote, *options], timeout + 30, what="profiling")
        if done.returncode == 124:
            raise EdgeError(f"profiling on {self.spec} did not finish in {timeout:.0f} s; lower --runs or raise "
                            "--timeout (the results so far are kept)")
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
