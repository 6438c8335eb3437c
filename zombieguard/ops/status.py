"""What ``zombieguard status`` shows: every active guarded job, and a line per queue, read from
the leases (and the frameworks' queues), as data and as text."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from zombieguard.adapter import JobAdapter
from zombieguard.leases import Condition, LeaseRecord, LeaseStore, text


@dataclass(frozen=True)
class ActiveJob:
    """One row of ``zombieguard status``."""

    record: LeaseRecord
    now: float

    @property
    def state(self) -> Condition:
        """running, hung (alive, no progress), overdue (past hard limit), stalled (lease expired)."""
        return self.record.condition(self.now)

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
            "age": round(self.now - r.started, 3),
            "last_progress_age": None if r.last_progress is None else round(self.now - r.last_progress, 3),
            "progress": r.progress or None,
            "message": r.message or None,
            "processes": r.processes,
            "lease_expires_in": round(r.expires - self.now, 3),
        }


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


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
        jobs = [ActiveJob(r, now) for r in records if queue is None or r.queue == queue]
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
        """For people: a line per queue, then a table of the jobs."""
        now = self.now
        lines = []
        for q in self.queues:
            waiting = "?" if q.waiting is None else str(q.waiting)
            lines.append(
                f"queue {q.queue} ({q.adapter}): {waiting} waiting, {q.running} running"
                + (f", {q.zombies} ZOMBIE" if q.zombies else "")
                + f", oldest {duration(q.oldest_age)}, last success {duration(q.last_success_age)} ago"
            )
        if not self.jobs:
            return "\n".join([*lines, "no active guarded jobs"])
        rows = [
            [
                j.record.job_id,
                j.record.task,
                j.record.queue,
                j.record.worker,
                str(j.record.attempt),
                duration(now - j.record.started),
                duration(None if j.record.last_progress is None else now - j.record.last_progress),
                "-" if j.record.processes is None else str(j.record.processes),
                duration(j.record.expires - now) if j.state != "stalled" else "expired",
                j.state.upper() if j.state != "running" else j.state,
            ]
            for j in self.jobs
        ]
        headers = [
            "JOB",
            "TASK",
            "QUEUE",
            "WORKER",
            "ATTEMPT",
            "AGE",
            "LAST PROGRESS",
            "PROCS",
            "LEASE",
            "STATE",
        ]
        shown = table(headers, rows) + "".join(f"\ncorrupt lease {j}: {why}" for j, why in self.corrupt)
        return "\n".join([*lines, "", shown]) if lines else shown
