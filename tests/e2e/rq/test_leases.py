"""RQ: dead and frozen workers, fencing, poison pills, checkpoints, with real rq workers."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.support.harness import thaw
from tests.support.rq_harness import RQHarness, exc_string, wait_until
from zombieguard.enforcement.watchdog import process_exited
from zombieguard.leases import LeaseStore
from zombieguard.policy import Settings
from zombieguard.recovery.deadletter import DeadLetterStore

pytestmark = pytest.mark.slow

LEASE_TTL = 2.0


def _first_start(harness: RQHarness) -> tuple[float, int]:
    line = wait_until(lambda: harness.notes_of("started"), 15, what="job started")[0].split()
    return float(line[0]), int(line[1])


def _assert_finished_once(harness: RQHarness, job_id: str) -> None:
    job = harness.queue.fetch_job(job_id)
    assert job is not None
    assert harness.status(job) == "finished"
    assert job.return_value() == "done"
    assert len(harness.notes_of("completed")) == 1
    assert job_id not in harness.queue.failed_job_registry.get_job_ids()
    # RQ's own abandoned-job cleanup, run as if every execution had expired, must not touch it.
    harness.queue.started_job_registry.cleanup(timestamp=time.time() + 10**6)
    assert harness.status(job) == "finished"
    assert job_id not in harness.queue.failed_job_registry.get_job_ids()


@pytest.mark.parametrize("victim", ["parent", "horse", "both"])
def test_a_worker_killed_mid_job_has_its_job_recovered_within_lease_ttl_plus_2s(
    rq_harness: RQHarness, victim: str
) -> None:
    worker = rq_harness.start_worker("GuardedWorker")
    job = rq_harness.enqueue("long_job", rq_harness.notes, 2.0)
    _, horse = _first_start(rq_harness)
    rq_harness.start_worker("GuardedWorker")  # the survivor
    killed_at = time.time()
    if victim in ("parent", "both"):
        os.killpg(worker.pid, signal.SIGKILL)
    if victim in ("horse", "both"):
        os.kill(horse, signal.SIGKILL)
    second = wait_until(lambda: rq_harness.notes_of("started")[1:], LEASE_TTL + 3, what="second attempt")
    recovered_after = float(second[0].split()[0]) - killed_at
    assert recovered_after < LEASE_TTL + 2
    if victim == "horse":
        assert recovered_after < 1.0  # its parent saw it die and gave the lease up at once
    rq_harness.wait_status(job, ["finished"], 10)
    _assert_finished_once(rq_harness, job.id)
    wait_until(lambda: process_exited(horse), 5, what="the orphaned horse is gone")


def test_a_simple_worker_killed_mid_job_has_its_job_recovered_by_another(rq_harness: RQHarness) -> None:
    worker = rq_harness.start_worker("GuardedSimpleWorker")
    job = rq_harness.enqueue("long_job", rq_harness.notes, 2.0)
    _first_start(rq_harness)
    rq_harness.start_worker("GuardedSimpleWorker")
    killed_at = time.time()
    os.killpg(worker.pid, signal.SIGKILL)
    second = wait_until(lambda: rq_harness.notes_of("started")[1:], LEASE_TTL + 3, what="second attempt")
    assert float(second[0].split()[0]) - killed_at < LEASE_TTL + 2
    rq_harness.wait_status(job, ["finished"], 10)
    _assert_finished_once(rq_harness, job.id)


LONG_LEASE = {"ZOMBIEGUARD_LEASE_TTL": "30", "ZOMBIEGUARD_HEARTBEAT_INTERVAL": "10"}


@pytest.mark.parametrize("cls", ["GuardedWorker", "GuardedSimpleWorker"])
def test_a_whole_worker_sigkilled_mid_job_has_its_job_started_again_within_1s_with_a_30s_lease(
    rq_harness: RQHarness, cls: str
) -> None:
    worker = rq_harness.start_worker(cls, env=LONG_LEASE)
    job = rq_harness.enqueue("long_job", rq_harness.notes, 2.0)
    _, pid = _first_start(rq_harness)
    survivor = rq_harness.start_worker(cls, env=LONG_LEASE)
    rq_harness.wait_present(worker, "rq")
    rq_harness.wait_present(survivor, "rq")
    killed_at = time.time()
    os.killpg(worker.pid, signal.SIGKILL)
    if pid != worker.pid:
        os.kill(pid, signal.SIGKILL)  # the horse, in a process group of its own
    second = wait_until(lambda: rq_harness.notes_of("started")[1:], 10, what="second attempt")
    assert float(second[0].split()[0]) - killed_at < 1.0
    rq_harness.wait_status(job, ["finished"], 10)
    _assert_finished_once(rq_harness, job.id)


def test_a_dead_workers_job_with_a_progress_timeout_shorter_than_its_lease_is_recovered_not_hung(
    rq_harness: RQHarness,
) -> None:
    env = {**LONG_LEASE, "ZOMBIEGUARD_PROGRESS_TIMEOUT": "2"}
    worker = rq_harness.start_worker("GuardedWorker", env=env)
    job = rq_harness.enqueue("long_job", rq_harness.notes, 4.0)
    _, horse = _first_start(rq_harness)
    survivor = rq_harness.start_worker("GuardedWorker", env=env)
    rq_harness.wait_present(worker, "rq")
    rq_harness.wait_present(survivor, "rq")
    os.killpg(worker.pid, signal.SIGKILL)
    os.kill(horse, signal.SIGKILL)
    rq_harness.wait_status(job, ["finished"], 15)
    _assert_finished_once(rq_harness, job.id)
    assert len(rq_harness.notes_of("started")) == 2


@pytest.mark.parametrize("cls", ["GuardedWorker", "GuardedSimpleWorker"])
def test_a_frozen_worker_loses_its_job_and_when_it_wakes_its_attempt_is_fenced(
    rq_harness: RQHarness, cls: str
) -> None:
    frozen = rq_harness.start_worker(cls)
    job = rq_harness.enqueue("long_job", rq_harness.notes, 2.5)
    _, pid = _first_start(rq_harness)
    groups = {os.getpgid(frozen.pid), os.getpgid(pid)}
    for group in groups:
        os.killpg(group, signal.SIGSTOP)
    frozen_at = time.time()
    rq_harness.start_worker(cls)
    second = wait_until(lambda: rq_harness.notes_of("started")[1:], LEASE_TTL + 3, what="second attempt")
    # Its presence connection stays open: only the lease's expiry (renewed every 0.4 s, later under
    # load) frees the job.
    assert LEASE_TTL - 0.8 < float(second[0].split()[0]) - frozen_at < LEASE_TTL + 2
    time.sleep(0.5)  # let the new attempt run a little before the zombie wakes
    thaw(groups)
    rq_harness.wait_status(job, ["finished"], 10)
    _assert_finished_once(rq_harness, job.id)
    completed_pid = int(rq_harness.notes_of("completed")[0].split()[1])
    assert completed_pid != pid  # the woken attempt never completed


@pytest.mark.parametrize("cls", ["GuardedWorker", "GuardedSimpleWorker"])
def test_a_lone_worker_frozen_past_its_job_s_lease_and_hard_limit_reruns_the_job_not_fails_it(
    rq_harness: RQHarness, cls: str
) -> None:
    # No other worker: nothing recovers the job while its worker is frozen. As it wakes, the job is
    # past its hard_timeout by the clock only: its lease lapsed first, a stall, as a sweeper elsewhere
    # would have judged it. It is run again, not failed as timed out.
    worker = rq_harness.start_worker(cls, env={"ZOMBIEGUARD_HARD_TIMEOUT": "4"})
    job = rq_harness.enqueue("works_in_steps", rq_harness.notes, 40)  # 2 s of work
    _, pid = _first_start(rq_harness)
    groups = {os.getpgid(worker.pid), os.getpgid(pid)}
    for group in groups:
        os.killpg(group, signal.SIGSTOP)
    time.sleep(6.5)  # past its lease (2 s), its hard_timeout (4 s) and RQ's own (backstop, 6 s)
    thaw(groups)
    rq_harness.wait_status(job, ["finished", "failed"], 20)
    assert job.get_status() == "finished", rq_harness.diagnosis(job.id)
    assert len(rq_harness.notes_of("started")) == 2
    assert len(rq_harness.notes_of("completed")) == 1


def test_a_poison_pill_is_recovered_max_stalls_times_then_dead_lettered_with_its_story(
    rq_harness: RQHarness,
) -> None:
    rq_harness.start_worker("GuardedWorker", env={"ZOMBIEGUARD_MAX_STALLS": "2"})
    job = rq_harness.enqueue("kills_its_process", rq_harness.notes)
    rq_harness.wait_status(job, ["failed"], 15)
    assert len(rq_harness.notes_of("started")) == 3
    assert "JobDeadLettered" in exc_string(job)
    store = LeaseStore(rq_harness.client, Settings(key_prefix=rq_harness.key_prefix))
    entry = DeadLetterStore(store).get(job.id)
    assert entry is not None
    assert entry.task == "tests.support.rq_jobs.kills_its_process"
    assert [a.attempt for a in entry.attempts] == [1, 2, 3]
    assert {a.outcome for a in entry.attempts} == {"stalled"}
    assert "kills_its_process" in entry.payload
    # The worker survived all three.
    nxt = rq_harness.enqueue("add", 1, 2)
    rq_harness.wait_status(nxt, ["finished"], 10)


def test_a_recovered_attempt_resumes_from_the_last_checkpoint(rq_harness: RQHarness) -> None:
    rq_harness.start_worker("GuardedWorker")
    job = rq_harness.enqueue("checkpointed", rq_harness.notes, 10, 5)
    rq_harness.wait_status(job, ["finished"], 15)
    items = [int(line.split()[1]) for line in rq_harness.notes_of("item")]
    assert items == list(range(10))  # 0-4 by the first attempt, 5-9 by the second, none twice
    assert job.return_value() == [5, 6, 7, 8, 9]


@pytest.mark.parametrize("cls", ["GuardedWorker", "GuardedSimpleWorker"])
def test_a_job_taken_from_its_queue_by_a_worker_that_died_before_starting_it_is_run_within_seconds(
    rq_harness: RQHarness, cls: str
) -> None:
    # What a worker killed (or frozen) right after RQ's BLMOVE leaves: the job in the queue's
    # intermediate list, never prepared. RQ alone fails it after a minute, at its next maintenance.
    job = rq_harness.enqueue("long_job", rq_harness.notes, 0.2)
    queue = rq_harness.queue
    assert rq_harness.client.lmove(queue.key, queue.intermediate_queue_key) == job.id.encode()
    taken_at = time.time()
    rq_harness.start_worker(cls)
    rq_harness.wait_status(job, ["finished"], 15)
    started = float(rq_harness.notes_of("started")[0].split()[0])
    assert started - taken_at < 9  # 5 s unstarted, and a sweep
    assert len(rq_harness.notes_of("started")) == 1
    assert rq_harness.client.llen(queue.intermediate_queue_key) == 0
