"""Prometheus metrics (extra ``prometheus``).

Two sources, each registered on your registry (or served by ``zombieguard metrics --port N``):

- :class:`ClusterCollector` reads Redis at scrape time: what every worker and sweeper counted
  (:mod:`zombieguard.ops.stats`) and what is running now. Scrape it from one place (one process, or the
  ``zombieguard metrics`` exporter): every scrape sees the whole deployment.

  ================================================  ================================================
  ``zombieguard_jobs_stalled_total``                 leases that expired (worker dead or frozen)
  ``zombieguard_jobs_hung_total``                    no progress within progress_timeout
  ``zombieguard_jobs_timed_out_total{limit}``        past soft_timeout or hard_timeout
  ``zombieguard_jobs_recovered_total``               requeued as a new attempt
  ``zombieguard_jobs_dead_lettered_total``           quarantined after max_stalls
  ``zombieguard_leases_lost_total``                  superseded attempts that found out
  ``zombieguard_leases_vanished_total``              leases missing from Redis while their worker
                                                      renewed them (evicted, restart, failover)
  ``zombieguard_child_processes_ended_total``        processes jobs started, ended with them (a
                                                      stop, or their worker's death)
  ``zombieguard_worker_zombies_total``               workers gone silent, or threads stuck
  ``zombieguard_active_jobs{state}``                 running, hung, overdue, stalled
  ``zombieguard_oldest_active_job_age_seconds``      per queue
  ``zombieguard_oldest_progress_age_seconds``        per queue: the longest a running job went
                                                      without a beat or a checkpoint
  ``zombieguard_seconds_since_completion``           per queue: since a job of it last completed
  ``zombieguard_queue_silent``                        per queue: 1 while alerted as silent (silence_alert)
  ``zombieguard_workers``                             guarded workers present
  ``zombieguard_zombie_workers``                      silent workers not yet collected, or holding
                                                      stuck threads (Celery threads pool)
  ``zombieguard_dead_letter_entries``                 entries in the dead-letter queue
  ================================================  ================================================

  Job counters are labelled ``adapter``, ``queue`` and ``task``; never a job id.
- :class:`ProcessMetrics` counts in the process that registers it: the job duration histogram
  (``zombieguard_job_duration_seconds{adapter,queue,task,outcome}``) and
  ``zombieguard_heartbeat_failures_total``. Register it in each worker process you scrape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from zombieguard.errors import IntegrationNotAvailable
from zombieguard.events import HeartbeatFailed, JobCompleted, heartbeat_failed, job_completed
from zombieguard.leases import LeaseStore, text
from zombieguard.ops.stats import counts

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise IntegrationNotAvailable(
        f"zombieguard.ops.metrics needs prometheus_client ({exc}): pip install 'zombieguard[prometheus]'"
    ) from exc

_JOB_LABELS = ["adapter", "queue", "task"]
_COUNTER_OF = {
    "stalled": ("zombieguard_jobs_stalled", "Leases that expired: the worker died or froze."),
    "hung": ("zombieguard_jobs_hung", "Jobs stopped for making no progress within progress_timeout."),
    "recovered": ("zombieguard_jobs_recovered", "Stalled jobs requeued as a new attempt."),
    "dead_lettered": ("zombieguard_jobs_dead_lettered", "Jobs quarantined after max_stalls."),
    "lease_lost": ("zombieguard_leases_lost", "Superseded attempts that found out they lost the lease."),
    "lease_vanished": (
        "zombieguard_leases_vanished",
        "Leases missing from Redis while their worker renewed them (evicted, or lost in a restart or a "
        "failover).",
    ),
    "processes_ended": (
        "zombieguard_child_processes_ended",
        "Processes jobs started, ended with them (a stop, or their worker's death).",
    ),
}


class ClusterCollector(Collector):
    """The deployment's zombie counts and current state, read from Redis at each scrape."""

    def __init__(self, store: LeaseStore) -> None:
        self.store = store

    def describe(self) -> list[Metric]:
        """Nothing up front: the families are built at scrape time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """One Redis pass per scrape."""
        yield from self._counters()
        yield from self._active()
        yield from self._queues()
        present = self.store.workers()
        now = self.store.server_time()
        workers = GaugeMetricFamily("zombieguard_workers", "Guarded workers present.")
        workers.add_metric([], len(present))
        yield workers
        zombies = GaugeMetricFamily(
            "zombieguard_zombie_workers",
            "Workers silent past their presence (not yet collected by a sweeper), or holding stuck threads.",
        )
        zombies.add_metric(
            [],
            sum(
                1
                for expiry, info in present.values()
                if expiry <= now or int(info.get("zombie_threads") or 0)
            ),
        )
        yield zombies
        dlq = GaugeMetricFamily("zombieguard_dead_letter_entries", "Entries in the dead-letter queue.")
        dlq.add_metric([], self.store.client.zcard(self.store.dlq_index_key))
        yield dlq

    def _counters(self) -> Iterator[Metric]:
        counted = counts(self.store)
        families: dict[str, CounterMetricFamily] = {
            kind: CounterMetricFamily(name, doc, labels=_JOB_LABELS)
            for kind, (name, doc) in _COUNTER_OF.items()
        }
        timed_out = CounterMetricFamily(
            "zombieguard_jobs_timed_out",
            "Jobs past their soft_timeout or hard_timeout.",
            labels=[*_JOB_LABELS, "limit"],
        )
        zombies = CounterMetricFamily(
            "zombieguard_worker_zombies", "Workers gone silent, or holding stuck threads.", labels=["adapter"]
        )
        for (kind, adapter, queue, task), value in sorted(counted.items()):
            if kind.startswith("timed_out_"):
                timed_out.add_metric([adapter, queue, task, kind.removeprefix("timed_out_")], value)
            elif kind == "worker_zombie":
                zombies.add_metric([adapter], value)
            elif kind in families:
                families[kind].add_metric([adapter, queue, task], value)
        yield from families.values()
        yield timed_out
        yield zombies

    def _active(self) -> Iterator[Metric]:
        records, _ = self.store.active()
        now = self.store.server_time()
        active = GaugeMetricFamily(
            "zombieguard_active_jobs",
            "Guarded jobs with a lease, by state.",
            labels=["adapter", "queue", "state"],
        )
        oldest = GaugeMetricFamily(
            "zombieguard_oldest_active_job_age_seconds", "Age of the oldest active job.", labels=["queue"]
        )
        quiet = GaugeMetricFamily(
            "zombieguard_oldest_progress_age_seconds",
            "The longest an active job has gone without a beat or a checkpoint.",
            labels=["queue"],
        )
        by_state: dict[tuple[str, str, str], int] = {}
        ages: dict[str, float] = {}
        silences: dict[str, float] = {}
        for record in records:
            key = (record.adapter, record.queue, record.condition(now))
            by_state[key] = by_state.get(key, 0) + 1
            ages[record.queue] = max(ages.get(record.queue, 0.0), now - record.started)
            last = record.last_progress if record.last_progress is not None else record.started
            silences[record.queue] = max(silences.get(record.queue, 0.0), now - last)
        for labels, value in sorted(by_state.items()):
            active.add_metric(list(labels), value)
        for queue, age in sorted(ages.items()):
            oldest.add_metric([queue], age)
            quiet.add_metric([queue], silences[queue])
        yield active
        yield oldest
        yield quiet

    def _queues(self) -> Iterator[Metric]:
        client, store = self.store.client, self.store
        now = store.server_time()
        completed = {text(q): float(text(t)) for q, t in client.hgetall(store.completed_key).items()}
        silent = {text(q) for q in client.hkeys(store.silence_key)}
        since = GaugeMetricFamily(
            "zombieguard_seconds_since_completion",
            "Since a job of the queue last completed.",
            labels=["queue"],
        )
        alerted = GaugeMetricFamily(
            "zombieguard_queue_silent",
            "1 while the queue is alerted as silent (silence_alert).",
            labels=["queue"],
        )
        for queue in sorted(text(q) for q in client.hkeys(store.queues_key)):
            if queue in completed:
                since.add_metric([queue], now - completed[queue])
            alerted.add_metric([queue], 1 if queue in silent else 0)
        yield since
        yield alerted


class ProcessMetrics:
    """Job durations and heartbeat failures, counted where they happen (register it per process)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.durations = Histogram(
            "zombieguard_job_duration_seconds",
            "How long guarded jobs ran, by outcome.",
            [*_JOB_LABELS, "outcome"],
            registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, float("inf")),
        )
        self.heartbeat_failures = Counter(
            "zombieguard_heartbeat_failures",
            "Heartbeat round trips that failed (Redis unreachable).",
            ["adapter"],
            registry=registry,
        )
        job_completed.connect(self._completed, weak=False)
        heartbeat_failed.connect(self._heartbeat_failed, weak=False)

    def _completed(self, sender: Any, event: JobCompleted) -> None:
        if event.duration is not None:
            self.durations.labels(event.adapter, event.queue, event.task, event.reason).observe(
                event.duration
            )

    def _heartbeat_failed(self, sender: Any, event: HeartbeatFailed) -> None:
        self.heartbeat_failures.labels(event.adapter).inc()

    def close(self) -> None:
        """Stop counting (the metrics stay registered)."""
        job_completed.disconnect(self._completed)
        heartbeat_failed.disconnect(self._heartbeat_failed)


def register(registry: CollectorRegistry = REGISTRY, store: LeaseStore | None = None) -> ProcessMetrics:
    """Register this process's metrics on ``registry``, and the deployment's when ``store`` is given."""
    if store is not None:
        registry.register(ClusterCollector(store))
    return ProcessMetrics(registry)


__all__ = ["ClusterCollector", "ProcessMetrics", "register"]
