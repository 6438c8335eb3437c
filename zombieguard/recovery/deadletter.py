"""The dead-letter queue: jobs that kept stalling, kept with their whole story for a person to read.

Entries are written by the sweeper in the same script that finishes the job's lease (``finish.lua``),
so a job is never both dead-lettered and recovered. The queue is bounded: ``dead_letter_max_entries``
(oldest dropped first) and ``dead_letter_max_age``. A corrupt entry is reported and skipped.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from zombieguard.adapter import JobAdapter
from zombieguard.errors import ZombieGuardError
from zombieguard.leases import AttemptRecord, Claimed, LeaseStore, scored_members
from zombieguard.leases import text as reply_text

log = logging.getLogger("zombieguard.recovery.deadletter")


@dataclass(frozen=True)
class DeadLetterEntry:
    """One dead-lettered job and its story."""

    job_id: str
    task: str
    queue: str
    adapter: str
    reason: str
    payload: str
    """The job as the framework serialised it (its arguments among it)."""
    attempts: tuple[AttemptRecord, ...]
    checkpoint: Any
    dead_lettered_at: float
    """Server time."""

    @classmethod
    def from_claim(cls, claimed: Claimed, ended: AttemptRecord, reason: str) -> DeadLetterEntry:
        """The entry for a claimed lease whose last attempt ended as ``ended``."""
        record = claimed.record
        return cls(
            job_id=record.job_id,
            task=record.task,
            queue=record.queue,
            adapter=record.adapter,
            reason=reason,
            payload=record.payload,
            attempts=(*record.history, ended),
            checkpoint=None if claimed.checkpoint is None else json.loads(claimed.checkpoint),
            dead_lettered_at=claimed.claimed_at,
        )

    def to_json(self) -> str:
        """The stored form (``dead_lettered_at`` is kept as the index score)."""
        return json.dumps(
            {
                "job_id": self.job_id,
                "task": self.task,
                "queue": self.queue,
                "adapter": self.adapter,
                "reason": self.reason,
                "payload": self.payload,
                "attempts": [json.loads(a.to_json()) for a in self.attempts],
                "checkpoint": self.checkpoint,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str, dead_lettered_at: float) -> DeadLetterEntry:
        """Parse the stored form; ValueError naming the problem when it is unreadable."""
        try:
            data = json.loads(text)
            return cls(
                job_id=str(data["job_id"]),
                task=str(data["task"]),
                queue=str(data["queue"]),
                adapter=str(data["adapter"]),
                reason=str(data["reason"]),
                payload=str(data.get("payload", "")),
                attempts=tuple(AttemptRecord.from_json(json.dumps(a)) for a in data["attempts"]),
                checkpoint=data.get("checkpoint"),
                dead_lettered_at=dead_lettered_at,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"dead-letter entry unreadable: {exc!r}") from None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (for ``--json`` output)."""
        data: dict[str, Any] = json.loads(self.to_json())
        data["dead_lettered_at"] = self.dead_lettered_at
        with contextlib.suppress(ValueError):  # the integration's payload, JSON itself when it is
            data["payload"] = json.loads(self.payload)
        return data


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which entries an operation applies to; every field that is set must match."""

    task: str | None = None
    """A glob on the task name."""
    queue: str | None = None
    reason: str | None = None
    older_than: float | None = None
    """Seconds since dead-lettering."""
    newer_than: float | None = None

    def matches(self, entry: DeadLetterEntry, now: float) -> bool:
        """Whether ``entry`` passes this filter at server time ``now``."""
        age = now - entry.dead_lettered_at
        return (
            (self.task is None or fnmatch.fnmatchcase(entry.task, self.task))
            and (self.queue is None or entry.queue == self.queue)
            and (self.reason is None or entry.reason == self.reason)
            and (self.older_than is None or age >= self.older_than)
            and (self.newer_than is None or age <= self.newer_than)
        )


class DeadLetterStore:
    """List, show, requeue and purge dead-lettered jobs."""

    def __init__(self, store: LeaseStore) -> None:
        self.store = store
        self.client = store.client

    def entries(
        self, where: DeadLetterFilter | None = None
    ) -> tuple[list[DeadLetterEntry], list[tuple[str, str]]]:
        """Entries matching ``where``, oldest first, and the corrupt ones as (job id, problem)."""
        scored = scored_members(self.client, self.store.dlq_index_key)
        raw = self.client.hmget(self.store.dlq_key, [j for j, _ in scored]) if scored else []
        now = self.store.server_time()
        entries: list[DeadLetterEntry] = []
        corrupt: list[tuple[str, str]] = []
        for (job_id, at), stored in zip(scored, raw, strict=True):
            if stored is None:
                corrupt.append((job_id, "indexed but missing"))
                continue
            try:
                entry = DeadLetterEntry.from_json(reply_text(stored), at)
            except ValueError as exc:
                log.warning("dead-letter entry %s skipped: %s", job_id, exc)
                corrupt.append((job_id, str(exc)))
                continue
            if where is None or where.matches(entry, now):
                entries.append(entry)
        return entries, corrupt

    def get(self, job_id: str) -> DeadLetterEntry | None:
        """One entry, None if there is none; ValueError if it is unreadable."""
        raw = self.client.hget(self.store.dlq_key, job_id)
        if raw is None:
            return None
        at = self.client.zscore(self.store.dlq_index_key, job_id)
        return DeadLetterEntry.from_json(reply_text(raw), float(at or 0.0))

    def requeue(self, entries: Sequence[DeadLetterEntry], adapters: Mapping[str, JobAdapter]) -> list[str]:
        """Enqueue ``entries`` again through their adapters with a fresh stall budget; return the ids.

        An entry leaves the queue only once its adapter republished it.
        """
        done: list[str] = []
        for entry in entries:
            adapter = adapters.get(entry.adapter)
            if adapter is None:
                raise ZombieGuardError(
                    f"cannot requeue {entry.job_id!r}: it is a {entry.adapter} job and the {entry.adapter} "
                    "integration is not available here"
                )
            # The tombstone would make the new delivery look stale and carry the old stall count.
            self.client.delete(self.store.lease_key(entry.job_id))
            adapter.republish(entry)
            self._drop(entry.job_id, keep_checkpoint=True)
            done.append(entry.job_id)
        return done

    def purge(self, job_ids: Sequence[str]) -> int:
        """Delete entries (and their checkpoints); return how many existed."""
        return sum(self._drop(job_id, keep_checkpoint=False) for job_id in job_ids)

    def _drop(self, job_id: str, keep_checkpoint: bool) -> int:
        # The index first: a reader between the two finds an entry it does not list, never one it
        # lists without its record (one slot of a Cluster takes no MULTI from every redis-py).
        pipe = self.client.pipeline(transaction=False)
        pipe.zrem(self.store.dlq_index_key, job_id)
        pipe.hdel(self.store.dlq_key, job_id)
        if not keep_checkpoint:
            pipe.delete(self.store.checkpoint_key(job_id))
        return int(pipe.execute()[1])
