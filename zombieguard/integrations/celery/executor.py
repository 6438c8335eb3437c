"""Runs a task body under its lease, in the process that runs it: acquire (or a first delivery's
pending lease), the body, the end recorded or refused, and zombieguard's interrupts turned into
Celery's outcomes. :mod:`.prefork` and :mod:`.inprocess` say how each pool renews and enforces."""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from celery import states
from celery.app.task import Task
from celery.backends.base import BaseKeyValueStoreBackend
from celery.exceptions import Ignore, Reject, Retry, TimeLimitExceeded
from celery.exceptions import SoftTimeLimitExceeded as CelerySoftTimeLimitExceeded

from zombieguard.containment import contained, log
from zombieguard.enforcement.interrupts import Interrupt, interrupt_error
from zombieguard.enforcement.slot import JobSlot, execution_tag
from zombieguard.errors import ConfigurationError, HardTimeLimitExceeded, JobInterrupt, LeaseLost
from zombieguard.errors import SoftTimeLimitExceeded as GuardSoftTimeLimitExceeded
from zombieguard.events import JobCompleted, JobStarted, emit, listened
from zombieguard.integrations.celery import internals
from zombieguard.integrations.celery.adapter import ADAPTER
from zombieguard.integrations.celery.message import (
    Snapshot,
    delivery_attempt,
    first_delivery,
    queue_of,
    task_payload,
)
from zombieguard.leases import Acquired, AcquireStatus, DeferredRelease, JobSpec, LeaseState, Outcome
from zombieguard.policy import Policy
from zombieguard.worker.attempt import Attempt, AttemptHooks, running
from zombieguard.worker.heartbeat import Heartbeat
from zombieguard.worker.lifecycle import record_end, wait_out_recovery

if TYPE_CHECKING:
    from zombieguard.integrations.celery.worker import CeleryRuntime


class SoftTimeLimit(GuardSoftTimeLimitExceeded, CelerySoftTimeLimitExceeded):  # type: ignore[misc]
    """Raised in a task past its ``soft_timeout``: both zombieguard's and Celery's soft-limit exception,
    so that ``except celery.exceptions.SoftTimeLimitExceeded`` keeps working on every pool."""


@dataclass(slots=True)
class Running:
    """The attempt running in one thread, and how it is being stopped."""

    attempt: Attempt
    generation: int = 0
    """Its start's generation in its slot (names it to an interrupt aimed at it)."""
    interrupt: Interrupt | None = None
    body_done: bool = False
    stack: str | None = None
    recorded: bool = False
    """Its end was recorded for it (threads pool: failed at its limit while its thread was stuck);
    whatever the thread does when it comes back is not recorded."""
    slot: JobSlot | None = None
    """Threads and solo: the slot of the thread running it."""
    thread: int | None = None
    """Threads: the native id of the thread running it (the processes it starts are that thread's)."""


class Executor:
    """Runs task bodies under their leases, in the process that runs them.

    Subclasses say how the running attempt is announced to its enforcer and renewed: through a slot
    that the worker's main process reads (prefork), or the worker's own heartbeat and watchdog
    (threads, solo).
    """

    def __init__(self, runtime: CeleryRuntime, releases: Heartbeat) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.releases = releases
        """Writes deferred leases and releases: this process's heartbeat."""
        self.pid = os.getpid()
        """This process (an executor is made where it runs tasks, after any fork)."""
        self.own_environment = True
        """One task at a time runs in this process (not so on the threads pool)."""
        self._local = threading.local()

    @property
    def current(self) -> Running | None:
        """The attempt running in this thread."""
        running_now: Running | None = getattr(self._local, "running", None)
        return running_now

    def run(self, task: Task, request: Any, body: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """Run ``body(*args, **kwargs)`` (the body of ``task``, for ``request``) under the task's lease."""
        try:
            policy = self.runtime.policy(task, getattr(request, "timelimit", None))
        except ConfigurationError as exc:
            log.error("celery task %s[%s] runs unguarded: %s", task.name, request.id, exc)
            return body(*args, **kwargs)
        attempt = self._start(task, policy, request)
        if attempt is None:
            return body(*args, **kwargs)
        state = Running(attempt)
        self._local.running = state
        self.begin(state)
        if attempt.pending:
            self.releases.defer_acquire(attempt)
        try:
            with running(attempt, self.own_environment):
                result = body(*args, **kwargs)
            state.body_done = True
        except JobInterrupt as exc:
            state.body_done = True
            self._interrupted(state, exc)
        except Retry:
            state.body_done = True
            self._release(state, Outcome.FAILED, "retry")
            raise
        except Reject as exc:
            state.body_done = True
            self._release(
                state, Outcome.REQUEUED if exc.requeue else Outcome.FAILED, f"rejected: {exc.reason}"
            )
            raise
        except BaseException as exc:
            state.body_done = True
            if not self._release(state, Outcome.FAILED, f"{type(exc).__name__}: {exc}"[:500]):
                raise Ignore() from None
            raise
        finally:
            unleased = attempt.finish_unleased()  # after this, its lease is never written
            if unleased:
                self.releases.drop(attempt)
            self.end(state)
            self._local.running = None
        if state.recorded:
            raise Ignore()
        self._succeeded(state, unleased)
        return result

    def _start(self, task: Task, policy: Policy, request: Any) -> Attempt | None:
        """The task's attempt: pending for a first delivery (``lease_delay``), else acquired now."""
        spec = JobSpec(request.id, ADAPTER, task.name, queue_of(request))
        if policy.lease_delay is not None and first_delivery(request):
            # Nothing can have run it before: its lease is written only if it runs long enough.
            describe, pend = self.describer(task, request)
            if pend:
                hooks = self.hooks()
                attempt = Attempt(
                    self.store, spec, self.runtime.name, policy, None, hooks=hooks, describe=describe
                )
                if listened(JobStarted):
                    emit(ADAPTER, attempt.event(JobStarted))
                return attempt
            spec = JobSpec(spec.job_id, ADAPTER, spec.task, spec.queue, describe())
        else:
            # The payload before the body runs: a body may change its arguments in place.
            spec = JobSpec(spec.job_id, ADAPTER, spec.task, spec.queue, task_payload(task, request))
        return self._acquire(task, spec, policy, delivery_attempt(request))

    def describer(self, task: Task, request: Any) -> tuple[Callable[[], str], bool]:
        """What computes a pending attempt's payload when its lease is written, and whether the
        attempt may be pending (False: the payload is computed now, and the lease written now)."""
        raise NotImplementedError

    def hooks(self) -> AttemptHooks:
        """What the attempt about to run in this thread tells, and asks, its renewer and enforcer."""
        raise NotImplementedError

    def _succeeded(self, state: Running, unleased: bool) -> None:
        """Record a body that returned (raises ``Ignore`` when the end is not this attempt's)."""
        attempt = state.attempt
        if unleased:
            self.releases.completed_unleased(attempt.job.queue)
            self._completed(attempt)
        elif attempt.safe_to_finish():
            self.releases.defer(DeferredRelease(attempt.job, attempt.token, Outcome.COMPLETED))
            self._completed(attempt)
        elif not self._release(state, Outcome.COMPLETED):
            raise Ignore()

    def _acquire(self, task: Task, spec: JobSpec, policy: Policy, delivery: int) -> Attempt | None:
        """The lease, as a new attempt; None to run unguarded (Redis away). Ignore when not to run."""
        worker = self.runtime.name
        releases = self.releases.take_deferred()
        sent_at = time.monotonic()

        def again() -> Acquired:
            nonlocal sent_at
            sent_at = time.monotonic()
            return self.store.acquire(spec, worker, policy, delivery)

        def waits(acquired: Acquired) -> bool:
            # A recovery being recorded, or a retry published before its attempt's end was written.
            busy = acquired.status is AcquireStatus.BUSY
            return busy and (acquired.holder_state is LeaseState.RECOVERING or acquired.attempt < delivery)

        try:
            first = self.store.send_acquire(spec, worker, policy, releases, delivery).result()
            acquired = wait_out_recovery(first, again, waits)
        except redis.RedisError as exc:
            for release in releases:
                self.releases.defer(release)
            log.warning("celery task %s runs unguarded: Redis for leases unreachable (%s)", spec.job_id, exc)
            return None
        if acquired.status is not AcquireStatus.ACQUIRED:
            if acquired.status is AcquireStatus.STALE and acquired.holder_state is LeaseState.DONE:
                with contained(f"celery task {spec.job_id}: its recorded end not put back"):
                    self._put_back_result(task, spec.job_id)
                with contained(f"celery task {spec.job_id}: its end not recorded in Celery"):
                    self._record_stopped_end(spec.job_id)
            log.warning(
                "celery task %s[%s] not run: delivery of attempt %d is %s (attempt %d is %s on %s)",
                spec.task,
                spec.job_id,
                delivery,
                acquired.status.value,
                acquired.attempt,
                acquired.holder_state or "superseded",
                acquired.holder or "-",
            )
            raise Ignore()
        attempt = Attempt(self.store, spec, worker, policy, acquired, sent_at=sent_at, hooks=self.hooks())
        emit(ADAPTER, attempt.event(JobStarted))
        return attempt

    def keep_result(self, task: Task, task_id: str) -> None:
        """Before Celery records a copy of a recovered attempt ``STARTED`` (``task_track_started``):
        keep the failure the result backend holds for the task, for whichever copy is refused.

        Kept in Redis, not in this process: two copies running at once in two processes would
        otherwise see each other's ``STARTED`` and the last one would leave it there.
        """
        backend = task.backend
        if not isinstance(backend, BaseKeyValueStoreBackend):
            return
        raw = backend.get(backend.get_key_for_task(task_id))
        # Celery never overwrites a SUCCESS itself; a FAILURE or REVOKED it does.
        if raw is not None and backend.decode_result(raw).get("status") in states.PROPAGATE_STATES:
            ttl = int(self.store.settings.tombstone_ttl * 1000)
            self.store.client.set(self.store.kept_result_key(task_id), raw, px=ttl)

    def _put_back_result(self, task: Task, task_id: str) -> None:
        """A copy refused as stale, its task ended: Celery has just recorded it ``STARTED`` over
        that end. Put the end back, as Celery stores one (expiry included)."""
        backend = task.backend
        raw = self.store.client.get(self.store.kept_result_key(task_id))
        if raw is None or not isinstance(backend, BaseKeyValueStoreBackend):
            return
        status = backend.decode_result(raw).get("status")
        internals.store_raw_result(backend, task_id, raw, status)

    def _record_stopped_end(self, task_id: str) -> None:
        """A copy refused as stale, its attempt stopped at a limit or by an operator: its worker may
        have died after the lease recorded that end and before Celery did (the copy is then the
        broker's redelivery). Record it in Celery now, the way a sweeper does, unless Celery has an
        end for the task already: else the task would stay PENDING for good."""
        record = self.store.record(task_id)
        if record is None or not record.history:
            return
        last = record.history[-1]
        if last.outcome in (Outcome.TIMED_OUT, Outcome.HUNG, Outcome.STOPPED):
            self.runtime.adapter.fail(record, last.outcome, last.reason)

    def _interrupted(self, state: Running, exc: JobInterrupt) -> None:
        """Turn zombieguard's interrupt into Celery's outcome (raises)."""
        policy = state.attempt.policy
        stack = state.stack or "".join(traceback.format_exception(exc))
        if isinstance(exc, LeaseLost) or state.interrupt is Interrupt.LOST:
            raise Ignore() from None  # superseded: nothing of this attempt is recorded
        if isinstance(exc, HardTimeLimitExceeded) or state.interrupt is Interrupt.HARD:
            reason = f"ran past its hard_timeout of {policy.hard_timeout:g} s"
            if not self._release(state, Outcome.TIMED_OUT, reason, stack):
                raise Ignore() from None
            raise TimeLimitExceeded(f"zombieguard: {reason}") from None
        reason = f"made no progress within its progress_timeout of {policy.progress_timeout:g} s"
        if not self._release(state, Outcome.HUNG, reason, stack):
            raise Ignore() from None
        raise TimeLimitExceeded(f"zombieguard: {reason}") from None

    def _release(self, state: Running, outcome: Outcome, reason: str = "", stack: str | None = None) -> bool:
        """End the attempt; False when its end is not this thread's to record: a newer attempt holds
        the task (this one's end is refused), or it was recorded already (a zombie thread's task)."""
        if state.recorded:
            return False
        return record_end(ADAPTER, state.attempt, outcome, reason, stack)

    @staticmethod
    def _completed(attempt: Attempt) -> None:
        if not listened(JobCompleted):
            return
        duration = time.monotonic() - attempt.started_monotonic
        emit(ADAPTER, attempt.event(JobCompleted, reason=Outcome.COMPLETED.value, duration=duration))

    def begin(self, state: Running) -> None:
        """Announce the attempt to whatever renews its lease and enforces its limits."""
        raise NotImplementedError

    def refused(self, attempt: Attempt) -> None:
        """A first delivery's lease, written after its body started, was refused (another attempt
        holds the task): stop the body; nothing of it is recorded."""
        raise NotImplementedError

    def end(self, state: Running) -> None:
        """The attempt ended: stop renewing and enforcing."""
        raise NotImplementedError

    def aimed_at(self, state: Running) -> bool:
        """Whether the interrupt signal being handled was sent for ``state``'s attempt (a signal
        sent for the task before may arrive in the next one)."""
        raise NotImplementedError

    def raise_interrupt(self, kind: Interrupt) -> None:
        """In the thread running a task: raise zombieguard's interrupt ``kind`` (from a signal)."""
        state = self.current
        if state is None or state.body_done:
            return  # no task, or it returned just before the limit: its end is being recorded
        if kind is not Interrupt.LOST and not self.aimed_at(state):
            log.warning(
                "celery task %s: a %s interrupt meant for the task before it ignored",
                state.attempt.job.job_id,
                kind,
            )
            return
        if kind is Interrupt.LOST:
            # The main process saw a renewal refused; the signal may be late, meant for an attempt
            # that ended before this one began in the same process: only Redis can tell.
            state.attempt.verify()  # raises LeaseLost when this attempt is superseded
            return
        state.interrupt = kind
        raise interrupt_error(kind, state.attempt.policy, "task", soft=SoftTimeLimit)


def announce(slot: JobSlot, attempt: Attempt, pid: int, *, keep_payload: bool) -> int:
    """Write ``attempt`` (run by process ``pid``: this one) to ``slot``, for the process that renews
    or enforces from outside; ``keep_payload``: with the pickled request of a pending attempt, for a
    process that may have to write its lease (the watchdog process, when no thread of the task's
    process can run).

    A pending attempt's lease may be written by that other process (the main process, or the
    watchdog process) when this one's threads do not write it in time (C code holding the GIL):
    under the attempt's tag, so that this process adopts it. Returns the slot's generation for it."""
    policy, started = attempt.policy, attempt.started_monotonic
    generation = slot.start(
        attempt.job.job_id,
        attempt.token,
        started,
        hard_deadline=started + policy.hard_timeout if policy.hard_timeout is not None else None,
        soft_deadline=started + policy.soft_timeout if policy.soft_timeout is not None else None,
        progress_timeout=policy.progress_timeout,
        confirmed_until=attempt.confirmed_until,
        started_at=attempt.started_at,
        attempt=attempt.number,
        stalls=attempt.stalls,
        pid=pid,
        lease_ttl=policy.lease_ttl,
        task=attempt.job.task,
        queue=attempt.job.queue,
        payload=attempt.describe.pickled
        if keep_payload and attempt.pending and isinstance(attempt.describe, Snapshot)
        else b"",
        lease_delay=policy.lease_delay if attempt.pending else None,
        max_stalls=policy.max_stalls,
        dead_letter=policy.dead_letter,
        overdue_grace=policy.overdue_grace,
        children_grace=policy.children_grace,
    )
    attempt.tag = execution_tag(slot.nonce, generation)
    return generation
