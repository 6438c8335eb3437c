"""The example's Celery app: one line, ``install(app)``, guards every task."""

from __future__ import annotations

import os
import socket
import time

from celery import Celery

import zombieguard
from zombieguard.integrations.celery import install

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("tasks", broker=REDIS_URL, backend=REDIS_URL)
app.conf.task_default_queue = "zombieguard-example"
install(app)


@app.task
def resize(images: int) -> int:
    """A healthy task that reports its progress."""
    for done in range(images):
        zombieguard.beat(progress=f"{done + 1}/{images}")
        time.sleep(0.05)
    return images


@app.task(time_limit=2)
def fetch_report(port: int) -> bytes:
    """Waits for a server that accepted the connection and never answers. Celery's own ``time_limit``
    does nothing on the threads pool; with zombieguard installed it is enforced there too."""
    conn = socket.create_connection(("127.0.0.1", port))
    return conn.recv(1)
