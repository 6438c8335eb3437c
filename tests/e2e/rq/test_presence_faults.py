"""RQ: what closes a live worker's connections (a Redis restart, ``CLIENT KILL``) never has its job
started a second time, however often it happens; presence resumes after each."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.rq_harness import RQHarness, wait_until
from zombieguard.demo.embedded import EmbeddedRedis

pytestmark = pytest.mark.slow

LONG_LEASE = {"ZOMBIEGUARD_LEASE_TTL": "30", "ZOMBIEGUARD_HEARTBEAT_INTERVAL": "10"}
TIMES = 20
CLASSES = ["GuardedWorker", "GuardedSimpleWorker"]


@pytest.fixture
def persistent_harness(key_prefix: str, tmp_path: Path) -> Iterator[tuple[RQHarness, EmbeddedRedis]]:
    """RQ workers on a Redis of the test's own, append-only, which the test restarts."""
    server = EmbeddedRedis(persistent=True).start()
    harness = RQHarness(server.url, key_prefix, tmp_path)
    try:
        yield harness, server
    finally:
        with contextlib.suppress(redis.RedisError):  # Redis may be stopped: the workers go first
            harness.close()
        server.close()


def _running(harness: RQHarness, cls: str) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """Two workers, one running a long job; both watched."""
    busy = harness.start_worker(cls, env=LONG_LEASE)
    harness.enqueue("long_job", harness.notes, 600.0)
    wait_until(lambda: harness.notes_of("started"), 15, what="the job started")
    idle = harness.start_worker(cls, env=LONG_LEASE)
    for worker in (busy, idle):
        harness.wait_present(worker, "rq")
    # Past its start-up maintenance, waiting for a job: RQ (2.x) lets a connection error there end
    # the worker, which is not what this test is about.
    key = f"rq:worker:{harness.worker_names[1]}"
    wait_until(lambda: harness.client.hget(key, "state") == b"idle", 15, what="the idle worker waiting")
    return busy, idle


@pytest.mark.parametrize("cls", CLASSES)
def test_a_live_workers_job_is_not_started_again_across_20_restarts_of_redis(
    persistent_harness: tuple[RQHarness, EmbeddedRedis], cls: str
) -> None:
    harness, server = persistent_harness
    _running(harness, cls)
    harness.restart_redis(server, "rq", TIMES)
    harness.assert_ran_once()


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("kind", ["pubsub", "normal"])
def test_a_live_workers_job_is_not_started_again_when_its_connections_are_killed_20_times(
    persistent_harness: tuple[RQHarness, EmbeddedRedis], kind: str, cls: str
) -> None:
    harness, _ = persistent_harness
    _running(harness, cls)
    harness.kill_connections(kind, "rq", TIMES)
    harness.assert_ran_once()
