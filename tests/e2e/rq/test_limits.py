"""RQ: hard, soft and progress limits, with real rq workers."""

from __future__ import annotations

import time

import pytest
from rq import Callback, Retry

from tests.support.rq_harness import RQHarness, exc_string, wait_until

pytestmark = pytest.mark.slow

CLASSES = ["GuardedWorker", "GuardedSimpleWorker"]


def _started_at(harness: RQHarness) -> float:
    return float(wait_until(lambda: harness.notes_of("started"), 10, what="job started")[0].split()[0])


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("source", ["rq job_timeout", "zombieguard hard_timeout"])
def test_a_job_hung_on_a_socket_is_stopped_within_1s_of_hard_timeout_and_fails_the_rq_way(
    rq_harness: RQHarness, black_hole: int, cls: str, source: str
) -> None:
    rq_own = source == "rq job_timeout"
    rq_harness.start_worker(cls, env={} if rq_own else {"ZOMBIEGUARD_HARD_TIMEOUT": "2"})
    job = rq_harness.enqueue(
        "hang_on_socket",
        rq_harness.notes,
        black_hole,
        job_timeout=2 if rq_own else 60,
        on_failure=Callback("tests.support.rq_jobs.on_failure"),
    )
    started = _started_at(rq_harness)
    rq_harness.wait_status(job, ["failed"], 10)
    stopped_after = time.time() - started
    assert 1.9 <= stopped_after < 3.0
    exc = exc_string(job)
    # RQ's own limit fails the job with RQ's own exception type (zombieguard's interrupt as well).
    name = "JobTimeoutException" if rq_own else "HardTimeLimitExceeded"
    assert name in exc
    if rq_own:
        assert "JobTimeoutException: Task exceeded maximum timeout value (2 seconds)" in exc
    assert "hang_on_socket" in exc  # where it was stuck
    assert [line.split()[1] for line in rq_harness.notes_of("on_failure")] == [name]
    assert job.id in rq_harness.queue.failed_job_registry.get_job_ids()
    # The worker goes on with the next job.
    nxt = rq_harness.enqueue("add", 2, 3)
    rq_harness.wait_status(nxt, ["finished"], 10)
    assert nxt.return_value() == 5


@pytest.mark.parametrize("cls", CLASSES)
def test_a_job_past_rq_job_timeout_can_catch_rq_own_timeout_exception_to_clean_up(
    rq_harness: RQHarness, cls: str
) -> None:
    rq_harness.start_worker(cls)
    job = rq_harness.enqueue("cleans_up_on_rq_timeout", rq_harness.notes, job_timeout=1)
    rq_harness.wait_status(job, ["failed"], 10)
    assert [line.split()[1] for line in rq_harness.notes_of("cleaned-up")] == ["JobTimeoutException"]
    assert "JobTimeoutException: Task exceeded maximum timeout value (1 seconds)" in (exc_string(job))
    assert len(rq_harness.notes_of("started")) == 1  # failed, not recovered


def test_a_job_stuck_in_c_code_is_killed_within_1s_of_hard_timeout_with_its_stack(
    rq_harness: RQHarness,
) -> None:
    rq_harness.start_worker("GuardedWorker")
    job = rq_harness.enqueue("stuck_in_c_code", rq_harness.notes, job_timeout=2)
    started = _started_at(rq_harness)
    rq_harness.wait_status(job, ["failed"], 10)
    assert time.time() - started < 3.0
    exc = exc_string(job)
    assert "JobTimeoutException: Task exceeded maximum timeout value (2 seconds)" in exc
    assert "stuck_in_c_code" in exc  # the faulthandler dump, taken while it held the GIL
    nxt = rq_harness.enqueue("add", 1, 1)
    rq_harness.wait_status(nxt, ["finished"], 10)


def test_a_simple_worker_s_job_stuck_in_c_code_is_killed_and_failed_by_the_watchdog_process(
    rq_harness: RQHarness,
) -> None:
    worker = rq_harness.start_worker("GuardedSimpleWorker")
    job = rq_harness.enqueue("stuck_in_c_code", rq_harness.notes, job_timeout=2)
    started = _started_at(rq_harness)
    rq_harness.wait_status(job, ["failed"], 10)
    assert time.time() - started < 3.5  # hard_timeout + the watchdog process's 0.5 s grace + a poll
    assert worker.wait(5) == -9  # the watchdog process killed it: its supervisor restarts it
    exc = exc_string(job)
    assert "JobTimeoutException: Task exceeded maximum timeout value (2 seconds)" in exc
    assert "stuck_in_c_code" in exc
    assert job.id not in rq_harness.queue.started_job_registry.get_job_ids()


@pytest.mark.parametrize("cls", CLASSES)
def test_soft_timeout_raises_a_catchable_exception_first(rq_harness: RQHarness, cls: str) -> None:
    rq_harness.start_worker(cls, env={"ZOMBIEGUARD_SOFT_TIMEOUT": "1"})
    job = rq_harness.enqueue("cleans_up_on_soft_timeout", rq_harness.notes, job_timeout=5)
    rq_harness.wait_status(job, ["finished"], 10)
    assert job.return_value() == "cleaned up"
    started = float(rq_harness.notes_of("started")[0].split()[0])
    cleaned = float(rq_harness.notes_of("cleaned-up")[0].split()[0])
    assert 0.9 <= cleaned - started < 1.5  # the clock starts at acquire, a moment before the body


def test_a_policy_longer_than_rq_job_timeout_wins_over_it(rq_harness: RQHarness) -> None:
    rq_harness.start_worker("GuardedWorker")
    job = rq_harness.enqueue("guarded_longer_than_rq", rq_harness.notes, job_timeout=1)
    rq_harness.wait_status(job, ["finished"], 10)
    assert job.return_value() == "policy wins"


@pytest.mark.parametrize("cls", CLASSES)
def test_a_job_alive_but_without_progress_is_stopped_as_hung_within_1s_of_progress_timeout(
    rq_harness: RQHarness, cls: str
) -> None:
    rq_harness.start_worker(cls, env={"ZOMBIEGUARD_PROGRESS_TIMEOUT": "1"})
    job = rq_harness.enqueue("beats_then_stalls", rq_harness.notes, 5, job_timeout=60)
    stopped_beating = float(
        wait_until(lambda: rq_harness.notes_of("stopped-beating"), 10, what="stopped beating")[0].split()[0]
    )
    rq_harness.wait_status(job, ["failed"], 10)
    assert time.time() - stopped_beating < 2.2  # the last beat came just before; limit 1 s; within 1 s of it
    assert "JobHung" in exc_string(job)


def test_a_job_killed_at_its_hard_limit_is_retried_as_its_rq_retry_says(rq_harness: RQHarness) -> None:
    rq_harness.start_worker("GuardedWorker")
    job = rq_harness.enqueue("stuck_in_c_code", rq_harness.notes, job_timeout=1, retry=Retry(max=1))
    rq_harness.wait_status(job, ["failed"], 15)
    assert len(rq_harness.notes_of("started")) == 2
    assert "JobTimeoutException" in exc_string(job)
