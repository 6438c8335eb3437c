"""RQ: Redis away or disconnected at the moments a job starts, with real rq workers."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.rq_harness import RQHarness, wait_until
from zombieguard.embedded import EmbeddedRedis, free_port
from zombieguard.watchdog import process_exited

pytestmark = pytest.mark.slow

CLASSES = ["GuardedWorker", "GuardedSimpleWorker"]


@pytest.fixture
def private_harness(private_redis: EmbeddedRedis, key_prefix: str, tmp_path: Path) -> Iterator[RQHarness]:
    """Workers on a Redis of the test's own (the test disconnects every client of it)."""
    harness = RQHarness(private_redis.url, key_prefix, tmp_path)
    yield harness
    harness.close()


@pytest.mark.parametrize(
    "cls", ["tests.rq_workers.ClientKilledInPreparation", "tests.rq_workers.SimpleClientKilledInPreparation"]
)
def test_every_client_disconnected_while_rq_prepares_a_job_does_not_fail_it(
    private_harness: RQHarness, cls: str
) -> None:
    private_harness.start_worker(cls)
    job = private_harness.enqueue("long_job", private_harness.notes, 0.5)
    private_harness.wait_status(job, ["finished"], 20)
    assert job.return_value() == "done"
    assert len(private_harness.notes_of("started")) == 1
    assert job.id not in private_harness.queue.failed_job_registry.get_job_ids()


@pytest.fixture
def leases_unreachable() -> str:
    """The URL of a lease Redis that is down for the whole test (a port nothing listens on)."""
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.mark.parametrize("cls", CLASSES)
def test_a_job_started_while_the_lease_redis_is_unreachable_is_still_stopped_at_its_hard_limit(
    rq_harness: RQHarness, leases_unreachable: str, black_hole: int, cls: str
) -> None:
    rq_harness.start_worker(
        cls, env={"ZOMBIEGUARD_REDIS_URL": leases_unreachable, "ZOMBIEGUARD_HARD_TIMEOUT": "2"}
    )
    job = rq_harness.enqueue("hang_on_socket", rq_harness.notes, black_hole, job_timeout=60)
    started = float(wait_until(lambda: rq_harness.notes_of("started"), 10, what="started")[0].split()[0])
    rq_harness.wait_status(job, ["failed"], 10)
    assert time.time() - started < 3.5
    assert "HardTimeLimitExceeded" in job.latest_result().exc_string
    assert "runs without a lease" in rq_harness.log()


@pytest.mark.parametrize("cls", CLASSES)
def test_without_the_lease_redis_a_beating_job_is_not_taken_for_hung(
    rq_harness: RQHarness, leases_unreachable: str, cls: str
) -> None:
    rq_harness.start_worker(
        cls, env={"ZOMBIEGUARD_REDIS_URL": leases_unreachable, "ZOMBIEGUARD_PROGRESS_TIMEOUT": "1"}
    )
    job = rq_harness.enqueue("long_job", rq_harness.notes, 2.5)
    rq_harness.wait_status(job, ["finished"], 15)
    assert job.return_value() == "done"


def test_without_the_lease_redis_a_horse_dies_with_its_worker(
    rq_harness: RQHarness, leases_unreachable: str
) -> None:
    worker = rq_harness.start_worker("GuardedWorker", env={"ZOMBIEGUARD_REDIS_URL": leases_unreachable})
    rq_harness.enqueue("long_job", rq_harness.notes, 30.0)
    horse = int(wait_until(lambda: rq_harness.notes_of("started"), 10, what="started")[0].split()[1])
    os.kill(worker.pid, signal.SIGKILL)  # the worker alone: the horse has a process group of its own
    wait_until(lambda: process_exited(horse), 5, what="the horse died with its worker")
