"""Real ``rq worker`` processes for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis
from rq import Queue
from rq.job import Job

from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
RQ_BIN = str(Path(sys.executable).with_name("rq"))


class RQHarness:
    """Workers, a queue and the test's own key prefix; everything is cleaned up by :meth:`close`."""

    def __init__(
        self, redis_url: str, key_prefix: str, workdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.redis_url = redis_url
        self.client = redis.Redis.from_url(redis_url)
        self.queue_name = f"zgq-{uuid.uuid4().hex[:10]}"
        self.queue = Queue(self.queue_name, connection=self.client)
        self.key_prefix = key_prefix
        self.workdir = workdir
        self.notes = str(workdir / "notes")
        Path(self.notes).mkdir(exist_ok=True)
        self.env: dict[str, str | None] = {
            "PYTHONPATH": str(REPO),
            "ZOMBIEGUARD_KEY_PREFIX": key_prefix,
            "ZOMBIEGUARD_LEASE_TTL": "2",
            "ZOMBIEGUARD_HEARTBEAT_INTERVAL": "0.4",
            "ZOMBIEGUARD_SWEEP_INTERVAL": "0.2",
            "ZOMBIEGUARD_OVERDUE_GRACE": "1",
            **(env or {}),
        }
        self.workers: list[subprocess.Popen[bytes]] = []
        self.worker_names: list[str] = []
        self.jobs: list[Job] = []

    def start_worker(
        self, cls: str = "GuardedWorker", env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``rq worker -w <cls>`` on the test's queue; wait until it has registered."""
        name = f"zgw-{uuid.uuid4().hex[:8]}"
        worker_class = cls if "." in cls else f"zombieguard.integrations.rq.{cls}"
        log = (self.workdir / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [RQ_BIN, "worker", "-w", worker_class, "--url", self.redis_url, "--name", name, self.queue_name],
            env={k: v for k, v in {**os.environ, **self.env, **(env or {})}.items() if v is not None},
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
        """Enqueue ``tests.rq_jobs.<func>``."""
        job = self.queue.enqueue(f"tests.rq_jobs.{func}", *args, **kwargs)
        self.jobs.append(job)
        return job

    def status(self, job: Job) -> str:
        """The job's current status."""
        status = job.get_status(refresh=True)
        return str(getattr(status, "value", status))

    def wait_status(self, job: Job, statuses: Iterable[str], timeout: float) -> str:
        """Wait for the job to reach one of ``statuses``; return it."""
        wanted = {str(s) for s in statuses}
        return str(
            wait_until(lambda: (s := self.status(job)) in wanted and s, timeout, what=f"{job.id} in {wanted}")
        )

    def notes_of(self, name: str) -> list[str]:
        """Lines a job wrote to one of its notes files."""
        path = Path(self.notes) / name
        return path.read_text().splitlines() if path.exists() else []

    def children(self, index: int = 0) -> list[int]:
        """Child processes of a worker (a GuardedWorker's horse; a GuardedSimpleWorker's sidecar)."""
        return _children(self.workers[index].pid)

    def log(self, index: int = 0) -> str:
        """A worker's output so far."""
        return (self.workdir / f"{self.worker_names[index]}.log").read_text(errors="replace")

    def close(self) -> None:
        """Stop every worker (whole process groups) and delete what the test wrote."""
        for process in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGCONT)
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        markers = [self.queue_name, *self.worker_names, *(job.id for job in self.jobs)]
        keys = [
            k
            for k in self.client.scan_iter(match="rq:*", count=1000)
            if any(m.encode() in k for m in markers)
        ]
        keys += list(self.client.scan_iter(match="{" + self.key_prefix + "}*", count=1000))
        for start in range(0, len(keys), 500):
            self.client.delete(*keys[start : start + 500])
        self.client.srem("rq:queues", f"rq:queue:{self.queue_name}")
        for name in self.worker_names:
            self.client.srem("rq:workers", f"rq:worker:{name}")
        self.client.close()


def _children(pid: int) -> list[int]:
    """Child pids of ``pid`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out
