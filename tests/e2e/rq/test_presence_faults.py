"""RQ: what closes a live worker's connections (a Redis restart, ``CLIENT KILL``) never has its job
started a second time, however often it happens; presence resumes after each."""

from __future__ import annotations

import contextlib
import subprocess
import time
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


def _both_present_again(harness: RQHarness, workers: tuple[subprocess.Popen[bytes], ...]) -> None:
    for worker in workers:
        harness.wait_present(worker, "rq")


@pytest.mark.parametrize("cls", CLASSES)
def test_a_live_workers_job_is_not_started_again_across_20_restarts_of_redis(
    persistent_harness: tuple[RQHarness, EmbeddedRedis], cls: str
) -> None:
    harness, server = persistent_harness
    workers = _running(harness, cls)
    presence = "{" + harness.key_prefix + "}:presence:rq"
    for _ in range(TIMES):
        server.stop()
        server.start()
        # Each worker's presence thread subscribes again and announces itself anew (SADD).
        harness.client.srem(presence, *harness.worker_names)
        _both_present_again(harness, workers)
    # Past the restart grace (5 s), the watch decides again: nobody is absent.
    wait_until(lambda: harness.client.info("server")["uptime_in_seconds"] >= 7, 15, what="restart grace over")
    assert len(harness.notes_of("started")) == 1
    assert all(worker.poll() is None for worker in workers)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("kind", ["pubsub", "normal"])
def test_a_live_workers_job_is_not_started_again_when_its_connections_are_killed_20_times(
    persistent_harness: tuple[RQHarness, EmbeddedRedis], kind: str, cls: str
) -> None:
    harness, _ = persistent_harness
    workers = _running(harness, cls)
    presence = "{" + harness.key_prefix + "}:presence:rq"
    admin = redis.Redis.from_url(harness.redis_url)
    for _ in range(TIMES):
        if kind == "pubsub":  # the presence connections: each subscribes and announces itself again
            admin.srem(presence, *harness.worker_names)
        assert admin.client_kill_filter(_type=kind, skipme=True) >= 1
        if kind == "pubsub":
            _both_present_again(harness, workers)
        else:
            time.sleep(0.3)
    # Longer than presence_grace and several looks: a worker taken for dead would have had its job
    # started by the other by now.
    time.sleep(2)
    logs = "\n".join(harness.log(i)[-3000:] for i in range(len(workers)))
    assert all(worker.poll() is None for worker in workers), logs
    assert len(harness.notes_of("started")) == 1, logs
    assert admin.scard(presence) == 2, logs
