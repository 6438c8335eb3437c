"""The heartbeat thread: one round trip for all leases, lost leases, Redis outages."""

from __future__ import annotations

import threading

import pytest
import redis

from tests.support.leases import RecordingAdapter, expire, start
from tests.support.waiting import wait_until
from zombieguard import LeaseLost, Policy
from zombieguard.demo.embedded import EmbeddedRedis
from zombieguard.leases import LeaseStore
from zombieguard.policy import Settings
from zombieguard.recovery.sweeper import Sweeper
from zombieguard.testing import capture_events
from zombieguard.worker.attempt import Attempt
from zombieguard.worker.heartbeat import Heartbeat


def test_the_heartbeat_keeps_every_lease_alive_well_past_its_ttl(store: LeaseStore) -> None:
    policy = Policy(lease_ttl=0.6, heartbeat_interval=0.15)
    attempts = [start(store, f"j{i}", policy) for i in range(10)]
    heartbeat = Heartbeat(store, "test", "w1", interval=0.15)
    for attempt in attempts:
        heartbeat.add(attempt)
    heartbeat.start()
    sweeper = Sweeper(store, {"test": RecordingAdapter()})
    try:
        t_end = store.server_time() + 2.0
        while store.server_time() < t_end:
            assert sweeper.sweep_once().recovered == []
    finally:
        heartbeat.stop()
    assert all(a.lost is None for a in attempts)


def test_a_lease_taken_over_is_dropped_and_its_attempt_told_with_an_event(store: LeaseStore) -> None:
    policy = Policy(lease_ttl=5, heartbeat_interval=0.1)
    keep, lose = start(store, "keep", policy), start(store, "lose", policy)
    told: list[tuple[Attempt, LeaseLost]] = []
    heartbeat = Heartbeat(store, "test", "w1", interval=0.1, on_lost=lambda a, e: told.append((a, e)))
    heartbeat.add(keep)
    heartbeat.add(lose)
    expire(store, "lose")
    Sweeper(store, {"test": RecordingAdapter()}).sweep_once()
    with capture_events() as events:
        assert heartbeat.beat_once()
    assert [(a.job.job_id, type(e)) for a, e in told] == [("lose", LeaseLost)]
    assert lose.lost is not None
    assert keep.lost is None
    assert heartbeat.attempts() == [keep]
    assert [(e.kind, e.job_id) for e in events.of_jobs()] == [("lease_lost", "lose")]
    assert len(events) == 1
    with pytest.raises(LeaseLost):
        lose.beat()


@pytest.mark.contained_errors_expected
def test_a_redis_restart_mid_job_is_survived_and_the_lease_re_established(
    private_redis: EmbeddedRedis,
) -> None:
    store = LeaseStore(
        redis.Redis.from_url(private_redis.url, socket_timeout=0.5, socket_connect_timeout=0.5),
        Settings(key_prefix="zg"),
    )
    attempt = start(store, "j1", Policy(lease_ttl=2, heartbeat_interval=0.2))
    heartbeat = Heartbeat(store, "test", "w1", interval=0.2)
    heartbeat.add(attempt)
    failures: list[int] = []
    heartbeat.start()
    try:
        private_redis.stop()
        wait_until(lambda: heartbeat.failures >= 2, timeout=10)
        failures.append(heartbeat.failures)
        attempt.beat(progress="still working")  # the job goes on while Redis is away
        private_redis.start()
        wait_until(lambda: heartbeat.failures == 0 and store.record("j1") is not None, timeout=10)
    finally:
        heartbeat.stop()
    record = store.record("j1")
    assert record is not None
    assert (record.state, record.token) == ("running", attempt.token)
    assert attempt.lost is None
    assert failures[0] >= 2


def test_a_lease_with_a_shorter_interval_is_renewed_at_its_own_pace(store: LeaseStore) -> None:
    heartbeat = Heartbeat(store, "test", "w1", interval=30)
    calls = threading.Semaphore(0)
    original = store.renew

    def counting_renew(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.release()
        return original(*args, **kwargs)

    store.renew = counting_renew  # type: ignore[method-assign]
    heartbeat.start()
    try:
        assert calls.acquire(timeout=2)  # the first round trip at start
        heartbeat.add(start(store, "fast", Policy(lease_ttl=0.9, heartbeat_interval=0.1)))
        for _ in range(5):
            assert calls.acquire(timeout=1)
    finally:
        heartbeat.stop()
