"""Cluster-wide counts of the zombie events, kept in Redis (``{prefix}:stats``), so that one scrape
(``zombieguard metrics``) sees what every worker and sweeper detected, across restarts.

Each guarded worker counts the events it detects: one ``HINCRBY`` per event, and events are rare
(started and completed are not counted); ``processes_ended`` counts processes, not events. Fields
are ``kind\\tadapter\\tqueue\\ttask``: bounded by the deployment's task names and queues, never by
job ids.
"""

from __future__ import annotations

import contextlib
from typing import Any

import redis
from blinker import Signal

from zombieguard.events import (
    JobEvent,
    JobProcessesEnded,
    JobTimedOut,
    WorkerEvent,
    job_dead_lettered,
    job_hung,
    job_processes_ended,
    job_recovered,
    job_stalled,
    job_timed_out,
    lease_lost,
    lease_vanished,
    worker_zombie,
)
from zombieguard.leases import LeaseStore, text

COUNTED: tuple[Signal, ...] = (
    job_stalled,
    job_hung,
    job_timed_out,
    job_recovered,
    job_dead_lettered,
    lease_lost,
    lease_vanished,
    job_processes_ended,
    worker_zombie,
)
"""The signals counted (``heartbeat_failed`` is not: Redis is what it could not reach)."""


def stats_key(store: LeaseStore) -> str:
    """The hash holding the counts."""
    return f"{store.prefix}:stats"


def field_of(event: JobEvent | WorkerEvent) -> str:
    """The counter an event adds to."""
    if isinstance(event, WorkerEvent):
        return "\t".join(("worker_zombie", event.adapter, "", ""))
    kind = f"timed_out_{event.limit.value}" if isinstance(event, JobTimedOut) else event.kind
    return "\t".join((kind, event.adapter, event.queue, event.task))


def _weight(event: JobEvent | WorkerEvent) -> int:
    """What an event adds to its counter: the processes it names, for ``processes_ended``."""
    return len(event.processes) if isinstance(event, JobProcessesEnded) else 1


def add_ended_processes(store: LeaseStore, adapter: str, count: int) -> None:
    """Count ``count`` processes ended when a worker of ``adapter`` died (whose jobs' queues and
    tasks are unknown then)."""
    store.client.hincrby(stats_key(store), "\t".join(("processes_ended", adapter, "", "")), count)


class EventCounter:
    """Counts, in Redis, the zombie events this process detects. One per worker process."""

    def __init__(self, store: LeaseStore) -> None:
        self.store = store
        self.key = stats_key(store)
        for signal in COUNTED:
            signal.connect(self._count, weak=False)

    def _count(self, sender: Any, event: JobEvent | WorkerEvent) -> None:
        # Counting is best effort: a Redis outage must not turn an event into an error.
        with contextlib.suppress(redis.RedisError):
            self.store.client.hincrby(self.key, field_of(event), _weight(event))

    def close(self) -> None:
        """Stop counting."""
        for signal in COUNTED:
            signal.disconnect(self._count)


def counts(store: LeaseStore) -> dict[tuple[str, str, str, str], int]:
    """Every count: (kind, adapter, queue, task) -> events. Unreadable fields are skipped."""
    out: dict[tuple[str, str, str, str], int] = {}
    for raw_field, raw_value in store.client.hgetall(stats_key(store)).items():
        parts = text(raw_field).split("\t")
        if len(parts) != 4:
            continue
        with contextlib.suppress(ValueError):
            out[(parts[0], parts[1], parts[2], parts[3])] = int(text(raw_value))
    return out
