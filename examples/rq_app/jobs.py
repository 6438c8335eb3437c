"""The example's jobs: a healthy one, and one that hangs like the incident that started it all."""

from __future__ import annotations

import socket
import time

import zombieguard


def resize(images: int) -> int:
    """A healthy job that reports its progress."""
    for done in range(images):
        zombieguard.beat(progress=f"{done + 1}/{images}")
        time.sleep(0.05)
    return images


@zombieguard.guard(hard_timeout=2)
def fetch_report(port: int) -> bytes:
    """Waits for a server that accepted the connection and never answers: no socket timeout fires."""
    conn = socket.create_connection(("127.0.0.1", port))
    return conn.recv(1)
