"""Helpers for tests of the core against real Redis: an adapter that records what the core asks of
it, job specs, attempts acquired at once, and leases made to expire without waiting."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.waiting import wait_until
from zombieguard.leases import AcquireStatus, JobSpec, LeaseRecord, LeaseState, LeaseStore, text
from zombieguard.policy import Policy
from zombieguard.recovery.deadletter import DeadLetterEntry
from zombieguard.worker.attempt import Attempt


@dataclass
class RecordingAdapter:
    """An adapter that records what the core asked of it (the framework side is tested per integration)."""

    name: str = "test"
    republishes_unstarted: bool = False
    reclaims: bool = False
    requeues_from_payload: bool = False
    requeued: list[str] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    republished: list[str] = field(default_factory=list)
    gone: list[Path] = field(default_factory=list)
    fail_requeue: bool = False
    ended: bool = False
    """Say the job had already ended in the framework."""
    die_after_fail: bool = False
    """Record the failure, then raise: the sweeper died before it finished the lease."""
    backlog: int | None = 0
    """What :meth:`waiting` says."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def requeue(self, record: LeaseRecord) -> bool:
        if self.fail_requeue:
            raise ConnectionError("the framework's broker is down")
        if self.ended:
            return False
        with self.lock:
            self.requeued.append(record.job_id)
        return True

    def fail(self, record: LeaseRecord, outcome: str, reason: str) -> bool:
        if self.ended:
            return False
        with self.lock:
            self.failed.append((record.job_id, outcome, reason))
        if self.die_after_fail:
            self.ended, self.die_after_fail = True, False
            raise RuntimeError("the sweeper died after the framework recorded the failure")
        return True

    def stop(self, record: LeaseRecord) -> None:
        with self.lock:
            self.stopped.append(record.job_id)

    def waiting(self, queue: str) -> int | None:
        return self.backlog

    def republish(self, entry: DeadLetterEntry) -> None:
        with self.lock:
            self.republished.append(entry.job_id)

    def reclaim(self, queues: Sequence[str], leased: Callable[[str], bool]) -> list[str]:
        return []

    def worker_gone(self, workdir: Path) -> None:
        with self.lock:
            self.gone.append(workdir)


def job(job_id: str, adapter: str = "test", task: str = "app.tasks.work") -> JobSpec:
    """A job description."""
    return JobSpec(job_id=job_id, adapter=adapter, task=task, queue="default", payload='{"args":[1]}')


def start(
    store: LeaseStore, job_id: str, policy: Policy, worker: str = "w1", adapter: str = "test"
) -> Attempt:
    """Acquire and wrap an attempt; fails the test when the store refuses."""
    spec = job(job_id, adapter)
    acquired = store.acquire(spec, worker, policy)
    assert acquired.status is AcquireStatus.ACQUIRED, acquired
    return Attempt(store, spec, worker, policy, acquired)


def expire(store: LeaseStore, job_id: str) -> None:
    """Make a running lease expire now, as if its worker froze for lease_ttl (no waiting in tests)."""
    key = store.lease_key(job_id)
    adapter = store.client.hget(key, "adapter")
    assert adapter is not None
    now = store.server_time()
    store.client.hset(key, "expires", repr(now - 0.001))
    store.client.zadd(store.due_key(text(adapter)), {job_id: now - 0.001})


def ended(store: LeaseStore, job_id: str, timeout: float = 10) -> LeaseRecord:
    """The job's lease once its end is recorded (a worker may record it after its framework's own)."""

    def done() -> LeaseRecord | None:
        record = store.record(job_id)
        return record if record is not None and record.state is LeaseState.DONE else None

    found: LeaseRecord = wait_until(done, timeout, what=f"the end of job {job_id} recorded")
    return found
