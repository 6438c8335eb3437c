"""RQ: Redis away or disconnected at the moments a job starts, with real rq workers."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.support.rq_harness import RQHarness, exc_string, wait_until
from zombieguard.demo.embedded import free_port
from zombieguard.enforcement.watchdog import process_exited

pytestmark = pytest.mark.slow

CLASSES = ["GuardedWorker", "GuardedSimpleWorker"]


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("fails", [1, 4])
def test_redis_away_while_rq_prepares_a_job_does_not_fail_it(
    rq_harness: RQHarness, cls: str, fails: int
) -> None:
    # Once: the preparation is tried again. Four times (past half the lease's TTL, 1 s: tried at 0,
    # 0.1, 0.3 and 0.7 s): the job never started, and is recovered as a stall. It is never failed,
    # and its body runs once.
    rq_harness.start_worker(
        cls,
        env={"ZG_PREPARE_FAILS": str(fails)},
        options=["--job-class", "tests.support.rq_workers.PreparationFails"],
    )
    job = rq_harness.enqueue("long_job", rq_harness.notes, 0.2)
    rq_harness.wait_status(job, ["finished"], 20)
    assert job.return_value() == "done"
    assert len(rq_harness.notes_of("started")) == 1
    assert job.id not in rq_harness.queue.failed_job_registry.get_job_ids()
    recovered = "RQ could not prepare it (Connection closed by server (injected)); recovering it"
    assert (recovered in rq_harness.log()) == (fails == 4)


@pytest.mark.parametrize("cls", CLASSES)
def test_redis_away_while_rq_records_a_finished_job_s_end_does_not_fail_it(
    rq_harness: RQHarness, cls: str
) -> None:
    # Redis restarting (loading its data) as RQ writes the end of a job whose body returned: RQ
    # alone fails the healthy job; here its writes are tried again and the job finishes, run once.
    rq_harness.start_worker(
        cls, env={"ZG_END_FAILS": "2"}, options=["--job-class", "tests.support.rq_workers.EndFails"]
    )
    job = rq_harness.enqueue("long_job", rq_harness.notes, 0.2)
    rq_harness.wait_status(job, ["finished", "failed"], 20)
    assert job.get_status() == "finished", rq_harness.log()
    assert job.return_value() == "done"
    assert len(rq_harness.notes_of("started")) == 1
    assert (
        "RQ could not record its end (Redis is loading the dataset in memory (injected))" in rq_harness.log()
    )


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
    assert "HardTimeLimitExceeded" in exc_string(job)
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
