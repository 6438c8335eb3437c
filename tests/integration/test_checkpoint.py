"""Checkpoints through the public API: resume across attempts, fencing, clear errors."""

from __future__ import annotations

import pytest

import zombieguard
from tests.support.leases import RecordingAdapter, expire, job, start
from zombieguard import CheckpointNotSerializable, LeaseLost, NotInGuardedJob, Policy
from zombieguard.leases import LeaseStore
from zombieguard.recovery.sweeper import Sweeper
from zombieguard.worker.attempt import Attempt, running

POLICY = Policy(lease_ttl=5, max_stalls=3)


def test_a_recovered_attempt_resumes_iterating_after_the_last_saved_position(store: LeaseStore) -> None:
    processed: list[int] = []
    first = start(store, "j1", POLICY)
    with running(first):
        assert zombieguard.checkpoint().state is None
        for item in zombieguard.checkpoint().iterate(range(10)):
            processed.append(item)
            if item == 4:
                break  # the worker dies here, mid-item 4
    expire(store, "j1")
    Sweeper(store, {"test": RecordingAdapter()}).sweep_once()
    second = Attempt(store, job("j1"), "w2", POLICY, store.acquire(job("j1"), "w2", POLICY))
    with running(second):
        assert zombieguard.checkpoint().state == 4
        processed.extend(zombieguard.checkpoint().iterate(range(10)))
    assert processed == [0, 1, 2, 3, 4, 4, 5, 6, 7, 8, 9]
    assert second.number == 2


def test_iterate_saves_every_n_items_and_at_the_end(store: LeaseStore) -> None:
    attempt = start(store, "j1", POLICY)
    saved: list[object] = []
    with running(attempt):
        cp = zombieguard.checkpoint()
        for _ in cp.iterate(range(7), every=3):
            saved.append(cp.state)
    assert saved == [None, None, None, 3, 3, 3, 6]
    assert store.client.get(store.checkpoint_key("j1")) == b"7"


def test_a_superseded_attempt_cannot_overwrite_its_successors_checkpoint(store: LeaseStore) -> None:
    old = start(store, "j1", POLICY)
    expire(store, "j1")
    Sweeper(store, {"test": RecordingAdapter()}).sweep_once()
    new = Attempt(store, job("j1"), "w2", POLICY, store.acquire(job("j1"), "w2", POLICY))
    with running(new):
        zombieguard.checkpoint().save({"done": 100})
    with running(old), pytest.raises(LeaseLost):
        zombieguard.checkpoint().save({"done": 3})
    with running(old), pytest.raises(LeaseLost):
        zombieguard.beat()  # the zombie learned: every later write is refused at once
    assert store.client.get(store.checkpoint_key("j1")) == b'{"done":100}'


def test_checkpoint_outside_a_guarded_job_says_where_it_works_and_beat_is_a_no_op() -> None:
    zombieguard.beat(progress="1/2")
    with pytest.raises(NotInGuardedJob, match="guarded worker"):
        zombieguard.checkpoint()


def test_a_value_json_cannot_hold_is_refused_clearly_and_nothing_is_written(store: LeaseStore) -> None:
    attempt = start(store, "j1", POLICY)
    with (
        running(attempt),
        pytest.raises(CheckpointNotSerializable, match="JSON-serialisable value; set is not"),
    ):
        zombieguard.checkpoint().save({1, 2})
    assert store.client.exists(store.checkpoint_key("j1")) == 0


def test_beat_in_a_tight_loop_reaches_redis_about_once_a_second(store: LeaseStore) -> None:
    attempt = start(store, "j1", POLICY)
    calls: list[str] = []
    original = store.progress

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append("x")
        return original(*args, **kwargs)

    store.progress = counting  # type: ignore[method-assign]
    with running(attempt):
        for _ in range(10000):
            zombieguard.beat()
        zombieguard.beat(progress="done")
    assert len(calls) == 1  # only the beat that carried progress
