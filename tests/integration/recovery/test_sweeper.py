"""The sweeper: recovery, dead-lettering, overdue jobs, corrupt records, and many sweepers at once."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
import redis

from tests.support.leases import RecordingAdapter, expire, job, start
from zombieguard import LeaseLost, Policy
from zombieguard.leases import AcquireStatus, LeaseStore, Outcome
from zombieguard.policy import Settings
from zombieguard.recovery.deadletter import DeadLetterFilter, DeadLetterStore
from zombieguard.recovery.sweeper import Sweeper, SweepReport
from zombieguard.testing import capture_events


def test_a_stalled_job_is_requeued_once_as_the_next_attempt_with_events(store: LeaseStore) -> None:
    adapter = RecordingAdapter()
    attempt = start(store, "j1", Policy(lease_ttl=5, max_stalls=2))
    attempt.save_checkpoint('{"row": 7}')
    expire(store, "j1")
    with capture_events() as events:
        report = Sweeper(store, {"test": adapter}, sender="rq").sweep_once()
    assert report.recovered == ["j1"]
    assert adapter.requeued == ["j1"]
    assert [e.kind for e in events] == ["stalled", "recovered"]
    assert events.of_jobs()[1].detail("next_attempt") == 2
    record = store.record("j1")
    assert record is not None
    assert (record.state, record.stalls) == ("queued", 1)
    assert [(h.attempt, h.outcome) for h in record.history] == [(1, "stalled")]
    assert Sweeper(store, {"test": adapter}).sweep_once().recovered == []
    nxt = store.acquire(job("j1"), "w2", Policy(lease_ttl=5, max_stalls=2))
    assert (nxt.attempt, nxt.stalls, nxt.checkpoint) == (2, 1, '{"row": 7}')


def test_a_job_that_keeps_stalling_is_recovered_max_stalls_times_then_dead_lettered_with_its_story(
    store: LeaseStore,
) -> None:
    adapter = RecordingAdapter()
    policy = Policy(lease_ttl=5, max_stalls=2)
    sweeper = Sweeper(store, {"test": adapter})
    with capture_events() as events:
        for n in range(1, 4):
            attempt = acquire_number(store, "poison", policy, f"w{n}")
            assert attempt == n
            expire(store, "poison")
            sweeper.sweep_once()
    assert adapter.requeued == ["poison", "poison"]
    assert adapter.failed[0][:2] == ("poison", "dead_lettered")
    assert [e.kind for e in events].count("dead_lettered") == 1
    entry = DeadLetterStore(store).get("poison")
    assert entry is not None
    assert entry.reason == "stalled 3 times (max_stalls=2): a poison pill"
    assert [(a.attempt, a.worker, a.outcome) for a in entry.attempts] == [
        (1, "w1", "stalled"),
        (2, "w2", "stalled"),
        (3, "w3", "stalled"),
    ]
    assert entry.payload == '{"args":[1]}'
    # A late redelivery of any of its attempts does not run it again.
    assert store.acquire(job("poison"), "w9", policy, delivery_attempt=3).status is AcquireStatus.STALE


def acquire_number(store: LeaseStore, job_id: str, policy: Policy, worker: str) -> int:
    acquired = store.acquire(job(job_id), worker, policy)
    assert acquired.status is AcquireStatus.ACQUIRED
    return acquired.attempt


def test_with_dead_letter_off_an_exhausted_job_is_failed_not_queued(store: LeaseStore) -> None:
    adapter = RecordingAdapter()
    start(store, "j1", Policy(lease_ttl=5, max_stalls=0, dead_letter=False))
    expire(store, "j1")
    report = Sweeper(store, {"test": adapter}).sweep_once()
    assert report.failed == ["j1"]
    assert adapter.failed[0][:2] == ("j1", "stalled")
    assert DeadLetterStore(store).get("j1") is None


def test_a_job_still_renewed_past_its_hard_deadline_is_failed_as_timed_out_not_recovered(
    store: LeaseStore,
) -> None:
    adapter = RecordingAdapter()
    attempt = start(store, "j1", Policy(lease_ttl=30, hard_timeout=0.2, overdue_grace=0.1))
    sweeper = Sweeper(store, {"test": adapter})
    assert sweeper.sweep_once().failed == []
    with capture_events() as events:
        report = _sweep_until(sweeper, lambda r: r.failed)
    assert report.failed == ["j1"]
    assert adapter.requeued == []
    assert adapter.stopped == ["j1"]
    assert adapter.failed[0][:2] == ("j1", "timed_out")
    assert "hard_timeout of 0.2 s" in adapter.failed[0][2]
    assert [e.kind for e in events] == ["timed_out"]
    # The zombie's own completion is refused once the sweeper has decided.
    with pytest.raises(LeaseLost, match="lease is done"):
        attempt.release(Outcome.COMPLETED)


@pytest.mark.parametrize("expired", ["before", "after"])
def test_a_lease_that_expired_before_its_hard_deadline_is_a_stall_even_if_swept_after_both(
    store: LeaseStore, expired: str
) -> None:
    # Its worker froze (or died) before the job was overdue: the job did not run too long, its worker
    # stopped. Only a lease still renewed past its hard deadline (plus grace) is a timeout.
    adapter = RecordingAdapter()
    start(store, "j1", Policy(lease_ttl=30, hard_timeout=100, overdue_grace=1))
    key = store.lease_key("j1")
    now = store.server_time()
    hard_deadline = now - 10
    expires = hard_deadline + (-5 if expired == "before" else 5)
    store.client.hset(key, mapping={"hard_deadline": repr(hard_deadline), "expires": repr(expires)})
    store.client.zadd(store.due_key("test"), {"j1": expires})
    report = Sweeper(store, {"test": adapter}).sweep_once()
    if expired == "before":
        assert (report.recovered, adapter.failed) == (["j1"], [])
    else:
        assert report.failed == ["j1"]
        assert adapter.failed[0][:2] == ("j1", "timed_out")


def test_a_job_renewed_but_without_progress_past_progress_timeout_is_failed_as_hung(
    store: LeaseStore,
) -> None:
    adapter = RecordingAdapter()
    start(store, "j1", Policy(lease_ttl=30, progress_timeout=0.2, overdue_grace=0.1))
    with capture_events() as events:
        report = _sweep_until(Sweeper(store, {"test": adapter}), lambda r: r.failed)
    assert report.failed == ["j1"]
    assert adapter.failed[0][:2] == ("j1", "hung")
    assert [e.kind for e in events] == ["hung"]


def _sweep_until(
    sweeper: Sweeper, done: Callable[[SweepReport], object], timeout: float = 5.0
) -> SweepReport:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = sweeper.sweep_once()
        if done(report):
            return report
        time.sleep(0.05)
    raise AssertionError("sweeper never acted")


def test_corrupt_records_are_reported_and_skipped_and_the_good_one_is_recovered(
    store: LeaseStore, client: redis.Redis
) -> None:
    adapter = RecordingAdapter()
    start(store, "good", Policy(lease_ttl=5))
    expire(store, "good")
    due = store.due_key("test")
    client.zadd(due, {"wrong-type": 0, "vanished": 0, "bad-fields": 0, "bad-after-claim": 0})
    client.set(store.lease_key("wrong-type"), "x")
    client.hset(store.lease_key("bad-fields"), mapping={"state": "running", "expires": "soon"})
    client.hset(
        store.lease_key("bad-after-claim"),
        mapping={"state": "running", "expires": "1", "overdue_grace": "1", "job": "bad-after-claim"},
    )
    report = Sweeper(store, {"test": adapter}).sweep_once()
    assert report.recovered == ["good"]
    assert sorted(job_id for job_id, _ in report.corrupt) == [
        "bad-after-claim",
        "bad-fields",
        "vanished",
        "wrong-type",
    ]
    assert adapter.requeued == ["good"]
    assert client.zcard(due) == 0
    assert client.type(store.lease_key("wrong-type")) == b"string"  # left for a person to look at
    assert Sweeper(store, {"test": adapter}).sweep_once().corrupt == []


def test_when_the_adapter_fails_the_claim_expires_and_a_later_sweep_recovers_the_job(
    client: redis.Redis, key_prefix: str
) -> None:
    store = LeaseStore(client, Settings(key_prefix=key_prefix, claim_ttl=0.3))
    adapter = RecordingAdapter(fail_requeue=True)
    start(store, "j1", Policy(lease_ttl=5))
    expire(store, "j1")
    sweeper = Sweeper(store, {"test": adapter})
    assert sweeper.sweep_once().errors == ["j1"]
    adapter.fail_requeue = False
    report = _sweep_until(sweeper, lambda r: r.recovered)
    assert report.recovered == ["j1"]
    record = store.record("j1")
    assert record is not None
    assert record.stalls == 1  # counted once, though claimed twice
    for key in client.scan_iter(match="{" + key_prefix + "}*"):
        client.delete(key)


@pytest.mark.parametrize("fault", ["stall", "hard_timeout"])
def test_a_job_whose_sweeper_died_after_failing_it_in_the_framework_gets_that_same_end_from_the_next(
    client: redis.Redis, key_prefix: str, fault: str
) -> None:
    store = LeaseStore(client, Settings(key_prefix=key_prefix, claim_ttl=0.3))
    adapter = RecordingAdapter(die_after_fail=True)
    if fault == "stall":
        start(store, "j1", Policy(lease_ttl=5, max_stalls=0))  # its first stall dead-letters it
        expire(store, "j1")
    else:
        start(store, "j1", Policy(lease_ttl=5, hard_timeout=0.1, overdue_grace=0.1))
        time.sleep(0.3)
    assert Sweeper(store, {"test": adapter}, name="dies").sweep_once().errors == ["j1"]
    with capture_events() as events:
        report = _sweep_until(
            Sweeper(store, {"test": adapter}), lambda r: r.dead_lettered or r.failed or r.ended
        )
    record = store.record("j1")
    assert record is not None
    assert len(adapter.failed) == 1  # the framework recorded the failure once, for the first sweeper
    if fault == "stall":
        assert (report.dead_lettered, report.ended) == (["j1"], [])
        assert [e.kind for e in events] == ["stalled", "dead_lettered"]
        entry = DeadLetterStore(store).get("j1")
        assert entry is not None
        assert entry.reason == "stalled 1 times (max_stalls=0): a poison pill"
    else:
        assert (report.failed, report.ended) == (["j1"], [])
        assert [e.kind for e in events] == ["timed_out"]
    assert (record.state, record.verdict) == ("done", None)
    for key in client.scan_iter(match="{" + key_prefix + "}*"):
        client.delete(key)


def test_a_worker_that_stops_heartbeating_is_reported_once_as_a_zombie(store: LeaseStore) -> None:
    store.register_worker("w-dead", {"adapter": "test", "host": "h1"}, ttl=0.05)
    store.register_worker("w-alive", {"adapter": "test"}, ttl=30)
    store.register_worker("w-left", {"adapter": "test"}, ttl=0.05)
    store.deregister_worker("w-left")
    time.sleep(0.1)
    with capture_events() as events:
        report = Sweeper(store, {"test": RecordingAdapter()}).sweep_once()
        again = Sweeper(store, {"test": RecordingAdapter()}).sweep_once()
    assert report.dead_workers == ["w-dead"]
    assert again.dead_workers == []
    assert [(e.kind, getattr(e, "worker", "")) for e in events] == [("worker_zombie", "w-dead")]
    assert "w-alive" in store.workers()


@pytest.mark.parametrize("round_", range(5))
def test_sweepers_racing_over_the_same_expired_leases_recover_each_exactly_once(
    store: LeaseStore, redis_url: str, round_: int
) -> None:
    jobs = [f"r{round_}-{i}" for i in range(200)]
    for job_id in jobs:
        start(store, job_id, Policy(lease_ttl=5, max_stalls=5))
        expire(store, job_id)
    adapters = [RecordingAdapter() for _ in range(6)]
    barrier = threading.Barrier(len(adapters))

    def race(adapter: RecordingAdapter) -> None:
        # Each sweeper has its own connection, as separate processes would.
        own = LeaseStore(redis.Redis.from_url(redis_url), store.settings)
        sweeper = Sweeper(own, {"test": adapter}, name=f"s{id(adapter)}")
        barrier.wait()
        for _ in range(5):
            sweeper.sweep_once()

    threads = [threading.Thread(target=race, args=(a,)) for a in adapters]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    counts = Counter(job_id for a in adapters for job_id in a.requeued)
    assert set(counts) == set(jobs)
    assert set(counts.values()) == {1}
    assert sum(1 for a in adapters if a.requeued) > 1  # they really did share the work


def test_dead_letter_entries_can_be_filtered_requeued_with_a_fresh_budget_and_purged(
    store: LeaseStore,
) -> None:
    adapter = RecordingAdapter()
    policy = Policy(lease_ttl=5, max_stalls=0)
    for job_id, task in [("a", "billing.charge"), ("b", "billing.refund"), ("c", "reports.daily")]:
        acquired = store.acquire(job(job_id, task=task), "w1", policy)
        assert acquired.status is AcquireStatus.ACQUIRED
        store.progress(job(job_id, task=task), acquired.token, checkpoint=f'"{job_id}-ckpt"')
        expire(store, job_id)
    Sweeper(store, {"test": adapter}).sweep_once()
    dlq = DeadLetterStore(store)
    entries, corrupt = dlq.entries()
    assert sorted(e.job_id for e in entries) == ["a", "b", "c"]
    assert corrupt == []
    billing, _ = dlq.entries(DeadLetterFilter(task="billing.*"))
    assert sorted(e.job_id for e in billing) == ["a", "b"]
    assert dlq.entries(DeadLetterFilter(older_than=3600))[0] == []
    assert entries[0].checkpoint == f"{entries[0].job_id}-ckpt"

    assert dlq.requeue(billing, {"test": adapter}) == ["a", "b"]
    assert adapter.republished == ["a", "b"]
    assert sorted(e.job_id for e in dlq.entries()[0]) == ["c"]
    again = store.acquire(job("a"), "w2", policy)
    assert (again.attempt, again.stalls, again.checkpoint) == (1, 0, '"a-ckpt"')

    assert dlq.purge(["c", "nope"]) == 1
    assert dlq.entries()[0] == []
    assert store.client.exists(store.checkpoint_key("c")) == 0


def test_a_corrupt_dead_letter_entry_is_reported_and_skipped(store: LeaseStore, client: redis.Redis) -> None:
    client.hset(store.dlq_key, "bad", "{not json")
    client.zadd(store.dlq_index_key, {"bad": 1.0, "missing": 2.0})
    entries, corrupt = DeadLetterStore(store).entries()
    assert entries == []
    assert [job_id for job_id, _ in corrupt] == ["bad", "missing"]


def test_the_dead_letter_queue_is_bounded_by_entries(client: redis.Redis, key_prefix: str) -> None:
    store = LeaseStore(client, Settings(key_prefix=key_prefix, dead_letter_max_entries=3))
    adapter = RecordingAdapter()
    for i in range(5):
        start(store, f"p{i}", Policy(lease_ttl=5, max_stalls=0))
        expire(store, f"p{i}")
        Sweeper(store, {"test": adapter}).sweep_once()
    assert [e.job_id for e in DeadLetterStore(store).entries()[0]] == ["p2", "p3", "p4"]
    for key in client.scan_iter(match="{" + key_prefix + "}*"):
        client.delete(key)


def test_a_job_whose_end_was_recorded_before_its_worker_died_is_closed_not_recovered(
    store: LeaseStore,
) -> None:
    adapter = RecordingAdapter(ended=True)
    start(store, "j1", Policy(lease_ttl=5))
    expire(store, "j1")
    with capture_events() as events:
        report = Sweeper(store, {"test": adapter}).sweep_once()
    assert (report.ended, report.recovered, adapter.requeued) == (["j1"], [], [])
    assert list(events) == []
    record = store.record("j1")
    assert record is not None
    assert record.state == "done"


def test_the_dead_letter_queue_is_bounded_by_age(client: redis.Redis, key_prefix: str) -> None:
    store = LeaseStore(client, Settings(key_prefix=key_prefix, dead_letter_max_age=0.3))
    adapter = RecordingAdapter()
    start(store, "old", Policy(lease_ttl=5, max_stalls=0))
    expire(store, "old")
    Sweeper(store, {"test": adapter}).sweep_once()
    time.sleep(0.4)
    start(store, "new", Policy(lease_ttl=5, max_stalls=0))
    expire(store, "new")
    Sweeper(store, {"test": adapter}).sweep_once()
    assert [e.job_id for e in DeadLetterStore(store).entries()[0]] == ["new"]
    for key in client.scan_iter(match="{" + key_prefix + "}*"):
        client.delete(key)


def _republish_due_now(store: LeaseStore, job_id: str, adapter: str = "test") -> None:
    """As if lease_ttl passed since the requeue (no waiting in tests)."""
    now = store.server_time()
    store.client.hset(store.lease_key(job_id), "republish_at", repr(now - 0.001))
    store.client.zadd(store.due_key(adapter), {job_id: now - 0.001})


def test_a_requeued_job_no_worker_starts_is_published_again_and_only_one_copy_runs(store: LeaseStore) -> None:
    adapter = RecordingAdapter(republishes_unstarted=True)
    sweeper = Sweeper(store, {"test": adapter}, name="s1")
    policy = Policy(lease_ttl=5)
    start(store, "j1", policy)
    expire(store, "j1")
    assert sweeper.sweep_once().recovered == ["j1"]
    record = store.record("j1")
    assert record is not None
    assert record.state == "queued"
    # Nothing is due before republish_at; then the job is published again, once per due time.
    assert sweeper.sweep_once().republished == []
    _republish_due_now(store, "j1")
    assert sweeper.sweep_once().republished == ["j1"]
    assert adapter.requeued == ["j1", "j1"]
    record = store.record("j1")
    assert record is not None
    assert (record.state, record.attempt, record.stalls, record.republished) == ("queued", 1, 1, 1)
    assert len(record.history) == 1  # publishing again ends no attempt
    # Both copies say attempt 2: the first delivered runs, the other is stale.
    first = store.acquire(job("j1"), "w2", policy, delivery_attempt=2)
    assert (first.status, first.attempt) == (AcquireStatus.ACQUIRED, 2)
    assert store.acquire(job("j1"), "w3", policy, delivery_attempt=2).status is AcquireStatus.STALE
    store.release(job("j1"), first.token, Outcome.COMPLETED)
    assert store.acquire(job("j1"), "w3", policy, delivery_attempt=2).status is AcquireStatus.STALE


def test_republishing_looks_after_1s_then_backs_off_and_stops_after_three_times(store: LeaseStore) -> None:
    adapter = RecordingAdapter(republishes_unstarted=True)
    sweeper = Sweeper(store, {"test": adapter}, name="s1")
    start(store, "j1", Policy(lease_ttl=5))
    expire(store, "j1")
    sweeper.sweep_once()
    gaps = []
    for _ in range(3):
        before = store.server_time()
        record = store.record("j1")
        assert record is not None
        gaps.append(round(float(store.client.hget(store.lease_key("j1"), "republish_at") or 0) - before, 1))
        _republish_due_now(store, "j1")
        assert sweeper.sweep_once().republished == ["j1"]
    assert gaps == [1.0, 2.0, 4.0]  # then twice and four times that
    assert store.client.hget(store.lease_key("j1"), "republish_at") is not None
    assert not store.client.zscore(store.due_key("test"), "j1")  # no fourth time
    assert len(adapter.requeued) == 4


def test_an_adapter_that_does_not_republish_leaves_a_requeued_job_alone(store: LeaseStore) -> None:
    adapter = RecordingAdapter()
    sweeper = Sweeper(store, {"test": adapter}, name="s1")
    start(store, "j1", Policy(lease_ttl=5))
    expire(store, "j1")
    sweeper.sweep_once()
    assert not store.client.zscore(store.due_key("test"), "j1")
    assert store.client.hget(store.lease_key("j1"), "republish_at") is None


def test_each_recovery_and_dead_lettering_is_one_log_line_naming_job_task_attempt_and_what_next(
    store: LeaseStore, caplog: pytest.LogCaptureFixture
) -> None:
    sweeper = Sweeper(store, {"test": RecordingAdapter()})
    policy = Policy(lease_ttl=5, max_stalls=1)
    for n in (1, 2):
        acquire_number(store, "j1", policy, f"w{n}")
        expire(store, "j1")
        sweeper.sweep_once()
    lines = [r.getMessage() for r in caplog.records if "j1" in r.getMessage()]
    assert lines == [
        "test job app.tasks.work[j1]: attempt 1 stalled (lease expired: worker w1 stopped renewing it "
        "(dead or frozen)); requeued as attempt 2 (stall 1 of max_stalls 1)",
        "test job app.tasks.work[j1]: attempt 2 stalled (lease expired: worker w2 stopped renewing it "
        "(dead or frozen)); stalled 2 times (max_stalls=1): a poison pill; dead-lettered "
        "(see: zombieguard dlq show j1)",
    ]


def test_a_job_failed_at_its_limit_by_a_sweeper_is_one_log_line(
    store: LeaseStore, caplog: pytest.LogCaptureFixture
) -> None:
    start(store, "j1", Policy(lease_ttl=30, hard_timeout=0.2, overdue_grace=0.1))
    _sweep_until(Sweeper(store, {"test": RecordingAdapter()}), lambda r: r.failed)
    [line] = [r.getMessage() for r in caplog.records if "j1" in r.getMessage()]
    assert line.startswith("test job app.tasks.work[j1]: attempt 1 still running 0.1 s past its hard_timeout")
    assert line.endswith("its worker did not stop it; failed as timed out")
