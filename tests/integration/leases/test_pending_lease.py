"""Leases written behind (Celery's ``lease_delay``): a first delivery starts before its lease exists;
the lease is written once it has run for half its delay, or never when it ends sooner."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.leases import expire, job, start
from tests.support.waiting import wait_until
from zombieguard import LeaseLost, Policy
from zombieguard.errors import ConfigurationError
from zombieguard.leases import AcquireStatus, LeaseStore, Outcome, text
from zombieguard.worker.attempt import NO_HOOKS, Attempt, AttemptHooks
from zombieguard.worker.heartbeat import Heartbeat

POLICY = Policy(lease_ttl=5, lease_delay=0.2)


def pending(
    store: LeaseStore, job_id: str, policy: Policy = POLICY, hooks: AttemptHooks = NO_HOOKS
) -> Attempt:
    return Attempt(store, job(job_id), "w1", policy, None, hooks=hooks)


def test_a_job_that_ends_within_half_its_lease_delay_writes_no_lease_only_its_queues_last_success(
    store: LeaseStore,
) -> None:
    heartbeat = Heartbeat(store, "test", "w1", interval=1.0, presence=False)
    heartbeat.start()
    try:
        attempt = pending(store, "quick")
        heartbeat.defer_acquire(attempt)
        assert attempt.finish_unleased()
        heartbeat.completed_unleased("default")
        time.sleep(0.3)  # past the delay: nothing is written for an attempt that ended
        assert store.record("quick") is None
        assert not store.client.exists(store.fence_key)  # no token was ever drawn
    finally:
        heartbeat.stop()
    assert text(store.client.hget(store.completed_key, "default"))
    assert text(store.client.hget(store.queues_key, "default")) == "test"


def test_a_job_still_running_at_half_its_lease_delay_holds_its_lease_within_the_delay(
    store: LeaseStore,
) -> None:
    heartbeat = Heartbeat(store, "test", "w1", interval=1.0, presence=False)
    acquired: list[float] = []
    heartbeat.start()
    try:
        hooks = AttemptHooks(acquired=lambda a: acquired.append(time.monotonic() - a.started_monotonic))
        attempt = pending(store, "long", hooks=hooks)
        heartbeat.defer_acquire(attempt)  # wakes the idle thread
        wait_until(lambda: acquired, 2, what="lease written")
        record = store.record("long")
        assert record is not None
        assert record.state == "running"
        assert record.token == attempt.token > 0
        assert 0.1 <= acquired[0] < 0.2 + 0.3  # within the delay, and a loaded machine's thread wake-up
        assert not attempt.pending
        assert not attempt.finish_unleased()  # written: its end is a release now
    finally:
        heartbeat.stop()


def test_a_pending_lease_refused_because_another_attempt_holds_the_job_marks_this_one_lost(
    store: LeaseStore,
) -> None:
    holder = start(store, "dup", POLICY)
    refused: list[Attempt] = []
    attempt = pending(store, "dup", hooks=AttemptHooks(refused=refused.append))
    attempt.acquire_now()
    assert refused == [attempt]
    assert attempt.lost is not None
    with pytest.raises(LeaseLost):
        attempt.beat("1/2")
    record = store.record("dup")
    assert record is not None
    assert record.token == holder.token


def test_a_checkpoint_or_a_failure_writes_a_pending_lease_first(store: LeaseStore) -> None:
    attempt = pending(store, "ckpt")
    attempt.save_checkpoint('{"done": 3}')
    record = store.record("ckpt")
    assert record is not None
    assert record.token == attempt.token > 0
    assert store.client.get(store.checkpoint_key("ckpt")) == b'{"done": 3}'
    failing = pending(store, "fails")
    failing.release(Outcome.FAILED, "boom")
    record = store.record("fails")
    assert record is not None
    assert record.state == "done"
    assert record.history[-1].outcome == "failed"


def test_lease_delay_must_be_shorter_than_lease_ttl() -> None:
    with pytest.raises(ConfigurationError, match="lease_delay=5 is invalid"):
        Policy(lease_ttl=5, lease_delay=5)
    assert Policy(lease_delay=None).lease_delay is None


class _ReplyLostOnce(LeaseStore):
    """The first acquire reaches Redis but its reply is lost (a connection dropped after the write)."""

    lost = False

    def acquire(self, *args: Any, **kwargs: Any) -> Any:
        acquired = super().acquire(*args, **kwargs)
        if not self.lost:
            self.lost = True
            raise redis.ConnectionError("connection lost while reading the reply")
        return acquired


def test_a_pending_lease_whose_first_reply_was_lost_runs_on_unguarded_instead_of_stopping_itself(
    store: LeaseStore,
) -> None:
    flaky = _ReplyLostOnce(store.client, store.settings)
    refused: list[Attempt] = []
    attempt = Attempt(
        flaky, job("lost-reply"), "w1", POLICY, None, hooks=AttemptHooks(refused=refused.append)
    )
    with pytest.raises(redis.ConnectionError):
        attempt.acquire_now()
    assert attempt.pending  # the heartbeat tries again
    attempt.acquire_now()  # finds the lease its first try wrote: possibly its own
    assert attempt.lost is None
    assert refused == []
    assert attempt.finish_unleased()  # nothing of it is recorded
    attempt.release(Outcome.COMPLETED)  # a no-op for an unguarded attempt


def _voluntary_switches(native_id: int) -> int:
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("voluntary_ctxt")))


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="counts the thread's wake-ups in /proc")
def test_jobs_coming_one_after_the_other_make_the_lease_thread_look_about_once_per_lease_delay(
    store: LeaseStore,
) -> None:
    # Waking a thread for every job costs the job more than its own bookkeeping: while jobs keep
    # coming, the thread looks about once per lease_delay, whatever their number, never per job.
    policy = Policy(lease_ttl=5, lease_delay=0.05)
    heartbeat = Heartbeat(store, "test", "w1", interval=5.0, presence=False)
    heartbeat.start()
    try:
        thread = heartbeat._thread
        assert thread is not None
        assert thread.native_id is not None
        heartbeat.defer_acquire(pending(store, "first", policy))  # the idle thread is woken once
        time.sleep(0.1)
        before, started = _voluntary_switches(thread.native_id), time.monotonic()
        for index in range(200):
            attempt = pending(store, f"short-{index}", policy)
            heartbeat.defer_acquire(attempt)
            time.sleep(0.004)
            assert attempt.finish_unleased()
        looks = _voluntary_switches(thread.native_id) - before
        elapsed = time.monotonic() - started
    finally:
        heartbeat.stop()
    # About one look per lease_delay (a look per half delay, as before, made twice as many).
    assert looks <= 1.5 * elapsed / 0.05 + 2, f"{looks} wake-ups in {elapsed:.2f} s for 200 jobs"


def test_a_lease_written_for_an_execution_under_its_tag_is_taken_over_by_it_with_the_same_token(
    store: LeaseStore,
) -> None:
    # Another process of the worker wrote it (the task's own could not run): the task's own acquire
    # takes it over instead of being refused as a duplicate, and renews it.
    written = store.acquire(job("j1"), "w1", POLICY, 1, tag="a1.2", on_behalf=True)
    before = store.record("j1")
    attempt = pending(store, "j1")
    attempt.tag = "a1.2"
    time.sleep(0.05)
    attempt.acquire_now()
    assert (attempt.lost, attempt.token, attempt.number) == (None, written.token, 1)
    after = store.record("j1")
    assert before is not None
    assert after is not None
    assert after.expires > before.expires  # renewed as it was taken over
    # Another execution of the same task (a duplicate copy, even on the same worker) is refused.
    for worker, tag in (("w1", "a1.4"), ("w1", "b7.2"), ("w1", ""), ("w2", "a1.2")):
        assert store.acquire(job("j1"), worker, POLICY, 1, tag=tag).status is AcquireStatus.STALE
        assert store.acquire(job("j1"), worker, POLICY, tag=tag).status is AcquireStatus.BUSY


def test_an_expired_lease_written_for_an_execution_is_not_taken_over_it_is_a_sweeper_s(
    store: LeaseStore,
) -> None:
    store.acquire(job("j1"), "w1", POLICY, 1, tag="a1.2", on_behalf=True)
    expire(store, "j1")
    attempt = pending(store, "j1")
    attempt.tag = "a1.2"
    attempt.acquire_now()
    assert attempt.lost is not None  # stopped; the sweeper recovers the task


def test_a_lease_written_for_an_execution_is_released_for_it_only_when_it_did_not_pass_to_it(
    store: LeaseStore,
) -> None:
    # Not taken over: its task ended before its own process looked; the writer releases it, even
    # when it had to acquire it twice (a lost reply).
    token = store.acquire(job("j1"), "w1", POLICY, 1, tag="a1.2", on_behalf=True).token
    assert store.acquire(job("j1"), "w1", POLICY, 1, tag="a1.2", on_behalf=True).token == token
    assert store.release(job("j1"), token, Outcome.COMPLETED, unless_adopted=True) == "ok"
    assert store.record("j1") is None
    # Taken over: the task's own process records its end; the writer's release is refused.
    token = store.acquire(job("j2"), "w1", POLICY, 1, tag="a1.4", on_behalf=True).token
    assert store.acquire(job("j2"), "w1", POLICY, 1, tag="a1.4").token == token
    assert store.release(job("j2"), token, Outcome.COMPLETED, unless_adopted=True) == "adopted"
    assert store.release(job("j2"), token, Outcome.FAILED, "its own end") == "ok"
    record = store.record("j2")
    assert record is not None
    assert (record.state, record.reason) == ("done", "its own end")
    # The other way: the writer finds the lease the task's own process wrote (its token not yet in
    # the slot); that lease is the task's, whose end the writer must not record.
    token = store.acquire(job("j3"), "w1", POLICY, 1, tag="a1.6").token
    assert store.acquire(job("j3"), "w1", POLICY, 1, tag="a1.6", on_behalf=True).token == token
    assert store.release(job("j3"), token, Outcome.COMPLETED, unless_adopted=True) == "adopted"
