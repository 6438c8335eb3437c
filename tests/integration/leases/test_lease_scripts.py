"""Every Lua transition against real Redis: acquire, renew, beat/checkpoint, release, fencing."""

from __future__ import annotations

import time

import pytest
import redis

from tests.support.leases import RecordingAdapter, expire, job, start
from zombieguard import LeaseLost, Policy
from zombieguard.leases import AcquireStatus, DeferredRelease, LeaseStore, Outcome, text
from zombieguard.recovery.sweeper import Sweeper
from zombieguard.worker.attempt import Attempt

POLICY = Policy(lease_ttl=10, hard_timeout=60, progress_timeout=30)


def test_acquire_writes_a_running_lease_timed_by_the_server_clock(store: LeaseStore) -> None:
    before = store.server_time()
    attempt = start(store, "j1", POLICY)
    record = store.record("j1")
    assert record is not None
    assert (record.state, record.attempt, record.token, record.worker) == ("running", 1, attempt.token, "w1")
    assert before <= record.started <= store.server_time()
    assert record.expires == pytest.approx(record.started + 10, abs=0.01)
    assert record.hard_deadline == pytest.approx(record.started + 60, abs=0.01)
    score = store.client.zscore(store.due_key("test"), "j1")
    assert score == pytest.approx(record.expires, abs=0.01)


def test_every_attempt_gets_a_new_larger_fencing_token(store: LeaseStore) -> None:
    tokens = [start(store, f"j{i}", POLICY).token for i in range(5)]
    assert tokens == sorted(set(tokens))


def test_a_duplicate_delivery_of_a_running_job_is_refused_as_busy(store: LeaseStore) -> None:
    start(store, "j1", POLICY, worker="w1")
    acquired = store.acquire(job("j1"), "w2", POLICY)
    assert acquired.status is AcquireStatus.BUSY
    assert acquired.holder == "w1"


def test_a_delivery_for_a_superseded_attempt_is_refused_as_stale(store: LeaseStore) -> None:
    adapter = RecordingAdapter()
    start(store, "j1", POLICY)
    expire(store, "j1")
    Sweeper(store, {"test": adapter}).sweep_once()
    assert adapter.requeued == ["j1"]
    # The original message comes back late (visibility timeout): it claims to be attempt 1.
    assert store.acquire(job("j1"), "w2", POLICY, delivery_attempt=1).status is AcquireStatus.STALE
    second = store.acquire(job("j1"), "w2", POLICY, delivery_attempt=2)
    assert (second.status, second.attempt, second.stalls) == (AcquireStatus.ACQUIRED, 2, 1)


def test_renew_extends_every_lease_of_a_worker_in_one_call(store: LeaseStore) -> None:
    attempts = [start(store, f"j{i}", Policy(lease_ttl=2)) for i in range(3)]
    first = store.record("j0")
    assert first is not None
    time.sleep(0.05)
    codes = store.renew("test", "w1", 6.0, [(a.job.job_id, a.token) for a in attempts])
    assert codes == ["ok", "ok", "ok"]
    renewed = store.record("j0")
    assert renewed is not None
    assert renewed.expires > first.expires
    assert store.workers()["w1"][0] == pytest.approx(store.server_time() + 6, abs=0.5)


def test_renew_reports_lost_missing_and_corrupt_leases_without_touching_them(store: LeaseStore) -> None:
    ok = start(store, "ok", POLICY)
    stale = start(store, "stale", POLICY)
    store.client.set(store.lease_key("corrupt"), "not a hash")
    codes = store.renew(
        "test", "w1", 30.0, [("ok", ok.token), ("stale", stale.token - 1), ("gone", 5), ("corrupt", 7)]
    )
    assert codes == ["ok", "lost", "missing", "corrupt"]


def test_a_stale_token_is_refused_for_beat_checkpoint_and_release(store: LeaseStore) -> None:
    old = start(store, "j1", POLICY)
    expire(store, "j1")
    Sweeper(store, {"test": RecordingAdapter()}).sweep_once()
    new = Attempt(old.store, old.job, "w2", POLICY, store.acquire(old.job, "w2", POLICY))
    new.save_checkpoint('"new"')
    with pytest.raises(LeaseLost):
        store.progress(old.job, old.token, progress="5")
    with pytest.raises(LeaseLost):
        old.save_checkpoint('"old"')
    with pytest.raises(LeaseLost):
        old.release(Outcome.COMPLETED)
    record = store.record("j1")
    assert record is not None
    assert (record.state, record.token, record.worker) == ("running", new.token, "w2")
    assert store.client.get(store.checkpoint_key("j1")) == b'"new"'


def test_beat_records_progress_and_pushes_the_progress_deadline(store: LeaseStore) -> None:
    attempt = start(store, "j1", POLICY)
    before = store.record("j1")
    assert before is not None
    time.sleep(0.05)
    attempt.beat(progress="3/10", message="copying")
    after = store.record("j1")
    assert after is not None
    assert (after.progress, after.message) == ("3/10", "copying")
    assert after.last_progress is not None
    assert before.last_progress is not None
    assert after.last_progress > before.last_progress
    assert after.progress_deadline == pytest.approx(after.last_progress + 30, abs=0.01)


def test_a_completed_first_attempt_leaves_nothing_behind(store: LeaseStore) -> None:
    attempt = start(store, "j1", POLICY)
    attempt.save_checkpoint("[1]")
    attempt.release(Outcome.COMPLETED)
    assert store.client.exists(store.lease_key("j1"), store.checkpoint_key("j1")) == 0
    assert store.client.zscore(store.due_key("test"), "j1") is None
    assert store.acquire(job("j1"), "w1", POLICY).attempt == 1


def test_a_failed_attempt_leaves_a_tombstone_and_keeps_its_checkpoint_for_the_retry(
    store: LeaseStore, client: redis.Redis
) -> None:
    attempt = start(store, "j1", POLICY)
    attempt.save_checkpoint("41")
    attempt.release(Outcome.FAILED, reason="ValueError", stack="File x, line 1")
    record = store.record("j1")
    assert record is not None
    assert (record.state, record.reason) == ("done", "ValueError")
    assert [(h.attempt, h.outcome, h.stack) for h in record.history] == [(1, "failed", "File x, line 1")]
    ttl = client.pttl(store.lease_key("j1"))
    assert 0 < ttl <= store.settings.tombstone_ttl * 1000
    retry = store.acquire(job("j1"), "w1", POLICY)
    assert (retry.status, retry.attempt, retry.checkpoint) == (AcquireStatus.ACQUIRED, 2, "41")
    assert client.ttl(store.lease_key("j1")) == -1


def test_a_worker_with_its_clock_minutes_off_changes_nothing(
    store: LeaseStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_time = time.time
    for skew in (-600.0, 600.0):
        monkeypatch.setattr(time, "time", lambda skew=skew: real_time() + skew)
        attempt = start(store, f"skew{skew}", Policy(lease_ttl=5))
        record = store.record(attempt.job.job_id)
        assert record is not None
        server_now = store.server_time()
        assert abs(record.started - server_now) < 1
        assert record.expires - server_now == pytest.approx(5, abs=1)
        # Not expired for a sweeper, whatever this process's clock says.
        assert Sweeper(store, {"test": RecordingAdapter()}).sweep_once().recovered == []


def test_a_lease_lost_by_redis_is_reestablished_with_its_token_and_the_counter_moves_past_it(
    store: LeaseStore, client: redis.Redis
) -> None:
    attempt = start(store, "j1", POLICY)
    client.delete(store.lease_key("j1"), store.fence_key)  # Redis restarted without persistence
    attempt.beat(progress="1")  # the beat finds the lease missing and puts it back
    record = store.record("j1")
    assert record is not None
    assert (record.state, record.token, record.attempt) == ("running", attempt.token, 1)
    assert record.started == pytest.approx(attempt.started_at, abs=0.001)
    assert start(store, "j2", POLICY).token > attempt.token


def test_acquire_replaces_a_corrupt_record_and_the_job_runs(store: LeaseStore, client: redis.Redis) -> None:
    client.set(store.lease_key("j1"), "garbage")
    assert start(store, "j1", POLICY).number == 1
    client.hset(store.lease_key("j2"), mapping={"state": "done", "attempt": "x"})
    assert start(store, "j2", POLICY).number == 1


def test_a_pipelined_acquire_carries_deferred_releases_in_the_same_round_trip(store: LeaseStore) -> None:
    first = start(store, "j1", POLICY)
    pending = store.send_acquire(
        job("j2"), "w1", POLICY, [DeferredRelease(first.job, first.token, Outcome.COMPLETED)]
    )
    acquired = pending.result()
    assert (acquired.status, acquired.attempt) == (AcquireStatus.ACQUIRED, 1)
    assert store.record("j1") is None  # released: a completed first attempt leaves nothing
    assert store.record("j2") is not None
    store.client.script_flush()  # as after a Redis restart: the scripts are loaded again
    assert store.send_acquire(job("j3"), "w1", POLICY).result().status is AcquireStatus.ACQUIRED


def test_an_attempt_is_safe_to_finish_only_while_its_confirmation_and_deadlines_hold(
    store: LeaseStore,
) -> None:
    attempt = start(store, "j1", Policy(lease_ttl=10, hard_timeout=60))
    now = attempt.started_monotonic
    assert attempt.safe_to_finish(now + 1)
    assert not attempt.safe_to_finish(now + 9.5)  # within the margin of lease_ttl
    attempt.confirm(now + 8)
    assert attempt.safe_to_finish(now + 9.5)
    short = start(store, "j2", Policy(lease_ttl=10, hard_timeout=1, overdue_grace=0.5))
    assert not short.safe_to_finish(short.started_monotonic + 1.5)  # a sweeper may claim it as timed out


def test_abandon_makes_the_lease_due_now_with_its_reason_and_stack_and_is_fenced(store: LeaseStore) -> None:
    adapter = RecordingAdapter()
    old = start(store, "j1", Policy(lease_ttl=60, hard_timeout=600))
    with pytest.raises(LeaseLost):
        store.abandon(old.job, old.token - 1, Outcome.STALLED)
    store.abandon(old.job, old.token, Outcome.TIMED_OUT, "File 'x.py', line 3, in crunch")
    report = Sweeper(store, {"test": adapter}).sweep_once()
    assert report.failed == ["j1"]  # timed out: failed, not recovered, though the lease had 60 s left
    assert adapter.failed[0][:2] == ("j1", "timed_out")
    record = store.record("j1")
    assert record is not None
    assert record.history[-1].stack == "File 'x.py', line 3, in crunch"


def test_a_requeued_attempt_lets_the_same_delivery_start_again_and_keeps_its_story(store: LeaseStore) -> None:
    policy = Policy(lease_ttl=5)
    first = store.acquire(job("j1"), "w1", policy, delivery_attempt=1)
    store.release(job("j1"), first.token, Outcome.REQUEUED, "rejected: not now")
    again = store.acquire(job("j1"), "w2", policy, delivery_attempt=1)
    assert (again.status, again.attempt) == (AcquireStatus.ACQUIRED, 1)
    record = store.record("j1")
    assert record is not None
    assert [(h.attempt, h.outcome) for h in record.history] == [(1, "requeued")]
    store.release(job("j1"), again.token, Outcome.FAILED, "boom")
    assert store.acquire(job("j1"), "w3", policy, delivery_attempt=1).status is AcquireStatus.STALE


@pytest.mark.parametrize("write", ["renew", "beat"])
def test_a_lease_that_lapsed_before_it_was_overdue_is_not_renewed_once_overdue_but_given_up_as_a_stall(
    store: LeaseStore, write: str
) -> None:
    # Its worker froze past the lease, then past the hard limit: a sweeper takes it for a stall, and
    # so must the worker that wakes, whoever looks first; a lease that only lapsed is renewed.
    for job_id, overdue in (("lapsed", False), ("lapsed-then-overdue", True)):
        hard_timeout = 0.2 if overdue else 30.0
        attempt = start(store, job_id, Policy(lease_ttl=5, hard_timeout=hard_timeout, overdue_grace=0.1))
        expire(store, job_id)
        if overdue:
            time.sleep(0.4)  # the hard deadline and its grace pass, the lease still lapsed
        if write == "renew":
            [code] = store.renew("test", "w1", 10, [(job_id, attempt.token)])
            assert code == ("lost" if overdue else "ok")
        elif overdue:
            with pytest.raises(LeaseLost, match=Outcome.STALLED):
                store.progress(job(job_id), attempt.token)
        else:
            assert store.progress(job(job_id), attempt.token) == "ok"
    sweep = store.claim("test", "sweeper")
    assert [(c.record.job_id, c.reason) for c in sweep.claimed] == [("lapsed-then-overdue", Outcome.STALLED)]


@pytest.mark.parametrize("given_up", ["by its worker", "lapsed then overdue"])
def test_an_attempt_given_up_as_a_stall_is_not_renewed_and_may_end_but_not_fail(
    store: LeaseStore, given_up: str
) -> None:
    # Its worker woke from a freeze to a limit that passed by the clock only (RQ's alarm, Celery's
    # backstop): the sweeper recovers the job, so neither a renewal, a beat nor that failure may
    # turn it into a timeout first.
    for job_id, outcome in (
        ("fails", Outcome.TIMED_OUT),
        ("raises", Outcome.FAILED),
        ("completes", Outcome.COMPLETED),
        ("is stopped", Outcome.STOPPED),  # asked for: an operator's stop command
    ):
        attempt = start(store, job_id, Policy(lease_ttl=5, hard_timeout=0.2, overdue_grace=0.1))
        if given_up == "by its worker":
            store.abandon(attempt.job, attempt.token, Outcome.STALLED)
            store.abandon(attempt.job, attempt.token, Outcome.TIMED_OUT)  # its watchdog process, later
        else:
            expire(store, job_id)
        time.sleep(0.4)  # the hard deadline and its grace pass
        assert store.renew("test", "w1", 10, [(job_id, attempt.token)]) == ["lost"]
        with pytest.raises(LeaseLost, match="given up as stalled"):
            store.progress(attempt.job, attempt.token)
        if outcome in (Outcome.COMPLETED, Outcome.STOPPED):
            store.release(attempt.job, attempt.token, outcome)
        else:
            with pytest.raises(LeaseLost, match=Outcome.STALLED):
                store.release(attempt.job, attempt.token, outcome, "JobTimeoutException")
    sweep = store.claim("test", "sweeper")
    assert sorted((c.record.job_id, c.reason) for c in sweep.claimed) == [
        ("fails", Outcome.STALLED),
        ("raises", Outcome.STALLED),
    ]


def test_an_attempt_whose_lease_was_given_up_learns_it_no_longer_holds_the_job_when_it_checks(
    store: LeaseStore,
) -> None:
    # The prefork main process saw a renewal refused and signals the pool process: the attempt asks
    # Redis, and a lease given up for a sweeper to act on is no longer its own.
    attempt = start(store, "given-up", POLICY)
    attempt.verify()  # its own running lease: nothing happens
    record = store.record("given-up")
    assert record is not None
    assert record.held_by(attempt.token)
    assert not record.abandoned
    store.abandon(attempt.job, attempt.token, Outcome.STALLED)
    record = store.record("given-up")
    assert record is not None
    assert record.abandoned == "stalled"
    assert not record.held_by(attempt.token)
    with pytest.raises(LeaseLost, match="given up as stalled"):
        attempt.verify()


def _given_up(store: LeaseStore, job_id: str, worker: str) -> tuple[int, dict[str, str]]:
    """An attempt acquired and given up as stalled; its token and its lease as written."""
    attempt = start(store, job_id, Policy(lease_ttl=30), worker=worker)
    store.abandon(attempt.job, attempt.token, Outcome.STALLED)
    raw = store.client.hgetall(store.lease_key(job_id))
    return attempt.token, {text(k): text(v) for k, v in raw.items()}


def test_a_lease_carried_from_a_former_primary_is_written_where_it_is_missing(store: LeaseStore) -> None:
    token, lease = _given_up(store, "j1", "w1")
    store.client.delete(store.lease_key("j1"), store.due_key("test"), store.fence_key)
    assert store.carry(job("j1"), token, lease) == "ok"
    assert {text(k): text(v) for k, v in store.client.hgetall(store.lease_key("j1")).items()} == lease
    assert store.client.zscore(store.due_key("test"), "j1") == float(lease["expires"])
    assert int(store.client.get(store.fence_key) or 0) == token  # never handed out again


def test_a_carried_lease_never_replaces_another_attempt_under_the_same_token(store: LeaseStore) -> None:
    token, lease = _given_up(store, "j1", "w1")
    # The new primary's fencing counter was behind: another worker's attempt got the same token.
    store.client.hset(store.lease_key("j1"), "worker", "w2")
    store.client.hdel(store.lease_key("j1"), "abandoned")
    with pytest.raises(LeaseLost):
        store.carry(job("j1"), token, lease)
    assert text(store.client.hget(store.lease_key("j1"), "worker")) == "w2"


def _acquire_lost_under_the_queued_record(store: LeaseStore, client: redis.Redis) -> Attempt:
    """Attempt 1 stalls and a sweeper requeues the job; attempt 2's acquire is then lost (a primary
    failed over before any replica had it): Redis holds the queued record again."""
    first = start(store, "j1", POLICY)
    store.abandon(first.job, first.token, Outcome.STALLED)
    assert Sweeper(store, {"test": RecordingAdapter()}).sweep_once().recovered == ["j1"]
    key = store.lease_key("j1")
    queued = client.dump(key)
    assert queued is not None
    second = start(store, "j1", POLICY, worker="w2")
    client.restore(key, 0, queued, replace=True)
    return second


@pytest.mark.parametrize("write", ["renew", "beat", "release", "abandon"])
def test_an_attempt_whose_acquire_was_lost_under_the_queued_record_writes_its_lease_again_keeping_its_story(
    store: LeaseStore, client: redis.Redis, write: str
) -> None:
    second = _acquire_lost_under_the_queued_record(store, client)
    if write == "renew":
        assert store.renew("test", "w2", 30, [("j1", second.token)]) == ["missing"]
        assert second.reestablish()
    elif write == "beat":
        second.beat(progress="1")  # finds its lease missing and puts it back
    elif write == "release":
        second.release(Outcome.COMPLETED)
    else:
        assert store.abandon(second.job, second.token, Outcome.STALLED) == "missing"
        assert second.reestablish()
    record = store.record("j1")
    assert record is not None
    assert record.attempt == 2
    if write == "release":
        assert record.state == "done"
        assert [(h.attempt, h.outcome) for h in record.history] == [(1, "stalled"), (2, "completed")]
    else:
        assert [(h.attempt, h.outcome) for h in record.history] == [(1, "stalled")]
        assert (record.state, record.token, record.worker) == ("running", second.token, "w2")
        # A later delivery of the requeued job is refused: the attempt holds it again.
        assert store.acquire(job("j1"), "w3", POLICY).status is AcquireStatus.BUSY


def test_a_queued_record_newer_than_an_attempt_is_not_overwritten(
    store: LeaseStore, client: redis.Redis
) -> None:
    old = start(store, "j1", POLICY)
    store.abandon(old.job, old.token, Outcome.STALLED)
    Sweeper(store, {"test": RecordingAdapter()}).sweep_once()  # requeued under a newer claim token
    assert store.renew("test", "w1", 30, [("j1", old.token)]) == ["lost"]
    assert not old.reestablish()
    record = store.record("j1")
    assert record is not None
    assert record.state == "queued"
