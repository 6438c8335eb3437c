"""Celery: leases and recovery with real celery workers, on the Redis and RabbitMQ brokers."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest
from celery.result import AsyncResult

from tests.support.celery_harness import CeleryHarness
from tests.support.waiting import wait_until
from zombieguard import Policy
from zombieguard.integrations.celery.message import ATTEMPT_HEADER
from zombieguard.leases import JobSpec, LeaseStore, Outcome
from zombieguard.policy import Settings

pytestmark = pytest.mark.slow

LEASE_TTL = 2.0  # the harness's ZOMBIEGUARD_LEASE_TTL


def _pids_started(harness: CeleryHarness) -> list[int]:
    return [int(line.split()[1]) for line in harness.notes_of("started")]


def _next_attempt_started(harness: CeleryHarness) -> float:
    """When the second attempt's body started (waits for it)."""
    line = wait_until(
        lambda: len(harness.notes_of("started")) >= 2 and harness.notes_of("started")[1],
        15,
        what="next attempt",
    )
    return float(line.split()[0])


def test_a_task_whose_worker_died_as_it_received_it_runs_on_the_next_worker_at_once(
    celery_harness: CeleryHarness,
) -> None:
    # Killed after kombu delivered the message (into its unacked hash) and before Celery announced it
    # (task_received): the worker started next hands it back, not the visibility timeout an hour on.
    worker = celery_harness.start_worker("prefork")
    result = celery_harness.send("kills_its_worker_on_receipt", celery_harness.notes)
    wait_until(lambda: worker.poll() is not None, 10, what="the worker killed on receipt")
    unacked = f"{celery_harness.celery_prefix}:unacked"
    assert celery_harness.client.hlen(unacked) == 1
    celery_harness.start_worker("prefork")
    assert result.get(timeout=10) == "ran"
    assert celery_harness.notes_of("ran")
    assert celery_harness.client.hlen(unacked) == 0


@pytest.mark.parametrize("task", ["long_task", "long_task_early_ack"])
def test_a_task_of_a_sigkilled_worker_is_rerun_by_another_within_lease_ttl_plus_2s_same_id_and_args(
    any_broker_harness: CeleryHarness, task: str
) -> None:
    harness = any_broker_harness
    victim = harness.start_worker("prefork")
    # Long enough to be running still once the second worker has started, however slow that is.
    result = harness.send(task, harness.notes, 8.0)
    harness.wait_leased(result.id)
    harness.start_worker("prefork")
    assert not harness.notes_of("completed")
    os.killpg(victim.pid, signal.SIGKILL)
    killed_at = time.time()
    assert _next_attempt_started(harness) - killed_at < LEASE_TTL + 2
    assert result.get(timeout=20) == "done"
    assert len(harness.notes_of("completed")) == 1
    meta = harness.app.backend.get_task_meta(result.id)
    assert meta["args"] == [harness.notes, 8.0]  # same id, same arguments
    assert meta["queue"] == harness.queue  # same routing


LONG_LEASE = {"ZOMBIEGUARD_LEASE_TTL": "30", "ZOMBIEGUARD_HEARTBEAT_INTERVAL": "10"}


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_a_whole_worker_sigkilled_mid_task_has_its_task_started_again_within_1s_with_a_30s_lease(
    any_broker_harness: CeleryHarness, pool: str
) -> None:
    harness = any_broker_harness
    victim = harness.start_worker(pool, env=LONG_LEASE)
    # Long enough to be running still once the second worker has started, however slow that is.
    result = harness.send("long_task", harness.notes, 8.0)
    harness.wait_leased(result.id)
    survivor = harness.start_worker(pool, env=LONG_LEASE)
    harness.wait_present(victim, "celery")
    harness.wait_present(survivor, "celery")
    assert not harness.notes_of("completed")
    os.killpg(victim.pid, signal.SIGKILL)
    killed_at = time.time()
    assert _next_attempt_started(harness) - killed_at < 1.0
    assert result.get(timeout=20) == "done"
    assert len(harness.notes_of("completed")) == 1


def test_a_dead_workers_task_goes_to_the_front_of_its_redis_queue_not_behind_the_tasks_waiting(
    celery_harness: CeleryHarness,
) -> None:
    harness = celery_harness
    victim = harness.start_worker("solo", env=LONG_LEASE)
    # Long enough to be running still when its worker is killed, however slow the set-up below.
    recovered = harness.send("long_task", harness.notes, 6.0)
    harness.wait_leased(recovered.id)
    survivor = harness.start_worker("solo", env=LONG_LEASE)
    harness.send("long_task", harness.notes, 2.0)  # keeps the survivor busy through the recovery
    wait_until(lambda: len(harness.notes_of("started")) == 2, 15, what="the survivor busy")
    waiting = [harness.send("add", n, n) for n in range(5)]
    harness.wait_present(victim, "celery")
    harness.wait_present(survivor, "celery")
    assert harness.state(recovered) != "SUCCESS", "the victim's task ended before its worker was killed"
    os.killpg(victim.pid, signal.SIGKILL)
    assert recovered.get(timeout=30) == "done"
    assert len(harness.notes_of("started")) == 3  # the survivor's own, and the victim's twice
    assert [result.get(timeout=20) for result in waiting] == [0, 2, 4, 6, 8]
    done = harness.app.AsyncResult(recovered.id).date_done
    assert all(harness.app.AsyncResult(result.id).date_done > done for result in waiting)


def test_a_frozen_worker_s_task_is_rerun_and_the_woken_attempt_is_fenced(
    any_broker_harness: CeleryHarness,
) -> None:
    # On RabbitMQ the re-published message may go to the frozen consumer (it has prefetch room): the
    # sweeper publishes it again when no worker started it, and the broker hands that to the next one.
    harness = any_broker_harness
    # Celery's default prefetch: the frozen worker has room for several more messages.
    frozen = harness.start_worker("prefork", env={"ZG_CELERY_PREFETCH": "4"})
    # Long enough to be running still once the second worker has started, however slow that is.
    result = harness.send("long_task", harness.notes, 8.0)
    harness.wait_leased(result.id)
    harness.start_worker("prefork")
    assert not harness.notes_of("completed")
    os.killpg(frozen.pid, signal.SIGSTOP)
    stopped_at = time.time()
    # Its presence connection stays open: only the lease's expiry (renewed every third of lease_ttl
    # at most) frees the task.
    assert LEASE_TTL - 0.8 < _next_attempt_started(harness) - stopped_at < LEASE_TTL + 2
    time.sleep(0.5)  # let the frozen attempt's body overlap with the new one
    os.killpg(frozen.pid, signal.SIGCONT)
    assert result.get(timeout=20) == "done"
    time.sleep(2)  # the woken attempt would have completed by now
    completed = [int(line.split()[1]) for line in harness.notes_of("completed")]
    assert completed == [_pids_started(harness)[1]]  # only the new attempt's body completed
    assert harness.state(result) == "SUCCESS"


@pytest.mark.parametrize("pool", ["solo", "prefork"])
def test_a_worker_frozen_past_a_task_s_lease_after_its_end_and_before_its_ack_acks_it_and_it_runs_once(
    any_broker_harness: CeleryHarness, pool: str
) -> None:
    harness = any_broker_harness
    frozen = harness.start_worker(pool, concurrency=1)
    result = harness.send("freezes_its_worker_on_return", harness.notes)
    wait_until(lambda: harness.state(result) == "SUCCESS", 15, what="the task's end recorded")
    time.sleep(LEASE_TTL * 2)  # frozen, its lease run out; its own sweeper frozen with it
    os.killpg(frozen.pid, signal.SIGCONT)
    # Awake, it acks the message (on RabbitMQ, Celery's solo pool acks up to ~10 s late after a
    # freeze): with room for one message only, it takes the next one once it has.
    assert harness.send("add", 1, 1).get(timeout=30) == 2
    os.killpg(frozen.pid, signal.SIGKILL)
    frozen.wait(10)
    harness.start_worker(pool, concurrency=1)  # it would get the message, had it not been acked
    time.sleep(2)
    assert len(harness.notes_of("ran")) == 1  # not recovered by a sweeper, nor delivered again
    assert harness.state(result) == "SUCCESS"


def test_a_dead_worker_s_messages_are_handed_back_by_a_worker_of_its_broker_not_another_app_s(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    ours = CeleryHarness(redis_url, key_prefix, tmp_path)
    (tmp_path / "theirs").mkdir()
    theirs = CeleryHarness(redis_url, f"{key_prefix}-theirs", tmp_path / "theirs")  # another app
    try:
        dead = ours.start_worker("threads", concurrency=1, env={"ZG_CELERY_PREFETCH": "4"})
        long = ours.send("long_task", ours.notes, 30.0)
        ours.wait_leased(long.id)
        waiting = [ours.send("add", 2, 3) for _ in range(2)]
        unacked = f"{ours.celery_prefix}:unacked"
        wait_until(lambda: ours.client.hlen(unacked) == 3, 10, what="three messages received")
        os.killpg(dead.pid, signal.SIGKILL)  # with its watchdog process: no one hands them back yet
        dead.wait(10)
        theirs.start_worker("threads", concurrency=1)  # finds the dead worker's working directory
        time.sleep(1)
        assert ours.client.hlen(unacked) == 3  # left for a worker of its own broker
        # Three threads: the long task, recovered once its lease expires, goes to the front of the
        # queue and runs 30 s; the handed-back additions run beside it.
        ours.start_worker("threads", concurrency=3)
        for result in waiting:  # handed back at once, not after kombu's visibility timeout (an hour)
            ours.wait_state(result, {"SUCCESS"}, 10)
    finally:
        theirs.close()
        ours.close()


def _kill_the_pool_process_mid_task(
    harness: CeleryHarness, lease: str, written_delay: str, task: str, *args: object
) -> tuple[AsyncResult, float]:
    """Start a prefork worker, send ``task``, kill its pool process once it started (its lease
    ``written`` or ``not yet written``); its result and when the kill happened."""
    delay = "1.5" if lease == "not yet written" else written_delay
    harness.start_worker("prefork", env={"ZOMBIEGUARD_LEASE_DELAY": delay})
    result = harness.send(task, harness.notes, *args)
    wait_until(lambda: harness.notes_of("started"), 15, what="first attempt started")
    if lease == "written":
        harness.wait_leased(result.id)
    assert harness.lease_state(result.id) == ("running" if lease == "written" else "")
    os.kill(_pids_started(harness)[0], signal.SIGKILL)
    return result, time.time()


@pytest.mark.parametrize("lease", ["written", "not yet written"])
def test_a_pool_process_killed_mid_task_is_a_stall_recovered_at_once(
    celery_harness: CeleryHarness, lease: str
) -> None:
    # Not yet written: killed within its lease_delay; the worker writes the lease from its own copy
    # of the request, and recovers the task the same way.
    result, killed_at = _kill_the_pool_process_mid_task(celery_harness, lease, "none", "long_task", 2.0)
    assert _next_attempt_started(celery_harness) - killed_at < 2.0
    assert result.get(timeout=15) == "done"
    meta = celery_harness.app.backend.get_task_meta(result.id)
    assert meta["args"] == [celery_harness.notes, 2.0]  # same id, same arguments
    assert meta["queue"] == celery_harness.queue  # same routing


@pytest.mark.parametrize("lease", ["written", "not yet written"])
def test_a_task_that_changed_its_arguments_in_place_is_recovered_with_the_arguments_it_was_sent(
    celery_harness: CeleryHarness, lease: str
) -> None:
    # Written: by the lease thread, after the body changed its arguments.
    result, _ = _kill_the_pool_process_mid_task(
        celery_harness, lease, "0.05", "changes_its_arguments", ["sent"], 3.0
    )
    _next_attempt_started(celery_harness)
    assert [line.split()[1] for line in celery_harness.notes_of("given")] == ["sent", "sent"]
    assert result.get(timeout=15) == "done"


def test_a_threads_task_that_changed_its_arguments_in_place_is_recovered_with_the_arguments_it_was_sent(
    celery_harness: CeleryHarness,
) -> None:
    # The lease thread writes the lease after the body changed its arguments, from the copy of the
    # request taken at the start.
    victim = celery_harness.start_worker("threads")
    # Long enough to be running still once the second worker has started, however slow that is.
    result = celery_harness.send("changes_its_arguments", celery_harness.notes, ["sent"], 8.0)
    celery_harness.wait_leased(result.id)
    celery_harness.start_worker("threads")
    assert not celery_harness.notes_of("completed")
    os.killpg(victim.pid, signal.SIGKILL)
    _next_attempt_started(celery_harness)
    assert [line.split()[1] for line in celery_harness.notes_of("given")] == ["sent", "sent"]
    assert result.get(timeout=20) == "done"


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_a_task_holding_the_gil_from_its_start_is_leased_and_rerun_when_its_whole_worker_is_sigkilled(
    celery_harness: CeleryHarness, pool: str
) -> None:
    # No thread of its process can write its lease: the worker's main process (prefork, 0.1 s past
    # lease_delay) or its watchdog process (threads and solo, 0.8 / 0.5 s past) writes it. Not
    # acks_late: without the lease the task would be lost.
    harness = celery_harness
    victim = harness.start_worker(pool)
    result = harness.send("holds_the_gil", harness.notes, 8.0, 0.2)
    wait_until(lambda: harness.notes_of("started"), 15, what="first attempt started")
    harness.wait_leased(result.id, timeout=2.0)
    harness.start_worker(pool)
    os.killpg(victim.pid, signal.SIGKILL)
    killed_at = time.time()
    assert _next_attempt_started(harness) - killed_at < LEASE_TTL + 2
    assert result.get(timeout=15) == "done"
    assert len(harness.notes_of("started")) == 2


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_a_task_that_held_the_gil_past_its_lease_delay_and_completed_runs_once_and_leaves_no_lease(
    celery_harness: CeleryHarness, pool: str
) -> None:
    # Its lease, written for it by another process, is adopted by its own, or released for it
    # when it ended without adopting it: no sweeper re-runs it when the lease would expire.
    harness = celery_harness
    harness.start_worker(pool, env={"ZOMBIEGUARD_LEASE_TTL": "6"})
    # Held well past the write (threads: 0.85 s after the start, solo 0.55 s, later on a busy
    # machine), long enough for the test to see the lease on a busy machine, and ended well before
    # that lease would expire (lease_ttl after it).
    result = harness.send("holds_the_gil", harness.notes, 3.0, 3.0)
    wait_until(lambda: harness.notes_of("started"), 15, what="first attempt started")
    harness.wait_leased(result.id, timeout=3.0)
    assert result.get(timeout=15) == "done"
    wait_until(lambda: harness.lease_state(result.id) == "", 3, what="its lease released")
    time.sleep(6 + 1.5)  # a lease left behind would have expired and been recovered
    assert len(harness.notes_of("started")) == 1
    assert harness.lease_state(result.id) == ""


def test_a_late_redelivery_of_a_superseded_attempt_does_not_run_the_body_again(
    celery_harness: CeleryHarness,
) -> None:
    victim = celery_harness.start_worker("prefork")
    # Long enough to be running still once the second worker has started, however slow that is.
    result = celery_harness.send("long_task", celery_harness.notes, 8.0)
    celery_harness.wait_leased(result.id)
    celery_harness.start_worker("prefork")
    assert not celery_harness.notes_of("completed")
    os.killpg(victim.pid, signal.SIGKILL)
    assert result.get(timeout=20) == "done"
    # The original message again, as kombu restores it after a visibility timeout (the Redis
    # transport marks it redelivered in its headers; AMQP brokers set the delivery's flag).
    celery_harness.send(
        "long_task", celery_harness.notes, 1.0, task_id=result.id, headers={"redelivered": True}
    )
    marker = celery_harness.send("add", 1, 1)
    assert marker.get(timeout=15) == 2
    time.sleep(1.5)
    assert len(celery_harness.notes_of("started")) == 2
    assert "not run: delivery of attempt 1 is stale" in celery_harness.log(1)
    assert celery_harness.state(result) == "SUCCESS"


def test_a_poison_pill_is_dead_lettered_after_max_stalls_even_with_reject_on_worker_lost(
    celery_harness: CeleryHarness,
) -> None:
    celery_harness.start_worker("prefork")
    result = celery_harness.send("kills_its_process", celery_harness.notes)
    wait_until(
        lambda: celery_harness.client.hexists("{" + celery_harness.key_prefix + "}:dlq", result.id),
        30,
        what="dead-lettered",
    )
    time.sleep(1)
    # max_stalls (3) recoveries, then quarantine: four runs, not an endless loop.
    assert len(celery_harness.notes_of("started")) == 4, celery_harness.log()[-3000:]
    marker = celery_harness.send("add", 1, 2)
    assert marker.get(timeout=15) == 3


def test_stale_copies_delivered_after_the_task_failed_leave_its_recorded_failure_as_it_was(
    celery_harness: CeleryHarness,
) -> None:
    # A recovered task can be published more than once (a copy for a consumer that may be frozen);
    # copies delivered after the task ended are refused, but with task_track_started Celery has just
    # recorded each STARTED: that must not stay over the task's FAILURE (Celery keeps a SUCCESS
    # itself). Two copies, for the two pool processes to take at once.
    celery_harness.start_worker("prefork")
    result = celery_harness.send("fails", celery_harness.notes)
    celery_harness.wait_state(result, {"FAILURE"}, 15)  # attempt 1 ended: failed
    for _ in range(2):
        celery_harness.send(
            "fails", celery_harness.notes, task_id=result.id, headers={"zombieguard_attempt": 1}
        )
    wait_until(
        lambda: celery_harness.log().count("delivery of attempt 1 is stale") == 2, 15, what="copies refused"
    )
    assert celery_harness.state(result) == "FAILURE"
    assert "the task's own bug" in str(celery_harness.app.AsyncResult(result.id).result)
    assert len(celery_harness.notes_of("started")) == 1  # no copy's body ran


def test_a_frozen_prefork_attempt_records_nothing_when_celery_s_own_time_limit_fires_as_it_wakes(
    celery_harness: CeleryHarness,
) -> None:
    # Celery's own hard limit (the backstop, 3 s past the policy's 4 s) passes while the worker is
    # frozen; its attempt was recovered meanwhile. As it wakes, neither Celery's timer nor
    # zombieguard's limit may record the task FAILED: when the new attempt's worker then dies, the
    # task must be run again, not taken for ended.
    harness = celery_harness
    env = {"ZOMBIEGUARD_HARD_TIMEOUT": "4"}
    frozen = harness.start_worker("prefork", concurrency=1, env=env)
    result = harness.send("long_task", harness.notes, 3.5)
    harness.wait_leased(result.id)
    os.killpg(frozen.pid, signal.SIGSTOP)
    time.sleep(7.5)  # past the backstop (7 s after the start)
    second = harness.start_worker("prefork", concurrency=1, env=env)  # recovers, runs attempt 2
    _next_attempt_started(harness)
    os.killpg(frozen.pid, signal.SIGCONT)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # the woken attempt's timer and limit fire now
        assert harness.state(result) != "FAILURE", harness.diagnosis(result.id)
        time.sleep(0.05)
    os.killpg(second.pid, signal.SIGKILL)  # attempt 2 dies: the woken worker recovers it
    assert result.get(timeout=20) == "done"
    assert len(harness.notes_of("started")) == 3
    woken = harness.log(0)  # it noticed, by Celery's timer or by its own monitor, first
    assert "no longer holds the task" in woken or "its worker was frozen" in woken


@pytest.mark.parametrize("lease", ["written", "not yet written"])
@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_a_lone_worker_frozen_past_its_task_s_lease_and_limits_reruns_the_task_not_fails_it(
    celery_harness: CeleryHarness, pool: str, lease: str
) -> None:
    # No other worker: nothing recovers the task while its worker is frozen (not yet written: frozen
    # within the task's lease_delay). As it wakes, the task is past its hard_timeout and Celery's own
    # limit by the clock only: its lease lapsed first, a stall, as a sweeper elsewhere would have
    # judged it. It is run again, not failed as timed out (prefork: Celery's own limit, the backstop,
    # records nothing either).
    harness = celery_harness
    delay = "1.5" if lease == "not yet written" else "none"
    env = {"ZOMBIEGUARD_HARD_TIMEOUT": "4", "ZOMBIEGUARD_LEASE_DELAY": delay}
    worker = harness.start_worker(pool, concurrency=1, env=env)
    result = harness.send("works_in_steps", harness.notes, 40)  # 2 s of work
    wait_until(lambda: harness.notes_of("started"), 15, what="first attempt started")
    if lease == "written":
        harness.wait_leased(result.id)
    os.killpg(worker.pid, signal.SIGSTOP)
    assert harness.lease_state(result.id) == ("running" if lease == "written" else "")
    time.sleep(6.5)  # past its lease (2 s), its hard_timeout (4 s) and Celery's backstop (6 s)
    os.killpg(worker.pid, signal.SIGCONT)
    assert harness.wait_state(result, {"SUCCESS", "FAILURE"}, 25) == "SUCCESS", harness.diagnosis(result.id)
    assert len(harness.notes_of("started")) == 2
    assert len(harness.notes_of("completed")) == 1
    assert harness.state(result) == "SUCCESS"


def test_a_redelivered_task_whose_attempt_was_stopped_as_hung_before_celery_recorded_it_is_failed(
    celery_harness: CeleryHarness,
) -> None:
    # Its worker stopped it at its progress limit and recorded that in the lease, then died before
    # Celery stored the failure: the broker delivers the task again, a copy of a finished attempt.
    store = LeaseStore(celery_harness.client, Settings(key_prefix=celery_harness.key_prefix))
    task_id = f"zgt-{uuid.uuid4().hex[:10]}"
    signature = {
        "task": "tests.support.celery_app.long_task",
        "args": [celery_harness.notes, 1.0],
        "kwargs": {},
    }
    payload = json.dumps({"signature": signature})  # what a worker keeps in the lease
    spec = JobSpec(task_id, "celery", "tests.support.celery_app.long_task", celery_harness.queue, payload)
    acquired = store.acquire(spec, "zgw-dead@test", Policy(lease_ttl=30))
    store.release(spec, acquired.token, Outcome.HUNG, "made no progress within its progress_timeout of 2 s")
    celery_harness.start_worker("solo")
    # A copy of attempt 1 (as a broker's redelivery of it is), not a first delivery.
    result = celery_harness.send(
        "long_task", celery_harness.notes, 1.0, task_id=task_id, headers={ATTEMPT_HEADER: 1}
    )
    assert celery_harness.wait_state(result, {"FAILURE"}, 15) == "FAILURE"
    assert type(result.result).__name__ == "TimeLimitExceeded"
    assert "made no progress within its progress_timeout of 2 s" in str(result.result)
    assert not celery_harness.notes_of("started")  # the copy itself never ran
