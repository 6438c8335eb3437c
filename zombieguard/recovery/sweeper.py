"""The sweeper: finds leases whose worker is gone or failed to stop its job, and decides.

- **stalled** (the lease expired: the worker is dead or frozen): requeue the job as a new attempt,
  or, after ``max_stalls`` recoveries, dead-letter it (or fail it, when ``dead_letter`` is off).
- **timed out** / **hung** while the lease is still renewed, ``overdue_grace`` past the limit: the
  worker could not stop it (stuck in C code with no one to kill it, say). It is failed, not
  recovered: running it again would hang again.

Claims are atomic (``claim.lua``), so any number of sweepers may run: each lease is claimed by one.
The adapter acts before the claim is finished; if the sweeper dies in between, the claim expires
after ``claim_ttl`` and another sweeper repeats the step, which fencing makes harmless.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from zombieguard.adapter import JobAdapter
from zombieguard.containment import contained, log, named
from zombieguard.containment import report as report_error
from zombieguard.errors import ZombieGuardError
from zombieguard.events import (
    JobCompleted,
    JobDeadLettered,
    JobEvent,
    JobHungEvent,
    JobRecovered,
    JobStalled,
    JobTimedOut,
    Subject,
    WorkerZombie,
    emit,
)
from zombieguard.leases import (
    AttemptRecord,
    Claimed,
    CorruptRecord,
    FinishedState,
    LeaseRecord,
    LeaseState,
    LeaseStore,
    Outcome,
)
from zombieguard.leases.connection import failed_over, primary_of
from zombieguard.recovery import silence
from zombieguard.recovery.deadletter import DeadLetterEntry


def _say(record: LeaseRecord, what: str, then: str) -> None:
    """One log line for a sweeper's decision on a job: its integration, task and id, the attempt
    and what happened to it, and what happens next."""
    log.warning(
        "%s: attempt %d %s; %s", named(record.adapter, record.task, record.job_id), record.attempt, what, then
    )


def record_event(kind: type[JobEvent], record: LeaseRecord, reason: str, **extra: Any) -> JobEvent:
    """An event about the current attempt of a lease record."""
    subject = Subject(
        job_id=record.job_id,
        task=record.task,
        queue=record.queue,
        attempt=record.attempt,
        worker=record.worker,
        adapter=record.adapter,
        started_at=record.started,
        last_beat_at=record.last_beat,
        last_progress_at=record.last_progress,
        payload=record.payload,
        policy=record.policy(),
    )
    return subject.event(kind, reason, record.stack or None, **extra)


@dataclass
class SweepReport:
    """What one sweep did, by job id."""

    recovered: list[str] = field(default_factory=list)
    dead_lettered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    """Leases whose job had ended already in its framework: closed, nothing recovered."""
    republished: list[str] = field(default_factory=list)
    """Requeued jobs no worker started in time, published again."""
    reclaimed: list[str] = field(default_factory=list)
    """Jobs a worker took from a queue and never started, put back (see ``JobAdapter.reclaim``)."""
    corrupt: list[tuple[str, str]] = field(default_factory=list)
    dead_workers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Claims whose adapter step failed; they are retried once the claim expires."""
    full: bool = False
    """A batch came back full: there may be more due right now."""


MAX_REPUBLISHED = 3
"""How many times a requeued job that no worker starts is published again."""
REPUBLISH_AFTER = 1.0
"""Seconds after a requeue to look whether a worker started the job (at most a third of lease_ttl);
twice and four times that for the next looks. A live idle worker starts it in milliseconds; a copy
that went to a frozen consumer is followed by one that RabbitMQ hands to the next consumer. When
every worker is busy, the job's extra copies (at most three) are refused as stale once delivered."""


def _republish_after(adapter: JobAdapter, record: LeaseRecord, republished: int) -> float | None:
    """When to look again at a job just requeued, for adapters that publish unstarted jobs again
    (``republished``: how many times it was published again already)."""
    if not adapter.republishes_unstarted or republished >= MAX_REPUBLISHED:
        return None
    return float(min(REPUBLISH_AFTER, record.lease_ttl / 3) * 2**republished)


class Sweeper:
    """Claims due leases of the given integrations and acts on them through their adapters."""

    def __init__(
        self,
        store: LeaseStore,
        adapters: Mapping[str, JobAdapter],
        name: str | None = None,
        sender: str = "sweeper",
    ) -> None:
        self.store = store
        self.adapters = dict(adapters)
        self.name = name or f"sweeper@{socket.gethostname()}:{os.getpid()}"
        self.sender = sender
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _demoted(self, primary: tuple[str, int] | None) -> bool:
        """No replica acknowledged this sweep's claims (see :func:`failed_over`): a former primary's
        claims are dropped (they go with its data, and the new primary's sweep makes them again), a
        primary whose replicas are only slow or down has them acted on."""
        now = failed_over(self.store.client, primary, self._stop.wait)
        if now is None:
            log.warning("sweeper %s: no replica acknowledged its claims; acting on them", self.name)
            return False
        log.warning(
            "sweeper %s: claims made on %s:%s, no longer the primary (%s:%s); left to the new one",
            self.name,
            *(primary or ("?", "?")),
            *now,
        )
        return True

    def sweep_once(self) -> SweepReport:
        """One pass over every adapter: claim what is due and act on it. Raises RedisError."""
        report = SweepReport()
        # On a Sentinel service, decide on the primary the sentinels name now: a former one that is
        # still up (Sentinel demotes it seconds after a failover) holds leases its workers left. Asked
        # at each sweep (once a second), not from a cache: claims no replica acknowledged are then
        # judged against the node they were made on.
        primary = primary_of(self.store.client)
        for adapter_name, adapter in self.adapters.items():
            sweep = self.store.claim(adapter_name, self.name)
            if not sweep.replicated and (sweep.claimed or sweep.dead_workers) and self._demoted(primary):
                continue
            report.full = (
                report.full or len(sweep.claimed) + len(sweep.corrupt) >= self.store.settings.sweep_batch
            )
            for job_id, problem in sweep.corrupt:
                log.warning("sweeper %s: skipped corrupt lease %s: %s", self.name, job_id, problem)
                report.corrupt.append((job_id, problem))
            for dead in sweep.dead_workers:
                report.dead_workers.append(dead.name)
                emit(
                    self.sender,
                    WorkerZombie(
                        dead.name,
                        dead.info.get("adapter", adapter_name),
                        "stopped heartbeating without leaving (dead or frozen)",
                        tuple(sorted(dead.info.items())),
                    ),
                )
            for claimed in sweep.claimed:
                try:
                    self._act(adapter, claimed, report)
                except Exception as exc:
                    report.errors.append(claimed.record.job_id)
                    log.exception(
                        "sweeper %s: %s of job %s failed; retried after claim_ttl (%s)",
                        self.name,
                        claimed.reason,
                        claimed.record.job_id,
                        exc,
                    )
            if adapter.reclaims:
                self._reclaim(adapter_name, adapter, report)
        return report

    def _reclaim(self, adapter_name: str, adapter: JobAdapter, report: SweepReport) -> None:
        """The adapter's :meth:`~JobAdapter.reclaim`, after the claims are acted on; its failure
        (Redis away, the framework's own store) is logged, and the next sweep tries again."""

        def leased(job_id: str) -> bool:
            try:
                record = self.store.record(job_id)
            except CorruptRecord:
                return True  # not this sweep's to decide
            return record is not None and record.state in (LeaseState.RUNNING, LeaseState.RECOVERING)

        try:
            report.reclaimed += adapter.reclaim(self.store.queues_of(adapter_name), leased)
        except Exception as exc:
            report.errors.append(f"reclaim {adapter_name}")
            log.warning(
                "sweeper %s: reclaiming %s jobs failed (%r); tried again next sweep",
                self.name,
                adapter_name,
                exc,
            )

    def _act(self, adapter: JobAdapter, claimed: Claimed, report: SweepReport) -> None:
        record = claimed.record
        if claimed.reason is Outcome.STALLED:
            self._stalled(adapter, claimed, report)
            return
        if claimed.reason is Outcome.UNSTARTED:
            self._unstarted(adapter, claimed, report)
            return
        if claimed.reason is Outcome.STOPPED:
            self._stopped(adapter, claimed, report)
            return
        hung = claimed.reason is Outcome.HUNG
        limit = record.progress_timeout if hung else record.hard_timeout
        why = (
            f"{'no progress' if hung else 'still running'} {record.overdue_grace:g} s past its "
            f"{'progress_timeout' if hung else 'hard_timeout'} of {limit:g} s; its worker did not stop it"
        )
        with contained(f"sweeper asking {adapter.name} to stop {record.job_id}"):
            adapter.stop(record)
        ended = record.ended_attempt(claimed.reason, why, claimed.claimed_at, record.stack or None)
        if not self._failed(
            adapter, claimed, claimed.reason, why, FinishedState.FAILED, ended=ended, report=report
        ):
            return
        if self._finish(claimed, FinishedState.FAILED, ended):
            report.failed.append(record.job_id)
            _say(record, why, f"failed as {claimed.reason.value.replace('_', ' ')}")
            emit(self.sender, record_event(JobHungEvent if hung else JobTimedOut, record, why))

    def _stalled(self, adapter: JobAdapter, claimed: Claimed, report: SweepReport) -> None:
        record = claimed.record
        stalls = record.stalls + 1
        if record.abandoned_how:
            why = record.abandoned_how
        elif record.worker_gone is not None:
            why = f"worker {record.worker} died: its presence connection to Redis closed"
        else:
            why = f"lease expired: worker {record.worker} stopped renewing it (dead or frozen)"
        ended = record.ended_attempt(Outcome.STALLED, why, claimed.claimed_at)
        stalled = record_event(JobStalled, record, why, details=(("stalls", stalls),))
        if stalls <= record.max_stalls:
            if not adapter.requeue(record):
                self._already_ended(claimed, ended, report)
            elif self._finish(
                claimed, FinishedState.QUEUED, ended, republish_after=_republish_after(adapter, record, 0)
            ):
                report.recovered.append(record.job_id)
                _say(
                    record,
                    f"stalled ({why})",
                    f"requeued as attempt {record.attempt + 1} (stall {stalls} of max_stalls "
                    f"{record.max_stalls})",
                )
                emit(self.sender, stalled)
                details = (("stalls", stalls), ("next_attempt", record.attempt + 1))
                emit(self.sender, record_event(JobRecovered, record, why, details=details))
            return
        verdict = f"stalled {stalls} times (max_stalls={record.max_stalls}): a poison pill"
        outcome, state = (
            (Outcome.DEAD_LETTERED, FinishedState.DEAD_LETTERED)
            if record.dead_letter
            else (Outcome.STALLED, FinishedState.FAILED)
        )
        if not self._failed(adapter, claimed, outcome, verdict, state, ended=ended, report=report):
            return
        if not record.dead_letter:
            if self._finish(claimed, FinishedState.FAILED, ended):
                report.failed.append(record.job_id)
                _say(record, f"stalled ({why})", f"{verdict}; failed (dead_letter is off)")
                emit(self.sender, stalled)
            return
        entry = DeadLetterEntry.from_claim(claimed, ended, verdict)
        if self._finish(claimed, FinishedState.DEAD_LETTERED, ended, entry.to_json()):
            report.dead_lettered.append(record.job_id)
            _say(
                record,
                f"stalled ({why})",
                f"{verdict}; dead-lettered (see: zombieguard dlq show {record.job_id})",
            )
            emit(self.sender, stalled)
            emit(self.sender, record_event(JobDeadLettered, record, verdict, details=(("stalls", stalls),)))

    def kill(self, job_id: str, stopped_by: str) -> bool:
        """Stop a running job from outside (``zombieguard kill``): it ends failed (stopped), not
        recovered. False when it is not running. Raises RedisError, or the adapter's error."""
        claimed = self.store.seize(job_id, self.name, stopped_by)
        if claimed is None:
            return False
        adapter = self.adapters.get(claimed.record.adapter)
        if adapter is None:
            raise ZombieGuardError(
                f"job {job_id} is a {claimed.record.adapter} job and that integration is not available here"
            )
        report = SweepReport()
        self._stopped(adapter, claimed, report)
        return job_id in report.failed or job_id in report.ended

    def _stopped(self, adapter: JobAdapter, claimed: Claimed, report: SweepReport) -> None:
        record = claimed.record
        why = f"stopped by {record.stopped_by or 'an operator'}"
        with contained(f"{self.name} asking {adapter.name} to stop {record.job_id}"):
            adapter.stop(record)
        ended = record.ended_attempt(Outcome.STOPPED, why, claimed.claimed_at)
        if not self._failed(
            adapter, claimed, Outcome.STOPPED, why, FinishedState.FAILED, ended=ended, report=report
        ):
            return
        if self._finish(claimed, FinishedState.FAILED, ended):
            report.failed.append(record.job_id)
            _say(record, why, "failed as stopped")
            details = (("stopped_by", record.stopped_by),)
            emit(self.sender, record_event(JobCompleted, record, Outcome.STOPPED.value, details=details))

    def _unstarted(self, adapter: JobAdapter, claimed: Claimed, report: SweepReport) -> None:
        """A requeued job no worker started: publish it again. The copies carry one attempt number,
        so whichever is delivered first runs and the others are refused as stale."""
        record = claimed.record
        if not adapter.requeue(record):
            self._already_ended(claimed, None, report)
            return
        after = _republish_after(adapter, record, record.republished + 1)
        if self._finish(claimed, FinishedState.QUEUED, None, republish_after=after):
            report.republished.append(record.job_id)
            log.warning(
                "sweeper %s: job %s was requeued but no worker started it; published it again",
                self.name,
                record.job_id,
            )

    def _failed(
        self,
        adapter: JobAdapter,
        claimed: Claimed,
        outcome: Outcome,
        why: str,
        state: FinishedState,
        *,
        ended: AttemptRecord | None,
        report: SweepReport,
    ) -> bool:
        """Fail the claimed job in its framework, its end (``state``) written down in the lease
        first. True when this sweeper is to finish the lease as ``state``: it failed the job now, or
        a sweeper that claimed it before did and died before finishing. False when the job had ended
        by itself (the lease is closed) or the claim was taken over."""
        if not self.store.decide(claimed, state):
            self._taken_over(claimed)
            return False
        if adapter.fail(claimed.record, outcome, why) or claimed.record.verdict is state:
            return True
        self._already_ended(claimed, ended, report)
        return False

    def _already_ended(self, claimed: Claimed, ended: AttemptRecord | None, report: SweepReport) -> None:
        """The framework recorded the job's end but the worker died before the lease's release was
        written (it is written after the end when that is safe): close the lease, nothing to recover."""
        if self._finish(claimed, FinishedState.ENDED, ended):
            report.ended.append(claimed.record.job_id)

    def _finish(
        self,
        claimed: Claimed,
        state: FinishedState,
        ended: AttemptRecord | None,
        entry: str = "",
        republish_after: float | None = None,
    ) -> bool:
        if self.store.finish(claimed, state, ended, entry, republish_after):
            return True
        self._taken_over(claimed)
        return False

    def _taken_over(self, claimed: Claimed) -> None:
        log.warning(
            "sweeper %s: claim of %s was taken over before it finished (claim_ttl=%gs too short?)",
            self.name,
            claimed.record.job_id,
            self.store.settings.claim_ttl,
        )

    def _run(self) -> None:
        failures = 0
        silence_checked = 0.0
        while not self._stop.is_set():
            report = SweepReport()
            try:
                report = self.sweep_once()
                failures = 0
                threshold = self.store.settings.silence_alert
                if threshold is not None and time.monotonic() - silence_checked >= silence.period(threshold):
                    silence_checked = time.monotonic()
                    silence.check_silence(self.store, self.adapters, self.sender)
            except redis.RedisError as exc:
                failures += 1
                if failures == 1 or failures % 30 == 0:
                    log.warning(
                        "sweeper %s: Redis unreachable (%d sweeps in a row): %s", self.name, failures, exc
                    )
            except Exception as exc:
                report_error(f"sweeper {self.name}", exc)
            if not report.full:
                self._stop.wait(self.store.settings.sweep_interval)

    def start(self) -> None:
        """Sweep in a background thread every ``sweep_interval`` (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"zombieguard-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the background thread and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
