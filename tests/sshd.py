"""A real SSH server for tests: asyncssh on 127.0.0.1 with public-key auth only, running each
command through the shell (as sshd would), with its stdin, stdout and stderr. Started in a thread of
its own; the ssh target under test talks to it with the system's OpenSSH client."""
from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SshServer:
    def __init__(self, directory: Path):
        import asyncssh

        self.dir = directory
        self.port = free_port()
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.key = directory / "id_ed25519"
        client_key.write_private_key(str(self.key))
        self.key.chmod(0o600)
        (directory / "authorized_keys").write_bytes(client_key.export_public_key())
        self._host_key, self._loop = host_key, asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()
        if not self._ready.wait(30):
            raise RuntimeError("the test SSH server did not start")

    async def _run(self, process):
        proc = await asyncio.create_subprocess_shell(process.command or "true", stdin=asyncio.subprocess.PIPE,
                                                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate(await process.stdin.read())  # (stdin to EOF, e.g. a tar stream)
        process.stdout.write(out)
        process.stderr.write(err)
        process.exit(proc.returncode)

    def _serve(self):
        import asyncssh

        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncssh.listen(
            "127.0.0.1", self.port, server_host_keys=[self._host_key],
            authorized_client_keys=str(self.dir / "authorized_keys"), process_factory=self._run,
            encoding=None))
        self._ready.set()
        self._loop.run_forever()

    def stop(self):
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
