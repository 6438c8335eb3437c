"""Celery: the Redis broker restarted under a worker, with real celery workers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from celery import Celery
from celery.result import AsyncResult

from tests.support.celery_harness import CeleryHarness
from tests.support.waiting import wait_until
from zombieguard.demo.embedded import EmbeddedRedis

pytestmark = pytest.mark.slow


def test_a_task_received_and_not_started_as_the_broker_restarts_runs_after_it_not_an_hour_later(
    tmp_path: Path, key_prefix: str
) -> None:
    # A prefork worker with one process runs a task and holds a second one it received. Redis goes
    # away: the worker's connection breaks and kombu, putting back what the channel held, finds
    # Redis gone; Celery forgets the task it had not started. Alone, its message waits in kombu's
    # unacked hash for the visibility timeout (an hour). The worker hands it back once it is
    # connected again, and the running task is not run twice.
    server = EmbeddedRedis(persistent=True).start()
    harness = CeleryHarness(server.url, key_prefix, tmp_path)
    # Sent by an app without a result backend: Celery < 5.7's client, subscribed to a result across
    # the restart, raises from AsyncResult.__del__ (the worker is what is tested here).
    publisher = Celery("zgtests-publisher", broker=server.url)
    publisher.conf.broker_transport_options = harness.app.conf.broker_transport_options

    def send(task: str, *args: object) -> AsyncResult:
        return publisher.send_task(f"tests.support.celery_app.{task}", args=args, queue=harness.queue)

    try:
        harness.start_worker("prefork", concurrency=1, env={"ZG_CELERY_PREFETCH": "2"})
        running = send("long_task", harness.notes, 4.0)
        wait_until(lambda: harness.notes_of("started"), 10, what="the first task started")
        waiting = send("add", 1, 2)
        wait_until(lambda: f"[{waiting.id}] received" in harness.log(), 10, what="the second received")
        server.stop()
        time.sleep(1.0)
        server.start()
        assert harness.wait_state(waiting, {"SUCCESS"}, 20) == "SUCCESS", harness.log()[-3000:]
        assert harness.wait_state(running, {"SUCCESS"}, 20) == "SUCCESS"
        assert len(harness.notes_of("started")) == 1  # the running task ran once
        assert "kombu did not put back: handing them back" in harness.log()
    finally:
        publisher.close()
        harness.close()
        server.close()
