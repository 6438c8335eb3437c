"""Fixtures for end-to-end tests with real worker processes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.rq_harness import RQHarness


@pytest.fixture
def rq_harness(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[RQHarness]:
    """Real rq workers on a queue of the test's own."""
    harness = RQHarness(redis_url, key_prefix, tmp_path)
    yield harness
    harness.close()


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A TCP server on loopback that accepts connections and never sends a byte; yields its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in accepted:
        conn.close()
    server.close()
