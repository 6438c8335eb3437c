"""What a lease says of the processes under its job: how many run (renewals), and which were ended
with the attempt (its history, and so the dead-letter entry)."""

from __future__ import annotations

from tests.support.leases import RecordingAdapter, expire, start
from zombieguard import Policy
from zombieguard.leases import LeaseRecord, LeaseStore, Outcome
from zombieguard.recovery.deadletter import DeadLetterStore
from zombieguard.recovery.sweeper import Sweeper

POLICY = Policy(lease_ttl=10, max_stalls=0)


def test_a_renewal_records_how_many_processes_run_under_each_job(store: LeaseStore) -> None:
    a, b = start(store, "a", POLICY), start(store, "b", POLICY)
    assert store.renew("test", "w1", 30, [("a", a.token), ("b", b.token)], [3, None]) == ["ok", "ok"]
    assert _record(store, "a").processes == 3
    assert _record(store, "b").processes is None  # not counted: nothing said
    store.renew("test", "w1", 30, [("a", a.token)], [0])
    assert _record(store, "a").processes == 0


def test_the_processes_ended_with_an_attempt_are_in_its_history_when_its_worker_records_its_end(
    store: LeaseStore,
) -> None:
    attempt = start(store, "j1", POLICY)
    assert store.note_ended_processes("j1", attempt.token, "w1", ["41 sleep 600", "42 ffmpeg -i x"])
    attempt.release(Outcome.TIMED_OUT, "ran past its hard_timeout")
    [ended] = _record(store, "j1").history
    assert ended.processes == ("41 sleep 600", "42 ffmpeg -i x")


def test_the_processes_ended_with_a_stalled_attempt_are_in_its_dead_letter_entry(store: LeaseStore) -> None:
    start(store, "j1", POLICY)
    # The reaper of a dead worker does not know the attempt's token: the worker's name says it.
    assert store.note_ended_processes("j1", None, "w1", ["41 sleep 600"])
    expire(store, "j1")
    Sweeper(store, {"test": RecordingAdapter()}).sweep_once()
    entry = DeadLetterStore(store).get("j1")
    assert entry is not None
    assert entry.attempts[-1].processes == ("41 sleep 600",)
    assert entry.as_dict()["attempts"][-1]["processes"] == ["41 sleep 600"]


def test_a_note_of_ended_processes_from_another_attempt_or_worker_is_refused(store: LeaseStore) -> None:
    attempt = start(store, "j1", POLICY)
    assert not store.note_ended_processes("j1", attempt.token - 1, "w1", ["41 sleep 600"])
    assert not store.note_ended_processes("j1", None, "w2", ["41 sleep 600"])
    assert not store.note_ended_processes("gone", None, "w1", ["41 sleep 600"])
    assert _record(store, "j1").ended_processes == ()


def _record(store: LeaseStore, job_id: str) -> LeaseRecord:
    record = store.record(job_id)
    assert record is not None, f"no lease record of {job_id}"
    return record
