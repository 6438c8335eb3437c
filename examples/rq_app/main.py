"""Enqueue a healthy job and a hanging one; show what became of each. Exit 1 if the zombie was not caught."""

from __future__ import annotations

import os
import socket
import sys
import time

from redis import Redis
from rq import Queue
from rq.job import Job

QUEUE = "zombieguard-example"


def _status(job: Job) -> str:
    status = job.get_status()
    return str(getattr(status, "value", status))


def main() -> int:
    """Run the scenario against the worker listening on ``QUEUE``."""
    connection = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    queue = Queue(QUEUE, connection=connection)
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    healthy = queue.enqueue("jobs.resize", 5)
    zombie = queue.enqueue("jobs.fetch_report", silent.getsockname()[1])  # RQ's own limit: 180 s
    started = time.monotonic()
    while time.monotonic() - started < 30 and not (healthy.is_finished and zombie.is_failed):
        time.sleep(0.2)
        healthy.refresh()
        zombie.refresh()
    print(f"healthy job: {_status(healthy)}, result {healthy.return_value()}")
    result = zombie.latest_result()
    reason = (result.exc_string or "").strip().splitlines()[-1] if result else "-"
    print(f"hung job:    {_status(zombie)} after {time.monotonic() - started:.1f} s: {reason}")
    silent.close()
    return 0 if healthy.is_finished and zombie.is_failed else 1


if __name__ == "__main__":
    sys.exit(main())
