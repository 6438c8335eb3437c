"""Celery: hard, soft and progress limits on every pool, with real celery workers."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.support.celery_harness import CeleryHarness
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

POOLS = ["prefork", "threads", "solo"]


def _started_at(harness: CeleryHarness) -> float:
    return float(wait_until(lambda: harness.notes_of("started"), 15, what="task started")[0].split()[0])


def _worker_goes_on(harness: CeleryHarness) -> None:
    result = harness.send("add", 2, 3)
    assert result.get(timeout=15) == 5


@pytest.mark.parametrize("pool", POOLS)
def test_a_task_hung_on_a_socket_is_stopped_within_1s_of_hard_timeout_on_every_pool(
    celery_harness: CeleryHarness, black_hole: int, pool: str
) -> None:
    # Four threads: one stuck thread is a zombie, below the share that restarts the worker.
    worker = celery_harness.start_worker(pool, concurrency=4 if pool == "threads" else 2)
    result = celery_harness.send("hang_on_socket", celery_harness.notes, black_hole, time_limit=2)
    started = _started_at(celery_harness)
    celery_harness.wait_state(result, {"FAILURE"}, 15)
    assert time.time() - started < 3.0
    assert type(result.result).__name__ == "TimeLimitExceeded"
    # task_failure and on_failure ran once each.
    wait_until(lambda: celery_harness.notes_of("on_failure"), 5, what="on_failure")
    time.sleep(0.5)
    assert [line.split()[1] for line in celery_harness.notes_of("on_failure")] == ["TimeLimitExceeded"]
    assert [line.split()[1] for line in celery_harness.notes_of("task_failure")] == ["TimeLimitExceeded"]
    # The job_timed_out signal, received by a receiver connected in the app's module, once, in the
    # process that detected it: the worker's main process on every pool.
    [event] = celery_harness.notes_of("event-timed_out-hard")
    assert event.split()[1:] == [result.id, str(worker.pid)]
    if pool == "threads":  # the stuck thread is counted where the metrics read it
        description = "{" + celery_harness.key_prefix + "}:worker:" + celery_harness.worker_names[0]
        assert celery_harness.client.hget(description, "zombie_threads") == b"1"
    _worker_goes_on(celery_harness)


def test_a_prefork_task_stuck_in_c_code_is_killed_within_1s_of_hard_timeout_and_the_worker_goes_on(
    celery_harness: CeleryHarness,
) -> None:
    celery_harness.start_worker("prefork")
    result = celery_harness.send("stuck_in_c_code", celery_harness.notes, time_limit=2)
    started = _started_at(celery_harness)
    celery_harness.wait_state(result, {"FAILURE"}, 15)
    assert time.time() - started < 3.0
    assert type(result.result).__name__ == "TimeLimitExceeded"
    time.sleep(0.5)
    assert [line.split()[1] for line in celery_harness.notes_of("task_failure")] == ["TimeLimitExceeded"]
    _worker_goes_on(celery_harness)


def test_where_a_pool_process_hung_past_celery_s_own_time_limit_is_logged_before_celery_kills_it(
    celery_harness: CeleryHarness,
) -> None:
    # The body returned (zombieguard's limit is over); the task's on_success hangs, and Celery's own
    # limit (the backstop, 3 s past the task's 2 s) ends it. Where the process was goes to the log.
    celery_harness.start_worker("prefork")
    result = celery_harness.send("hangs_after_it_returns", time_limit=2)
    assert result.get(timeout=15) == "done"
    heading = "Celery's own hard time limit (5) passed; pool process"
    wait_until(lambda: "Hard time limit (5s) exceeded" in celery_harness.log(), 15, what="Celery's limit")
    assert heading in celery_harness.log()
    stacks = celery_harness.log().split(heading, 1)[1].split("Hard time limit (5s) exceeded", 1)[0]
    assert "in on_success" in stacks, stacks
    _worker_goes_on(celery_harness)
    assert celery_harness.state(result) == "SUCCESS"


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_a_worker_stuck_in_c_code_is_killed_by_its_watchdog_process_and_the_task_failed_at_once(
    celery_harness: CeleryHarness, pool: str
) -> None:
    # C code holding the GIL: no thread of the worker runs, so the process beside it acts. The task
    # got stuck at once, before its lease was written (lease_delay): the watchdog process writes it
    # and fails the task the Celery way, with no other worker running.
    worker = celery_harness.start_worker(pool)
    result = celery_harness.send("stuck_in_c_code", celery_harness.notes, time_limit=2)
    started = _started_at(celery_harness)
    # The worker is killed 0.5 s past the limit; its supervisor (here: the test) starts another.
    wait_until(lambda: worker.poll() is not None, 10, what="the stuck worker killed")
    assert time.time() - started < 3.0, celery_harness.diagnosis(result.id)
    celery_harness.wait_state(result, {"FAILURE"}, 5)
    assert type(result.result).__name__ == "TimeLimitExceeded"
    assert "stuck_in_c_code" in str(result.result)  # the stack, dumped while it held the GIL
    # Failed with its arguments: the watchdog process wrote the lease from the request the slot keeps.
    assert celery_harness.app.backend.get_task_meta(result.id)["args"] == [celery_harness.notes]
    assert celery_harness.notes_of("on_failure")
    unacked = f"{celery_harness.celery_prefix}:unacked"
    wait_until(lambda: celery_harness.client.hlen(unacked) == 0, 5, what="nothing left unacked")
    celery_harness.start_worker(pool)
    _worker_goes_on(celery_harness)


def test_a_threads_worker_killed_for_c_code_hands_back_its_other_tasks_and_their_leases_at_once(
    celery_harness: CeleryHarness,
) -> None:
    # One thread runs a long task, the other gets stuck in C code after a moment; two more tasks wait
    # in the worker, received, for a free thread. When the watchdog process kills the worker, the
    # long task is recovered at once (not when its lease expires) and the waiting ones go back to the
    # broker (not into kombu's unacked hash until the visibility timeout).
    worker = celery_harness.start_worker("threads", concurrency=2, env={"ZG_CELERY_PREFETCH": "4"})
    long = celery_harness.send("long_task", celery_harness.notes, 4.0)
    celery_harness.wait_leased(long.id)
    stuck = celery_harness.send("stuck_in_c_code", celery_harness.notes, 0.5, time_limit=2)
    waiting = [celery_harness.send("add", 2, 3) for _ in range(2)]
    wait_until(lambda: worker.poll() is not None, 10, what="the stuck worker killed")
    killed_at = time.time()
    celery_harness.wait_state(stuck, {"FAILURE"}, 5)
    unacked = f"{celery_harness.celery_prefix}:unacked"
    wait_until(lambda: celery_harness.client.hlen(unacked) == 0, 5, what="nothing left unacked")
    assert celery_harness.lease_state(long.id) in ("queued", "recovering")  # not left to expire
    celery_harness.start_worker("threads", concurrency=2)
    for result in waiting:
        celery_harness.wait_state(result, {"SUCCESS"}, 10)
    celery_harness.wait_state(long, {"SUCCESS"}, 15)
    restarted = float(celery_harness.notes_of("started")[-1].split()[0])
    assert restarted - killed_at < 5.0


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_a_worker_frozen_whole_past_a_task_s_limit_is_not_killed_by_its_watchdog_process_as_it_wakes(
    celery_harness: CeleryHarness, pool: str
) -> None:
    # Its watchdog process was frozen with it: as both wake, the worker's own threads stop the task
    # (it is past its hard limit, in wall-clock time); killing the worker is for C code only.
    worker = celery_harness.start_worker(pool, env={"ZOMBIEGUARD_HARD_TIMEOUT": "3"})
    result = celery_harness.send("long_task", celery_harness.notes, 30.0)
    celery_harness.wait_leased(result.id)
    os.killpg(worker.pid, signal.SIGSTOP)
    time.sleep(4.5)
    os.killpg(worker.pid, signal.SIGCONT)
    celery_harness.wait_state(result, {"FAILURE"}, 10)
    assert type(result.result).__name__ == "TimeLimitExceeded"
    time.sleep(1.0)
    assert worker.poll() is None, celery_harness.log()
    _worker_goes_on(celery_harness)


def test_a_threads_worker_restarts_itself_once_zombie_threads_reach_their_share_of_the_pool(
    celery_harness: CeleryHarness, black_hole: int
) -> None:
    worker = celery_harness.start_worker("threads", concurrency=2)
    first = celery_harness.send("hang_on_socket", celery_harness.notes, black_hole, time_limit=1)
    celery_harness.wait_state(first, {"FAILURE"}, 10)
    assert type(first.result).__name__ == "TimeLimitExceeded"
    # One of two threads stuck is half the pool (the default share): warm shutdown, then exit.
    assert worker.wait(15) == 1
    log = celery_harness.log()
    assert "1 of 2 threads are zombies" in log
    assert "Warm shutdown" in log
    assert [line.split()[1] for line in celery_harness.notes_of("task_failure")] == ["TimeLimitExceeded"]


def test_a_threads_worker_restarting_for_zombie_threads_hands_its_unstarted_tasks_back_at_once(
    celery_harness: CeleryHarness, black_hole: int
) -> None:
    # Both threads stuck: the two prefetched tasks can never start here. They must go back to the
    # broker as the worker exits, not wait in kombu's unacked hash for the visibility timeout.
    env = {"ZOMBIEGUARD_ZOMBIE_THREAD_SHARE": "1", "ZG_CELERY_PREFETCH": "2"}
    worker = celery_harness.start_worker("threads", concurrency=2, env=env)
    hung = [
        celery_harness.send("hang_on_socket", celery_harness.notes, black_hole, time_limit=1) for _ in "ab"
    ]
    waiting = [celery_harness.send("add", 2, 3) for _ in "ab"]
    assert worker.wait(20) == 1
    for result in hung:
        assert celery_harness.state(result) == "FAILURE"
    assert [celery_harness.state(result) for result in waiting] == ["PENDING", "PENDING"]
    unacked = celery_harness.client.hlen(f"{celery_harness.celery_prefix}:unacked")
    assert unacked == 0, celery_harness.log()[-3000:]
    celery_harness.start_worker("threads", concurrency=2)
    for result in waiting:
        celery_harness.wait_state(result, {"SUCCESS"}, 10)
