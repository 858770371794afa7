"""A real SSH server for tests: OpenSSH's sshd (Debian's openssh-server, which setup.sh installs as
root) on 127.0.0.1, public-key auth only, with its own host key, authorized key and config in a test
directory. The ssh target under test talks to it with the system's OpenSSH client."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=60)
    return path


def available() -> bool:
    return Path(SSHD).is_file() and shutil.which("ssh-keygen") is not None


class SshServer:
    def __init__(self, directory: Path):
        self.dir, self.port = directory, free_port()
        self.key = keygen(directory / "id_ed25519")
        (directory / "authorized_keys").write_text((directory / "id_ed25519.pub").read_text())
        config = directory / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {keygen(directory / 'host_ed25519')}",
            f"AuthorizedKeysFile {directory / 'authorized_keys'}", "PubkeyAuthentication yes",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            "PermitRootLogin prohibit-password", f"PidFile {directory / 'sshd.pid'}", "Subsystem sftp internal-sftp", ""]))
        Path("/run/sshd").mkdir(exist_ok=True)  # (privilege separation's empty directory)
        self.log = open(directory / "sshd.log", "w")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(100):  # until it listens
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the test sshd did not start: {(directory / 'sshd.log').read_text()[-500:]}")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()
