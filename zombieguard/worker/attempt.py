"""The running attempt: what a job's ``beat()`` and ``checkpoint()`` talk to.

An integration acquires a lease, wraps it in an :class:`Attempt`, and runs the job inside
:func:`running`. Inside, :func:`zombieguard.beat` and :func:`zombieguard.checkpoint` find the attempt
through a context variable (per thread, so thread pools work).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from zombieguard.containment import log, named
from zombieguard.enforcement.children import OWNER_VARIABLE, JobProcesses, marked
from zombieguard.errors import LeaseLost, NotInGuardedJob
from zombieguard.events import JobEvent, LeaseLostEvent, LeaseVanished, Subject, emit
from zombieguard.leases import Acquired, AcquireStatus, CorruptRecord, JobSpec, LeaseStore, Outcome
from zombieguard.policy import Policy

# A beat is recorded locally at once (the watchdog reads it); it reaches Redis at most this often,
# so that a job may call beat() in a tight loop. A checkpoint always makes the round trip.
BEAT_SEND_INTERVAL = 1.0

E = TypeVar("E", bound=JobEvent)


@dataclasses.dataclass(frozen=True, slots=True)
class AttemptHooks:
    """What an attempt tells, and asks, the threads and processes that renew and enforce it (its
    worker's heartbeat and watchdog, a slot another process reads). Each is optional."""

    progress: Callable[[float], None] | None = None
    """Called with the monotonic time of each beat or checkpoint (e.g. to tell a watchdog process)."""
    confirmed: Callable[[float], None] | None = None
    """Called with each new ``confirmed_until`` (e.g. to tell a horse through shared memory)."""
    confirmations: Callable[[], float] | None = None
    """Another process's ``confirmed_until`` for this attempt (a horse reads its parent's)."""
    acquired: Callable[[Attempt], None] | None = None
    """Called once a pending lease is written (from whichever thread wrote it)."""
    refused: Callable[[Attempt], None] | None = None
    """Called when a pending lease is refused (another attempt holds the job) and this attempt is
    marked lost, so that its body can be stopped."""
    ending: Callable[[], bool] | None = None
    """Whether the body has ended and its end is being recorded (perhaps by another process): a
    renewal refused from then on is that record, not a lost lease."""


NO_HOOKS = AttemptHooks()
"""An attempt nothing around it needs to hear from."""


class Attempt:
    """One execution of one job, holding the job's lease under a fencing token."""

    # One is built for every job: slots make that cheaper, and no attribute is set by mistake.
    __slots__ = (
        "_acquire_lock",
        "_last_sent",
        "_lock",
        "_lost",
        "_pending",
        "_unanswered",
        "_unguarded",
        "checkpoint_json",
        "confirmed_until",
        "describe",
        "hooks",
        "job",
        "last_progress_monotonic",
        "number",
        "policy",
        "processes",
        "stalls",
        "started_at",
        "started_monotonic",
        "store",
        "tag",
        "token",
        "worker",
    )

    def __init__(
        self,
        store: LeaseStore,
        job: JobSpec,
        worker: str,
        policy: Policy,
        acquired: Acquired | None,
        *,
        sent_at: float | None = None,
        hooks: AttemptHooks = NO_HOOKS,
        describe: Callable[[], str] | None = None,
    ) -> None:
        self.store = store
        self.job = job
        self.worker = worker
        self.policy = policy
        self.hooks = hooks
        self._pending = acquired is None
        """The lease is not written yet (a first delivery running within its ``lease_delay``):
        :meth:`acquire_now` writes it, or :meth:`finish_unleased` ends the attempt without it."""
        self._acquire_lock = threading.Lock()
        self._unanswered = False
        """A try to write the pending lease failed in Redis (it may have been written all the same)."""
        self._unguarded = False
        """The pending lease could not be written: nothing of this attempt is recorded in Redis."""
        self.token, self.number, self.stalls = 0, 1, 0
        self.started_at = time.time()
        """Server time at acquire (this process's clock while the lease is pending)."""
        self.checkpoint_json: str | None = None
        if acquired is not None:
            self.token, self.number, self.stalls = acquired.token, acquired.attempt, acquired.stalls
            self.started_at, self.checkpoint_json = acquired.started, acquired.checkpoint
        self.started_monotonic = time.monotonic()
        self.last_progress_monotonic = self.started_monotonic
        self._last_sent = self.started_monotonic
        self._lost: LeaseLost | None = None
        self._lock = threading.Lock()
        self.processes: JobProcesses | None = None
        """Where the processes the job starts are, once its integration said (its heartbeat counts
        them for ``zombieguard status``)."""
        self.confirmed_until = (self.started_monotonic if sent_at is None else sent_at) + policy.lease_ttl
        """Monotonic time until which no one else can have claimed the lease, as far as this process
        knows: a renewal's send time plus ``lease_ttl`` (the server set expiry after it was sent)."""
        self.tag = ""
        """Names this execution for a pending lease (see :func:`zombieguard.enforcement.slot.execution_tag`):
        another process of the worker that writes the lease for it (its own could not run) writes
        it under this tag, and :meth:`acquire_now` adopts it."""
        self.describe = describe
        """Computes ``job.payload`` when it is first needed (the lease written, an event), for a
        pending attempt whose payload costs more than a job ending within its ``lease_delay`` should
        pay; None once ``job.payload`` holds it."""

    @property
    def pending(self) -> bool:
        """Whether the lease is still to be written (see :meth:`acquire_now`)."""
        return self._pending

    def acquire_now(self) -> None:
        """Write a pending lease (nothing when it is written already or the attempt ended without
        it). When another attempt holds the job, this one is marked lost (``hooks.refused`` is told).
        Raises ``redis.RedisError`` with the lease still pending."""
        if not self._pending:
            return
        with self._acquire_lock:
            if not self._pending:
                return
            job = self.described()
            sent_at = time.monotonic()
            try:
                acquired = self.store.acquire(job, self.worker, self.policy, self.number, tag=self.tag)
            except redis.RedisError:
                self._unanswered = True
                raise
            self._pending = False
            if acquired.status is AcquireStatus.ACQUIRED:
                self.token = acquired.token
                self.number = acquired.attempt
                self.stalls = acquired.stalls
                self.started_at = acquired.started
                self.checkpoint_json = acquired.checkpoint
                self.confirmed_until = sent_at + self.policy.lease_ttl
                if self.hooks.acquired is not None:
                    self.hooks.acquired(self)
                return
            holder = f"attempt {acquired.attempt} is {acquired.holder_state or 'superseded'}"
            if self._unanswered:
                # An earlier try may have written the lease before its reply was lost: the holder
                # may be this attempt itself. Run on unguarded rather than stop it for that.
                log.warning("job %s runs unguarded: its lease is uncertain (%s)", self.job.job_id, holder)
                self._unguarded = True
                return
            # Lost before the lock is left: the task's own thread, ending, must find it so.
            self.mark_lost(LeaseLost(self.job.job_id, 0, f"its lease was refused after it started: {holder}"))
        if self.hooks.refused is not None:
            self.hooks.refused(self)

    def run_unguarded(self) -> None:
        """Run on without a lease (the lease Redis is unreachable): nothing of this attempt is
        recorded in Redis, but its beats still count as progress for the limits enforced locally."""
        with self._acquire_lock:
            self._pending = False
            self._unguarded = True

    @property
    def unguarded(self) -> bool:
        """Whether this attempt runs without a lease (see :meth:`run_unguarded`)."""
        return self._unguarded

    def finish_unleased(self) -> bool:
        """End a pending attempt without ever writing its lease (it ended within its
        ``lease_delay``, or its lease could not be written); False when the lease is written (or
        being written): release it then."""
        with self._acquire_lock:
            if not (self._pending or self._unguarded):
                return False
            self._pending = False
            return True

    @property
    def lost(self) -> LeaseLost | None:
        """Why this attempt lost its lease, or None while it holds it."""
        return self._lost

    def mark_lost(self, error: LeaseLost) -> None:
        """Record that the lease is gone (once, with a ``lease_lost`` event); beats raise ``error``."""
        with self._lock:
            if self._lost is not None:
                return
            self._lost = error
        job = self.job
        log.warning(
            "%s attempt %d lost its lease: %s. This attempt is stopped",
            named(job.adapter, job.task, job.job_id),
            self.number,
            error.detail,
        )
        emit(self.job.adapter, self.event(LeaseLostEvent, reason=error.detail))

    def described(self) -> JobSpec:
        """The job, its payload computed (see :attr:`describe`)."""
        describe = self.describe
        if describe is not None:
            # Two threads may both compute it: the same payload, from the same snapshot.
            self.job = dataclasses.replace(self.job, payload=describe())
            self.describe = None
        return self.job

    def event(self, kind: type[E], reason: str = "", stack: str | None = None, **extra: Any) -> E:
        """An event about this attempt."""
        subject = Subject(
            job_id=self.job.job_id,
            task=self.job.task,
            queue=self.job.queue,
            attempt=self.number,
            worker=self.worker,
            adapter=self.job.adapter,
            started_at=self.started_at,
            payload=self.described().payload,
            policy=self.policy,
        )
        return subject.event(kind, reason, stack, **extra)

    def _raise_if_lost(self) -> None:
        if self._lost is not None:
            raise self._lost

    def beat(self, progress: object = None, message: str | None = None) -> None:
        """Prove progress: renews the lease and records the progress time (fenced)."""
        self._raise_if_lost()
        now = time.monotonic()
        self._progressed(now)
        if progress is None and message is None and now - self._last_sent < BEAT_SEND_INTERVAL:
            return
        self._send(progress="" if progress is None else str(progress), message=message or "")

    def save_checkpoint(self, value_json: str) -> None:
        """Store the checkpoint under this attempt's fencing token; counts as progress."""
        self._raise_if_lost()
        self._progressed(time.monotonic())
        self._send(checkpoint=value_json)
        self.checkpoint_json = value_json

    def note_ended(self, processes: tuple[str, ...]) -> None:
        """Note on the lease the processes this attempt started that were ended with it."""
        if self.token:
            self.store.note_ended_processes(self.job.job_id, self.token, self.worker, processes)

    def verify(self) -> None:
        """Ask Redis (one read) whether this attempt still holds its lease; when another attempt or
        a stop has taken the job, mark it lost and raise :class:`~zombieguard.LeaseLost`. Redis
        unreachable or the record unreadable: assumed held (the next renewal asks again)."""
        self._raise_if_lost()
        if self._pending:
            return  # no lease written yet: nothing can have superseded it
        try:
            record = self.store.record(self.job.job_id)
        except (redis.RedisError, CorruptRecord) as exc:
            log.warning("job %s: could not check its lease (%s)", self.job.job_id, exc)
            return
        if record is not None and not record.held_by(self.token):
            self.mark_lost(LeaseLost(self.job.job_id, self.token, record.taken_from(self.token)))
            self._raise_if_lost()

    def confirm(self, sent_at: float) -> None:
        """A renewal sent at ``sent_at`` (monotonic) succeeded."""
        until = sent_at + self.policy.lease_ttl
        if until > self.confirmed_until:
            self.confirmed_until = until
            if self.hooks.confirmed is not None:
                self.hooks.confirmed(until)

    def safe_to_finish(self, now: float | None = None) -> bool:
        """Whether this attempt's end can be recorded without asking Redis first.

        A sweeper claims a lease only once it expired, or its hard or progress deadline passed by
        ``overdue_grace``; none of those can have happened yet if this process confirmed the lease
        recently enough. A margin of a tenth of ``lease_ttl`` (and 0.1 s) covers clocks that run at
        slightly different rates. Any claim that comes after the end is recorded finds the job ended.
        """
        if self._lost is not None or self._pending:
            return False
        if self._unguarded:
            return True  # nothing of it in Redis to check
        now = time.monotonic() if now is None else now
        policy = self.policy
        until = self.confirmed_until
        if self.hooks.confirmations is not None:
            until = max(until, self.hooks.confirmations())
        if policy.hard_timeout is not None:
            until = min(until, self.started_monotonic + policy.hard_timeout + policy.overdue_grace)
        if policy.progress_timeout is not None:
            until = min(until, self.last_progress_monotonic + policy.progress_timeout + policy.overdue_grace)
        return now < until - (0.1 * policy.lease_ttl + 0.1)

    def _progressed(self, now: float) -> None:
        self.last_progress_monotonic = now
        if self.hooks.progress is not None:
            self.hooks.progress(now)

    def _send(self, progress: str = "", message: str = "", checkpoint: str | None = None) -> None:
        sent_at = time.monotonic()
        try:
            self.acquire_now()
            self._raise_if_lost()
            if self._unguarded:
                if checkpoint is None:
                    return  # a beat: its progress is recorded here, for the local limits
                raise redis.ConnectionError("this job runs unguarded: its lease could not be written")
            code = self.store.progress(self.job, self.token, progress, message, checkpoint)
            if code == "missing":
                self.reestablish()
                self.store.progress(self.job, self.token, progress, message, checkpoint)
        except LeaseLost as exc:
            self.mark_lost(exc)
            raise
        except redis.RedisError as exc:
            # Redis unreachable: the job goes on; the heartbeat keeps retrying and re-establishes the
            # lease. A checkpoint that could not be written must not pass silently, though.
            if checkpoint is not None:
                raise
            log.warning("job %s: beat not recorded, Redis unreachable (%s)", self.job.job_id, exc)
            return
        self._last_sent = time.monotonic()
        self.confirm(sent_at)

    def reestablish(self) -> bool:
        """Recreate this attempt's lease after Redis lost it (restart without persistence)."""
        created = self.store.reestablish(
            self.job,
            self.worker,
            self.policy,
            token=self.token,
            attempt=self.number,
            stalls=self.stalls,
            started=self.started_at,
        )
        if created:
            log.warning(
                "job %s: its lease was missing from Redis while this worker renewed it (evicted, or "
                "lost in a Redis restart or failover); written again",
                self.job.job_id,
            )
            emit(self.job.adapter, self.event(LeaseVanished, reason="missing from Redis"))
        return created

    def release(self, outcome: Outcome, reason: str = "", stack: str | None = None) -> None:
        """End the attempt (writing a pending lease first). Raises LeaseLost when a newer attempt
        exists: its completion is refused."""
        self.acquire_now()
        self._raise_if_lost()
        if self._unguarded:
            return
        code = self.store.release(self.job, self.token, outcome, reason, stack)
        if code == "missing" and self.reestablish():
            self.store.release(self.job, self.token, outcome, reason, stack)


_current: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar("zombieguard_attempt", default=None)


class _Current:
    """The context manager :func:`running` returns (a class: cheaper per job than a generator)."""

    __slots__ = ("_owner", "_reset", "attempt", "own_environment")

    def __init__(self, attempt: Attempt, own_environment: bool) -> None:
        self.attempt = attempt
        self.own_environment = own_environment
        self._owner: str | None = None

    def __enter__(self) -> Attempt:
        self._reset = _current.set(self.attempt)
        if self.own_environment:
            self._owner = os.environ.get(OWNER_VARIABLE)
            if not self.attempt.policy.kill_children:
                # What this job starts may outlive it, and its worker: the reaper must not know it.
                os.environ.pop(OWNER_VARIABLE, None)
            elif self._owner:
                os.environ[OWNER_VARIABLE] = marked(self._owner.partition("/")[0], self.attempt.job.job_id)
        return self.attempt

    def __exit__(self, *exc_info: object) -> None:
        _current.reset(self._reset)
        if self._owner is not None:
            os.environ[OWNER_VARIABLE] = self._owner


def running(attempt: Attempt, own_environment: bool = True) -> contextlib.AbstractContextManager[Attempt]:
    """Make ``attempt`` the current one for the block (the job's body runs inside).
    ``own_environment``: the job is the only one running in its process, so the processes it starts
    can be told from the others' by the environment they inherit (not so on a threads pool)."""
    return _Current(attempt, own_environment)


def beat(progress: object = None, message: str | None = None) -> None:
    """Prove that the running job makes progress; a no-op outside a guarded job.

    ``progress`` (e.g. ``"120/500"``) and ``message`` are shown by ``zombieguard status``. Cheap enough
    for a loop: the round trip to Redis happens at most once a second unless progress or a message
    is given. Raises :class:`~zombieguard.LeaseLost` when a newer attempt has taken the job over.
    """
    attempt = _current.get()
    if attempt is not None:
        attempt.beat(progress, message)


def require_attempt(what: str) -> Attempt:
    """The running attempt, or a clear error naming ``what`` needed it."""
    attempt = _current.get()
    if attempt is None:
        raise NotInGuardedJob(
            f"{what} works only inside a job run by a guarded worker "
            "(Celery with zombieguard installed, or rq worker -w zombieguard.integrations.rq.GuardedWorker)"
        )
    return attempt
