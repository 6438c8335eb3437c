"""RQ classes that end-to-end tests start workers with (``rq worker --job-class``) to inject a fault
of their own."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import redis
from rq.job import Job


class PreparationFails(Job):
    """A job whose preparation by RQ (in the process that runs it) finds Redis away the first
    ``ZG_PREPARE_FAILS`` times it is tried, whatever process tries: a connection killed mid-command,
    a restart, a partition."""

    def prepare_for_execution(self, worker_name: str, pipeline: Any) -> None:
        """RQ's, after the fault."""
        tries = Path(tempfile.gettempdir()) / f"zg-prepare-fails-{self.id}"
        with tries.open("a") as f:
            f.write(".")
        if len(tries.read_text()) <= int(os.environ["ZG_PREPARE_FAILS"]):
            raise redis.ConnectionError("Connection closed by server (injected)")
        super().prepare_for_execution(worker_name, pipeline)


class EndFails(Job):
    """A job whose end RQ records (its heartbeat once the body returned) while Redis is away, the
    first ``ZG_END_FAILS`` times."""

    def heartbeat(self, timestamp: Any, ttl: int, *args: Any, **kwargs: Any) -> None:
        """RQ's, after the fault (only once the body ended: RQ then set ``ended_at``)."""
        if self.ended_at is not None:
            tries = Path(tempfile.gettempdir()) / f"zg-end-fails-{self.id}"
            with tries.open("a") as f:
                f.write(".")
            if len(tries.read_text()) <= int(os.environ["ZG_END_FAILS"]):
                raise redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory (injected)")
        super().heartbeat(timestamp, ttl, *args, **kwargs)
