"""Real ``celery worker`` processes for end-to-end tests, on the Redis or the RabbitMQ broker."""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult
from kombu import Connection

from tests.support.harness import REPO, WorkerHarness
from tests.support.waiting import wait_until

CELERY_BIN = str(Path(sys.executable).with_name("celery"))
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


def rabbitmq_answers() -> bool:
    """Whether a RabbitMQ broker answers on loopback."""
    try:
        with Connection(RABBITMQ_URL, connect_timeout=1) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:
        return False


class CeleryHarness(WorkerHarness):
    """Workers on a queue and key prefixes of the test's own; :meth:`close` cleans everything up."""

    def __init__(self, redis_url: str, key_prefix: str, workdir: Path, broker: str = "redis") -> None:
        super().__init__(redis_url, key_prefix, workdir)
        self.celery_prefix = f"{key_prefix}-celery"
        self.queue = f"zgq-{uuid.uuid4().hex[:10]}"
        self.broker = broker
        self.env: dict[str, str] = {
            "PYTHONPATH": str(REPO),
            "ZG_CELERY_BROKER": RABBITMQ_URL if broker == "rabbitmq" else redis_url,
            "ZG_CELERY_BACKEND": redis_url,
            "ZG_CELERY_PREFIX": self.celery_prefix,
            "ZG_CELERY_QUEUE": self.queue,
            "ZG_EVENTS_DIR": self.notes,
            "ZOMBIEGUARD_REDIS_URL": redis_url,
            "ZOMBIEGUARD_KEY_PREFIX": key_prefix,
            "ZOMBIEGUARD_LEASE_TTL": "2",
            "ZOMBIEGUARD_HEARTBEAT_INTERVAL": "0.4",
            "ZOMBIEGUARD_SWEEP_INTERVAL": "0.2",
            "ZOMBIEGUARD_OVERDUE_GRACE": "1",
        }
        # Celery < 5.7's Redis result backend can deadlock the client when the cyclic collector
        # finalises an AsyncResult while a publish holds the result consumer's pub/sub lock
        # (celery#10477): no cyclic collection while the test's client app is in use.
        self._collecting = gc.isenabled()
        gc.disable()
        # The test's own client app: sends tasks by name and reads their results.
        self.app = Celery("zgtests-client")
        self.app.conf.update(
            broker_url=self.env["ZG_CELERY_BROKER"],
            result_backend=redis_url,
            broker_transport_options={"global_keyprefix": f"{self.celery_prefix}:"},
            result_backend_transport_options={"global_keyprefix": f"{self.celery_prefix}:"},
            task_default_queue=self.queue,
            result_extended=True,
        )

    def start_worker(
        self, pool: str = "prefork", concurrency: int = 2, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``celery worker`` on the test's queue; wait until it is ready."""
        name = f"zgw-{uuid.uuid4().hex[:8]}@test"
        log = self.workdir / f"{name}.log"
        process = subprocess.Popen(
            [
                CELERY_BIN,
                "-A",
                "tests.support.celery_app",
                "worker",
                "-P",
                pool,
                "-c",
                str(concurrency),
                "-Q",
                self.queue,
                "-n",
                name,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "info",
            ],
            env={**os.environ, **self.env, **(env or {})},
            cwd=REPO,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the test can freeze or kill it whole
        )
        self.workers.append(process)
        self.worker_names.append(name)
        wait_until(
            lambda: " ready." in log.read_text(errors="replace") or process.poll() is not None,
            30,
            what=f"worker {name} ready",
        )
        if process.poll() is not None:
            pytest.fail(f"worker {name} exited at start:\n{log.read_text(errors='replace')}")
        return process

    def send(self, task: str, *args: Any, **options: Any) -> AsyncResult:
        """Send ``tests.support.celery_app.<task>`` with ``args``."""
        return self.app.send_task(f"tests.support.celery_app.{task}", args=args, queue=self.queue, **options)

    def state(self, result: AsyncResult) -> str:
        """The task's state in the result backend."""
        return str(self.app.AsyncResult(result.id).state)

    def wait_state(self, result: AsyncResult, states: set[str], timeout: float) -> str:
        """Wait for the task to reach one of ``states``."""
        return self.wait_for_state(result.id, lambda: self.state(result), states, timeout)

    def close(self) -> None:
        """Kill every worker (whole process groups) and delete what the test wrote."""
        self.kill_workers()
        self.delete_keys(f"{self.celery_prefix}*")
        if self.broker == "rabbitmq":
            with contextlib.suppress(Exception), self.app.connection_for_write() as conn:
                conn.default_channel.queue_delete(self.queue)
        self.app.close()
        self.client.close()
        if self._collecting:
            gc.enable()
