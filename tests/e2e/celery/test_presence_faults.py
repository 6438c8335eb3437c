"""Celery: what closes a live worker's connections to the Redis holding the leases (its restart,
``CLIENT KILL``) never has its task started a second time, however often it happens. The broker is
RabbitMQ, so that only the leases' Redis goes away."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.celery_harness import RABBITMQ_URL, CeleryHarness, rabbitmq_answers
from tests.support.waiting import wait_until
from zombieguard.demo.embedded import EmbeddedRedis

pytestmark = pytest.mark.slow

LONG_LEASE = {"ZOMBIEGUARD_LEASE_TTL": "30", "ZOMBIEGUARD_HEARTBEAT_INTERVAL": "10"}
TIMES = 20


@pytest.fixture
def own_redis_harness(key_prefix: str, tmp_path: Path) -> Iterator[tuple[CeleryHarness, EmbeddedRedis]]:
    """Celery workers on RabbitMQ, their leases and results in a Redis of the test's own (append-only),
    which the test restarts."""
    if not rabbitmq_answers():
        pytest.skip(f"no RabbitMQ answers at {RABBITMQ_URL}")
    server = EmbeddedRedis(persistent=True).start()
    harness = CeleryHarness(server.url, key_prefix, tmp_path, broker="rabbitmq")
    try:
        yield harness, server
    finally:
        with contextlib.suppress(redis.RedisError):  # Redis may be stopped: the workers go first
            harness.close()
        server.close()


def _running(harness: CeleryHarness) -> tuple[subprocess.Popen[bytes], ...]:
    """Two workers, one running a long task; both watched."""
    busy = harness.start_worker("prefork", env=LONG_LEASE)
    result = harness.send("long_task", harness.notes, 600.0)
    harness.wait_leased(result.id)
    idle = harness.start_worker("prefork", env=LONG_LEASE)
    for worker in (busy, idle):
        harness.wait_present(worker, "celery")
    return busy, idle


def _present_again(harness: CeleryHarness, workers: tuple[subprocess.Popen[bytes], ...]) -> None:
    for worker in workers:
        harness.wait_present(worker, "celery")


def _ran_once(harness: CeleryHarness, workers: tuple[subprocess.Popen[bytes], ...]) -> None:
    logs = "\n".join(harness.log(i)[-3000:] for i in range(len(workers)))
    assert all(worker.poll() is None for worker in workers), logs
    assert len(harness.notes_of("started")) == 1, logs


def test_a_live_workers_task_is_not_started_again_across_20_restarts_of_the_leases_redis(
    own_redis_harness: tuple[CeleryHarness, EmbeddedRedis],
) -> None:
    harness, server = own_redis_harness
    workers = _running(harness)
    presence = "{" + harness.key_prefix + "}:presence:celery"
    for _ in range(TIMES):
        server.stop()
        server.start()
        harness.client.srem(presence, *harness.worker_names)
        _present_again(harness, workers)
    # Past the restart grace (5 s), the watch decides again: nobody is absent.
    wait_until(lambda: harness.client.info("server")["uptime_in_seconds"] >= 7, 15, what="restart grace over")
    _ran_once(harness, workers)


@pytest.mark.parametrize("kind", ["pubsub", "normal"])
def test_a_live_workers_task_is_not_started_again_when_its_connections_are_killed_20_times(
    own_redis_harness: tuple[CeleryHarness, EmbeddedRedis], kind: str
) -> None:
    harness, _ = own_redis_harness
    workers = _running(harness)
    presence = "{" + harness.key_prefix + "}:presence:celery"
    admin = redis.Redis.from_url(harness.redis_url)
    for _ in range(TIMES):
        if kind == "pubsub":  # the presence connections: each subscribes and announces itself again
            admin.srem(presence, *harness.worker_names)
        assert admin.client_kill_filter(_type=kind, skipme=True) >= 1
        if kind == "pubsub":
            _present_again(harness, workers)
        else:
            time.sleep(0.3)
    # Longer than presence_grace and several looks: a worker taken for dead would have had its task
    # started by the other by now.
    time.sleep(2)
    _ran_once(harness, workers)
    assert admin.scard(presence) == 2
