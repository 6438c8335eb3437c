"""The absence of success: a queue that completes nothing while it has work is alerted, once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from prometheus_client import CollectorRegistry

from tests.support.cleanup import delete_prefixed
from tests.support.leases import RecordingAdapter, start
from tests.support.scraping import scrape
from zombieguard import Policy
from zombieguard.leases import LeaseStore, Outcome
from zombieguard.ops.metrics import ClusterCollector
from zombieguard.policy import Settings
from zombieguard.recovery.silence import check_silence
from zombieguard.testing import capture_events


@pytest.fixture
def quiet_store(client: redis.Redis, key_prefix: str) -> Iterator[LeaseStore]:
    """A store whose deployment alerts after 2 s without a completion."""
    yield LeaseStore(client, Settings(key_prefix=key_prefix, silence_alert=2))
    delete_prefixed(client, "{" + key_prefix + "}*")


def _silent_since(store: LeaseStore, queue: str, seconds: float) -> None:
    """As if the queue's last completion was ``seconds`` ago (no waiting in tests)."""
    store.client.hset(store.completed_key, queue, repr(store.server_time() - seconds))


def test_a_busy_queue_without_completions_is_alerted_once_then_recovers_at_its_next_completion(
    quiet_store: LeaseStore,
) -> None:
    adapters = {"test": RecordingAdapter(backlog=3)}
    attempt = start(quiet_store, "j1", Policy(lease_ttl=30))
    with capture_events() as events:
        assert check_silence(quiet_store, adapters, "rq") == []  # first seen: its clock starts now
        _silent_since(quiet_store, "default", 3)
        [silent] = check_silence(quiet_store, adapters, "rq")
        assert check_silence(quiet_store, adapters, "sweeper-2") == []  # one alert, however many sweepers
        attempt.release(Outcome.COMPLETED)
        [recovered] = check_silence(quiet_store, adapters, "rq")
    assert (silent.kind, silent.queue, silent.running, silent.waiting) == ("queue_silent", "default", 1, 3)
    assert silent.silent_for >= 3
    assert recovered.kind == "queue_recovered"
    assert [e.kind for e in events] == ["queue_silent", "queue_recovered"]


def test_an_idle_queue_is_not_silent(quiet_store: LeaseStore) -> None:
    adapters = {"test": RecordingAdapter(backlog=0)}
    attempt = start(quiet_store, "j1", Policy(lease_ttl=30))
    attempt.release(Outcome.COMPLETED)
    _silent_since(quiet_store, "default", 60)
    assert check_silence(quiet_store, adapters, "rq") == []


def test_silence_alerts_are_off_unless_set(store: LeaseStore) -> None:
    start(store, "j1", Policy(lease_ttl=30))
    _silent_since(store, "default", 3600)
    assert check_silence(store, {"test": RecordingAdapter(backlog=5)}, "rq") == []


def test_the_silence_and_the_time_since_the_last_completion_are_metrics(quiet_store: LeaseStore) -> None:
    adapters = {"test": RecordingAdapter(backlog=1)}
    start(quiet_store, "j1", Policy(lease_ttl=30))
    _silent_since(quiet_store, "default", 5)
    check_silence(quiet_store, adapters, "rq")
    registry = CollectorRegistry()
    registry.register(ClusterCollector(quiet_store))
    samples = scrape(registry)
    assert samples["zombieguard_queue_silent"] == [({"queue": "default"}, 1.0)]
    [(labels, since)] = samples["zombieguard_seconds_since_completion"]
    assert labels == {"queue": "default"}
    assert 5 <= since < 10
