"""Metrics: counted in Redis by the processes that detect events, scraped over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from tests.support.leases import RecordingAdapter, expire, start
from tests.support.scraping import scrape
from zombieguard import Policy
from zombieguard.enforcement.limits import Limit
from zombieguard.events import JobCompleted, JobTimedOut, emit
from zombieguard.leases import LeaseStore
from zombieguard.ops.metrics import ClusterCollector, ProcessMetrics
from zombieguard.ops.stats import EventCounter
from zombieguard.recovery.sweeper import Sweeper


@pytest.fixture
def counter(store: LeaseStore) -> Iterator[EventCounter]:
    """This process counts the events it detects, as a worker does."""
    counting = EventCounter(store)
    yield counting
    counting.close()


def test_the_deployment_s_zombie_counts_and_active_jobs_are_scraped_with_bounded_labels(
    store: LeaseStore, counter: EventCounter
) -> None:
    policy = Policy(lease_ttl=5, max_stalls=0)
    start(store, "stalls-1", policy)
    start(store, "stalls-2", policy)
    start(store, "runs", Policy(lease_ttl=30))
    expire(store, "stalls-1")
    expire(store, "stalls-2")
    Sweeper(store, {"test": RecordingAdapter()}, sender="rq").sweep_once()
    registry = CollectorRegistry()
    registry.register(ClusterCollector(store))
    samples = scrape(registry)
    labels = {"adapter": "test", "queue": "default", "task": "app.tasks.work"}
    assert samples["zombieguard_jobs_stalled_total"] == [(labels, 2.0)]
    assert samples["zombieguard_jobs_dead_lettered_total"] == [(labels, 2.0)]
    assert samples["zombieguard_dead_letter_entries"] == [({}, 2.0)]
    assert samples["zombieguard_active_jobs"] == [
        ({"adapter": "test", "queue": "default", "state": "running"}, 1.0)
    ]
    [(queue, age)] = samples["zombieguard_oldest_active_job_age_seconds"]
    assert queue == {"queue": "default"}
    assert 0 <= age < 5
    every_label_value = {
        v for rows in samples.values() for row_labels, _ in rows for v in row_labels.values()
    }
    assert not every_label_value & {"stalls-1", "stalls-2", "runs"}  # never a job id


def test_soft_and_hard_timeouts_are_counted_apart(store: LeaseStore, counter: EventCounter) -> None:
    for limit in (Limit.SOFT, Limit.HARD, Limit.HARD):
        emit("celery", JobTimedOut("j", "t.task", "q", 1, "w", "celery", limit=limit))
    registry = CollectorRegistry()
    registry.register(ClusterCollector(store))
    rows = scrape(registry)["zombieguard_jobs_timed_out_total"]
    by_limit = {row_labels["limit"]: value for row_labels, value in rows}
    assert by_limit == {"soft": 1.0, "hard": 2.0}


def test_job_durations_are_a_histogram_in_the_process_that_ran_them() -> None:
    registry = CollectorRegistry()
    metrics = ProcessMetrics(registry)
    try:
        emit("rq", JobCompleted("j", "t.task", "q", 1, "w", "rq", reason="completed", duration=0.3))
        emit("rq", JobCompleted("k", "t.task", "q", 1, "w", "rq", reason="completed", duration=7.0))
    finally:
        metrics.close()
    samples = scrape(registry)
    [(labels, count)] = samples["zombieguard_job_duration_seconds_count"]
    assert labels == {"adapter": "rq", "queue": "q", "task": "t.task", "outcome": "completed"}
    assert count == 2.0
    buckets = {
        row_labels["le"]: value for row_labels, value in samples["zombieguard_job_duration_seconds_bucket"]
    }
    assert (buckets["0.5"], buckets["10.0"]) == (1.0, 2.0)


def test_workers_and_zombie_workers_are_gauges(store: LeaseStore) -> None:
    store.register_worker("healthy", {"adapter": "celery"}, 30)
    store.register_worker("stuck-threads", {"adapter": "celery", "zombie_threads": "2"}, 30)
    store.register_worker("gone-silent", {"adapter": "rq"}, 0.001)
    registry = CollectorRegistry()
    registry.register(ClusterCollector(store))
    samples = scrape(registry)
    assert samples["zombieguard_workers"] == [({}, 3.0)]
    assert samples["zombieguard_zombie_workers"] == [({}, 2.0)]
