"""Real ``rq worker`` processes for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rq import Queue
from rq.job import Job

from tests.support.harness import REPO, WorkerHarness
from tests.support.waiting import wait_until

RQ_BIN = str(Path(sys.executable).with_name("rq"))

__all__ = ["RQ_BIN", "RQHarness", "exc_string", "wait_until"]


def exc_string(job: Job) -> str:
    """The exception RQ recorded for the job's latest result; fails the test when there is none."""
    result = job.latest_result()
    assert result is not None, f"rq job {job.id} has no result"
    assert result.exc_string is not None, f"rq job {job.id} recorded no failure"
    return result.exc_string


class RQHarness(WorkerHarness):
    """Workers, a queue and the test's own key prefix; everything is cleaned up by :meth:`close`."""

    def __init__(
        self, redis_url: str, key_prefix: str, workdir: Path, env: dict[str, str | None] | None = None
    ) -> None:
        super().__init__(redis_url, key_prefix, workdir)
        self.queue_name = f"zgq-{uuid.uuid4().hex[:10]}"
        self.queue = Queue(self.queue_name, connection=self.client)
        self.env: dict[str, str | None] = {
            "PYTHONPATH": str(REPO),
            "ZOMBIEGUARD_KEY_PREFIX": key_prefix,
            "ZOMBIEGUARD_LEASE_TTL": "2",
            "ZOMBIEGUARD_HEARTBEAT_INTERVAL": "0.4",
            "ZOMBIEGUARD_SWEEP_INTERVAL": "0.2",
            "ZOMBIEGUARD_OVERDUE_GRACE": "1",
            **(env or {}),
        }
        self.jobs: list[Job] = []

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a process the test starts: this one's, the test's settings, ``extra``
        (a setting None is left unset)."""
        return {k: v for k, v in {**os.environ, **self.env, **(extra or {})}.items() if v is not None}

    def start_worker(
        self,
        cls: str = "GuardedWorker",
        env: dict[str, str] | None = None,
        options: Sequence[str] = (),
        connection: Sequence[str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``rq worker -w <cls> <options>`` on the test's queue; wait until it has registered.
        ``connection``: how it finds its Redis (default ``--url`` and the test's)."""
        name = f"zgw-{uuid.uuid4().hex[:8]}"
        worker_class = cls if "." in cls else f"zombieguard.integrations.rq.{cls}"
        log = (self.workdir / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [
                RQ_BIN,
                "worker",
                "-w",
                worker_class,
                *options,
                *(("--url", self.redis_url) if connection is None else connection),
                "--name",
                name,
                self.queue_name,
            ],
            env=self.environ(env),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the test can freeze or kill it whole
        )
        self.workers.append(process)
        self.worker_names.append(name)
        wait_until(lambda: self.client.exists(f"rq:worker:{name}"), 20, what=f"worker {name} registered")
        return process

    def enqueue(self, func: str, *args: Any, **kwargs: Any) -> Job:
        """Enqueue ``tests.support.rq_jobs.<func>``."""
        job = self.queue.enqueue(f"tests.support.rq_jobs.{func}", *args, **kwargs)
        self.jobs.append(job)
        return job

    def status(self, job: Job) -> str:
        """The job's current status."""
        status = job.get_status(refresh=True)
        return str(getattr(status, "value", status))

    def wait_status(self, job: Job, statuses: Iterable[str], timeout: float) -> str:
        """Wait for the job to reach one of ``statuses``; return it."""
        return self.wait_for_state(job.id, lambda: self.status(job), statuses, timeout)

    def close(self) -> None:
        """Stop every worker (whole process groups) and delete what the test wrote."""
        self.kill_workers()
        self.delete_written()
        self.client.close()

    def delete_written(self) -> None:
        """Delete what the test wrote: RQ's keys of its queue, workers and jobs, and its own keys."""
        markers = [self.queue_name, *self.worker_names, *(job.id for job in self.jobs)]
        keys = [
            k
            for k in self.client.scan_iter(match="rq:*", count=1000)
            if any(m.encode() in k for m in markers)
        ]
        for start in range(0, len(keys), 500):
            self.client.delete(*keys[start : start + 500])
        self.delete_keys()
        self.client.srem("rq:queues", f"rq:queue:{self.queue_name}")
        for name in self.worker_names:
            self.client.srem("rq:workers", f"rq:worker:{name}")
