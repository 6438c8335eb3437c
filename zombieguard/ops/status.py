"""What ``zombieguard status`` shows: every active guarded job, and a line per queue, read from
the leases (and the frameworks' queues), as data and as text."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from zombieguard.adapter import JobAdapter
from zombieguard.leases import LeaseRecord, LeaseState, LeaseStore, text
from zombieguard.ops.terminal import STATE_COLOURS, duration, table

WORKER_GONE = "worker gone"
"""The state of a running job whose worker is gone (dead, or frozen past its presence): its lease has
not expired yet, or no sweeper has recovered it yet."""


@dataclass(frozen=True)
class ActiveJob:
    """One row of ``zombieguard status``."""

    record: LeaseRecord
    now: float
    worker_gone: bool = False
    """Its worker's registration expired, or its presence connection to Redis is closed."""

    @property
    def state(self) -> str:
        """running, hung (alive, no progress), overdue (past hard limit), stalled (lease expired),
        or worker gone (still leased, but its worker is not there)."""
        condition = self.record.condition(self.now)
        return WORKER_GONE if condition == "running" and self.worker_gone else condition

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        r = self.record
        return {
            "job_id": r.job_id,
            "task": r.task,
            "queue": r.queue,
            "adapter": r.adapter,
            "worker": r.worker,
            "attempt": r.attempt,
            "state": self.state,
            "worker_gone": self.worker_gone,
            "age": round(self.now - r.started, 3),
            "last_progress_age": None if r.last_progress is None else round(self.now - r.last_progress, 3),
            "progress": r.progress or None,
            "message": r.message or None,
            "processes": r.processes,
            "lease_expires_in": round(r.expires - self.now, 3),
        }


@dataclass(frozen=True)
class QueueSummary:
    """One queue's line in ``zombieguard status``."""

    queue: str
    adapter: str
    waiting: int | None
    running: int
    zombies: int
    """Active jobs that are hung, overdue or stalled."""
    oldest_age: float | None
    last_success_age: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "queue": self.queue,
            "adapter": self.adapter,
            "waiting": self.waiting,
            "running": self.running,
            "zombies": self.zombies,
            "oldest_age": None if self.oldest_age is None else round(self.oldest_age, 3),
            "last_success_age": None if self.last_success_age is None else round(self.last_success_age, 3),
        }


def _summaries(
    store: LeaseStore,
    jobs: Sequence[ActiveJob],
    now: float,
    only: str | None,
    adapters: Mapping[str, JobAdapter],
) -> list[QueueSummary]:
    queues = {text(q): text(a) for q, a in store.client.hgetall(store.queues_key).items()}
    completed = {text(q): float(text(t)) for q, t in store.client.hgetall(store.completed_key).items()}
    out = []
    for queue, adapter_name in sorted(queues.items()):
        if only is not None and queue != only:
            continue
        mine = [j for j in jobs if j.record.queue == queue]
        waiting = None
        adapter = adapters.get(adapter_name)
        if adapter is not None:
            with contextlib.suppress(Exception):  # the framework's broker may be elsewhere
                waiting = adapter.waiting(queue)
        out.append(
            QueueSummary(
                queue=queue,
                adapter=adapter_name,
                waiting=waiting,
                running=len(mine),
                zombies=sum(1 for j in mine if j.state != "running"),
                oldest_age=max((now - j.record.started for j in mine), default=None),
                last_success_age=now - completed[queue] if queue in completed else None,
            )
        )
    return out


def _gone_workers(store: LeaseStore, records: Sequence[LeaseRecord], now: float) -> set[str]:
    """The workers of running ``records`` that are not there: their registration expired (or was
    withdrawn), or their presence connection to Redis, which they announced, is closed."""
    names = {r.worker for r in records if r.state is LeaseState.RUNNING}
    if not names:
        return set()
    ordered = sorted(names)
    pipe = store.client.pipeline(transaction=False)
    for name in ordered:
        pipe.zscore(store.workers_key, name)  # when its presence expires; none once it left
    expiries = pipe.execute()
    gone = {name for name, expiry in zip(ordered, expiries, strict=True) if expiry is None or expiry <= now}
    watched = set()
    for adapter in {r.adapter for r in records}:
        watched |= {text(member) for member in store.client.smembers(store.presence_key(adapter))}
    candidates = sorted((names - gone) & watched)
    if candidates:
        counts = store.node_client().pubsub_numsub(*(store.presence_channel(name) for name in candidates))
        gone |= {name for name, (_, count) in zip(candidates, counts, strict=True) if not count}
    return gone


@dataclass(frozen=True)
class Status:
    """One reading of ``zombieguard status``."""

    jobs: list[ActiveJob]
    queues: list[QueueSummary]
    corrupt: list[tuple[str, str]]
    now: float

    @classmethod
    def read(cls, store: LeaseStore, queue: str | None, adapters: Mapping[str, JobAdapter]) -> Status:
        """Read the active leases (of ``queue`` only, if given) and each queue's line; ``adapters``:
        the integrations whose queues' waiting jobs can be counted here."""
        records, corrupt = store.active()
        now = store.server_time()
        mine = [r for r in records if queue is None or r.queue == queue]
        gone = _gone_workers(store, mine, now)
        jobs = [ActiveJob(r, now, r.worker in gone) for r in mine]
        jobs.sort(key=lambda j: j.record.started)
        return cls(jobs, _summaries(store, jobs, now, queue, adapters), list(corrupt), now)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "queues": [q.as_dict() for q in self.queues],
            "jobs": [j.as_dict() for j in self.jobs],
            "corrupt": [list(c) for c in self.corrupt],
        }

    def text(self) -> str:
        """For people: a table of the queues, then one of the jobs (coloured on a terminal)."""
        parts = []
        if self.queues:
            rows = [
                [
                    q.queue,
                    q.adapter,
                    "?" if q.waiting is None else str(q.waiting),
                    str(q.running),
                    str(q.zombies),
                    duration(q.oldest_age),
                    "-" if q.last_success_age is None else f"{duration(q.last_success_age)} ago",
                ]
                for q in self.queues
            ]
            headers = ["QUEUE", "FRAMEWORK", "WAITING", "RUNNING", "ZOMBIES", "OLDEST", "LAST SUCCESS"]
            parts.append(table(headers, rows, ["red" if q.zombies else None for q in self.queues]))
            unknown = sorted({q.adapter for q in self.queues if q.waiting is None})
            parts += [f"? {_UNCOUNTED.get(name, 'not counted here')}" for name in unknown]
        if not self.jobs:
            parts.append("no active guarded jobs")
        else:
            headers = ["JOB", "TASK", "QUEUE", "WORKER", "ATTEMPT", "AGE", "LAST PROGRESS", "PROGRESS"]
            headers += ["PROCS", "LEASE", "STATE"]
            rows = [self._row(j) for j in self.jobs]
            parts.append(table(headers, rows, [STATE_COLOURS.get(j.state) for j in self.jobs]))
        parts += [f"corrupt lease {job}: {why}" for job, why in self.corrupt]
        return "\n\n".join(parts)

    def _row(self, job: ActiveJob) -> list[str]:
        r, now = job.record, self.now
        progress = " ".join(part for part in (r.progress, repr(r.message) if r.message else "") if part)
        return [
            r.job_id,
            r.task,
            r.queue,
            r.worker,
            str(r.attempt),
            duration(now - r.started),
            "-" if r.last_progress is None else f"{duration(now - r.last_progress)} ago",
            progress or "-",
            "-" if r.processes is None else str(r.processes),
            duration(r.expires - now) if job.state != "stalled" else "expired",
            job.state,
        ]


_UNCOUNTED = {
    "celery": "Celery's waiting tasks are counted when the Celery app is named (-A proj)",
    "rq": "RQ's waiting jobs are counted when RQ's Redis is reachable (--rq-url)",
}
