"""Celery: what closes a live worker's connections to the Redis holding the leases (its restart,
``CLIENT KILL``) never has its task started a second time, however often it happens. The broker is
RabbitMQ, so that only the leases' Redis goes away."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.celery_harness import RABBITMQ_URL, CeleryHarness, rabbitmq_answers
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


def test_a_live_workers_task_is_not_started_again_across_20_restarts_of_the_leases_redis(
    own_redis_harness: tuple[CeleryHarness, EmbeddedRedis],
) -> None:
    harness, server = own_redis_harness
    _running(harness)
    harness.restart_redis(server, "celery", TIMES)
    harness.assert_ran_once()


@pytest.mark.parametrize("kind", ["pubsub", "normal"])
def test_a_live_workers_task_is_not_started_again_when_its_connections_are_killed_20_times(
    own_redis_harness: tuple[CeleryHarness, EmbeddedRedis], kind: str
) -> None:
    harness, _ = own_redis_harness
    _running(harness)
    harness.kill_connections(kind, "celery", TIMES)
    harness.assert_ran_once()
