"""The guarded worker classes (``rq worker -w ...``): the worker process holds each job's lease and
watches it; a ``GuardedWorker``'s horse runs the job, a ``GuardedSimpleWorker`` runs it itself with
a watchdog process beside it."""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.worker import SimpleWorker, Worker, WorkerStatus

from zombieguard.containment import contained, log
from zombieguard.enforcement.interrupts import Interrupt, install_interrupt_handlers
from zombieguard.enforcement.limits import Limit, LimitClock
from zombieguard.enforcement.slot import OUTCOME_COMPLETED, OUTCOME_RECORDING, JobSlot
from zombieguard.enforcement.stacks import StackDumper, thread_stack
from zombieguard.enforcement.watchdog import Watched
from zombieguard.errors import JobHung, JobInterrupt, LeaseLost, SoftTimeLimitExceeded
from zombieguard.events import JobCompleted, JobStarted, emit
from zombieguard.integrations.rq import internals
from zombieguard.integrations.rq.adapter import ADAPTER, RQAdapter
from zombieguard.integrations.rq.failure import failure_text, hard_limit_error, run_failure_callback
from zombieguard.leases import (
    Acquired,
    AcquireStatus,
    DeferredRelease,
    JobSpec,
    LeaseState,
    LeaseStore,
    Outcome,
    PendingAcquire,
)
from zombieguard.policy import Config, Policy, current_config, guard_fields
from zombieguard.worker.attempt import Attempt, AttemptHooks, running
from zombieguard.worker.lifecycle import (
    BACKSTOP_SECONDS,
    ESCALATE_AFTER,
    emit_limit,
    record_end,
    wait_out_recovery,
)
from zombieguard.worker.runtime import WorkerRuntime

ACQUIRE_RETRY = 2.0
"""Seconds an acquire whose reply did not come is sent again, at most, before the job runs without a
lease (Redis restarting, a failover)."""


def _while_redis_away(what: str, deadline: float, call: Callable[[], object]) -> None:
    """``call``, tried again (backing off) while Redis does not answer, until ``deadline``
    (monotonic); then its error is raised."""
    delay = 0.1
    while True:
        try:
            call()
            return
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s (%s); trying again", what, exc)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _die_with_parent(parent_pid: int) -> None:
    """In a horse: be killed by the kernel when the worker that forked it dies (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os._exit(1)


@dataclass(frozen=True)
class _Sent:
    """An acquire sent, its reply not read yet (``pending`` None: it could not be sent)."""

    spec: JobSpec
    policy: Policy
    sent_at: float
    pending: PendingAcquire | None
    tag: str
    """Names this execution: an acquire sent again after a lost reply takes the lease the first wrote."""


class _RQRuntime(WorkerRuntime):
    """What one guarded worker process runs beside RQ: leases, heartbeat, sweeper, watchdog."""

    def __init__(self, worker: Any, with_watchdog_process: bool) -> None:
        self.config: Config = current_config()
        settings = self.config.settings
        self.client = redis.Redis.from_url(settings.redis_url) if settings.redis_url else worker.connection
        self.default_policy = self.config.policy_for("")
        self.adapter = RQAdapter(
            worker.connection,
            job_class=worker.job_class,
            queue_class=worker.queue_class,
            serializer=worker.serializer,
            queues=worker.queue_names(),
        )
        super().__init__(
            LeaseStore(self.client, settings),
            self.adapter,
            worker=worker.name,
            renew_every=self.default_policy.renew_every,
            on_lost=worker._zg_lost,
            dir_prefix=_DIR_PREFIX,
            watchdog_name=f"zombieguard-watchdog-{worker.name}",
        )
        self.dumper = StackDumper(self.dir / "stacks.txt")
        self.dumper.path.touch()
        self.slot = JobSlot(self.dir / "slot" if with_watchdog_process else None)
        if with_watchdog_process:
            # Jobs run in this process: the watchdog process asks it for its stacks before killing it.
            self.dumper.install()
            self.start_watchdog_process(
                slot=self.dir / "slot",
                dump=self.dumper.path,
                redis_url=settings.redis_url or _url_of(self.client),
                adapter="zombieguard.integrations.rq:watchdog_process_adapter",
                adapter_arg=_url_of(worker.connection) if settings.redis_url else "",
            )
        # Before RQ's own maintenance runs: the first sweep recovers what dead workers left, so that
        # RQ's abandoned-job cleanup does not fail it first.
        self.launch({"class": type(worker).__name__, "queues": ",".join(worker.queue_names())})

    def close(self) -> None:
        """Stop everything, leave cleanly (not a zombie)."""
        self.shutdown()
        self.dumper.close()
        self.slot.close()
        self.remove_dir()


_DIR_PREFIX = "zombieguard-rq-"


def _url_of(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    auth = f"{kwargs.get('username') or ''}:{kwargs['password']}@" if kwargs.get("password") else ""
    return f"redis://{auth}{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


class _GuardedMixin:
    """The behaviour both guarded worker classes add to RQ's."""

    _zg_watchdog_process = False
    _zg_forks = False
    """Whether jobs run in a horse this process forks (RQ < 2.7's SimpleWorker subclasses Worker:
    the class, not isinstance, says so)."""
    _zg: _RQRuntime | None = None
    _zg_attempt: Attempt | None = None
    _zg_stop: tuple[Outcome, str | None] | None = None
    _zg_interrupt: Interrupt | None = None
    _zg_job_timeout: Any = None
    _zg_parent: int = 0
    _zg_body_done = False
    _zg_kill_command = False
    """RQ's kill-horse command came for the running job: an operator's stop, not a stall."""
    _zg_generation = 0
    """The running job's generation in the slot (an interrupt is raised only in the job it names)."""
    _zg_unprepared: redis.RedisError | None = None
    """Why RQ could not prepare the running job (Redis did not answer): it never started."""

    if TYPE_CHECKING:  # RQ's attributes and methods, as this mixin uses them
        name: str
        connection: redis.Redis
        is_horse: bool
        horse_pid: int
        death_penalty_class: Any

        pubsub: Any
        pubsub_thread: Any

        def set_state(self, state: str, pipeline: Any = None) -> None: ...
        def prepare_execution(self, job: Job) -> Execution: ...
        def cleanup_execution(self, job: Job, pipeline: Any, *args: Any) -> None: ...

    # -- the worker's lifetime --------------------------------------------------------------
    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        """RQ's bootstrap, then zombieguard's threads (and watchdog process); bad configuration fails here."""
        super().bootstrap(*args, **kwargs)  # type: ignore[misc]
        self._zg = _RQRuntime(self, with_watchdog_process=self._zg_watchdog_process)
        self._zg_install_interrupts()

    def teardown(self) -> None:
        """RQ's teardown, then zombieguard's; the worker leaves cleanly."""
        super().teardown()  # type: ignore[misc]
        if self._zg is not None and not self.is_horse:
            self._zg.close()
            self._zg = None

    def unsubscribe(self) -> None:
        """RQ's, without the minute its pub/sub thread can keep a worker from exiting.

        RQ sends UNSUBSCRIBE, then stops the thread; redis-py 8 joins it in ``stop()``. A thread that
        read the reply to UNSUBSCRIBE before it was stopped waits ``sleep_time`` (60 s) for a new
        subscription. Stopped first (without waiting), it exits on reading that reply instead.
        """
        thread, pubsub = self.pubsub_thread, self.pubsub
        if thread is None or pubsub is None:
            return
        try:
            thread.stop(timeout=0)  # redis-py 8: clears the running flag; joins for at most 0 s
        except TypeError:
            thread.stop()  # redis-py < 8: clears the running flag, never joins
        pubsub.unsubscribe()
        thread.join(timeout=1)
        pubsub.close()

    def handle_payload(self, message: Any) -> None:
        """RQ's commands; its kill-horse command is an operator's stop (the job ends failed, as in
        plain RQ), not a stall to recover."""
        with contextlib.suppress(Exception):  # RQ parses it again, and says what is wrong
            if json.loads(message["data"]).get("command") == "kill-horse" and self._zg_attempt is not None:
                self._zg_kill_command = True
        super().handle_payload(message)  # type: ignore[misc]

    def _zg_install_interrupts(self) -> None:
        """Signal handlers that raise zombieguard's interrupts in the main thread (job code)."""

        def raise_interrupt(kind: Interrupt) -> None:
            if self._zg_body_done:
                return  # the body returned just before the limit: RQ is recording its end
            zg = self._zg
            if kind is not Interrupt.LOST and zg is not None and not zg.slot.aimed_at(self._zg_generation):
                return  # sent for the job before this one
            attempt = self._zg_attempt
            policy = attempt.policy if attempt is not None else Policy()
            self._zg_interrupt = kind
            if kind is Interrupt.SOFT:
                raise SoftTimeLimitExceeded(f"job passed its soft_timeout of {policy.soft_timeout:g} s")
            if kind is Interrupt.HARD:
                raise hard_limit_error(policy, self._zg_job_timeout, killed=False)
            if kind is Interrupt.HUNG:
                raise JobHung(
                    f"job made no progress within its progress_timeout of {policy.progress_timeout:g} s"
                )
            if attempt is not None and attempt.lost is not None:
                raise attempt.lost
            self._zg_interrupt = None  # sent for a superseded job before this one

        install_interrupt_handlers(raise_interrupt)

    # -- one job ------------------------------------------------------------------------------
    def _zg_policy(self, job: Job) -> tuple[str, Policy]:
        assert self._zg is not None
        try:
            task = str(job.func_name)
        except Exception:
            return "", self._zg.default_policy
        framework = {"hard_timeout": float(job.timeout)} if job.timeout and job.timeout > 0 else {}
        decorator: Any = {}
        with contextlib.suppress(Exception):  # an import error is the job's to report, the RQ way
            decorator = guard_fields(job.func)
        return task, self._zg.config.policy_for(task, framework=framework, decorator=decorator)

    def _zg_send(self, job: Job, queue: Queue) -> _Sent | None:
        """Send the acquire of the job's lease, with any deferred releases; the reply is read by
        :meth:`_zg_begin` after RQ's own round trip. None when this worker is not guarded."""
        zg = self._zg
        self._zg_attempt = None
        self._zg_stop = None
        self._zg_interrupt = None
        self._zg_body_done = False
        self._zg_kill_command = False
        self._zg_unprepared = None
        if zg is None:
            return None
        task, policy = self._zg_policy(job)
        spec = JobSpec(job.id, ADAPTER, task, queue.name, json.dumps({"description": job.description}))
        sent_at = time.monotonic()
        tag = os.urandom(8).hex()
        releases = zg.heartbeat.take_deferred()
        try:
            pending = zg.store.send_acquire(spec, self.name, policy, releases, tag=tag)
        except redis.RedisError:
            for release in releases:
                zg.heartbeat.defer(release)
            pending = None
        return _Sent(spec, policy, sent_at, pending, tag)

    def _zg_acquired(self, sent: _Sent) -> Acquired | None:
        """The reply to the acquire sent, or, when none came, to one sent again on a new connection (a
        killed connection, a restart of Redis), for up to :data:`ACQUIRE_RETRY` or a third of the
        lease's TTL; under the execution's tag, so that it takes the lease the first one may have
        written. None when Redis does not answer by then."""
        assert self._zg is not None
        try:
            if sent.pending is not None:
                return sent.pending.result()
        except redis.RedisError as exc:
            log.info("rq job %s: no reply to its acquire (%s); asking again", sent.spec.job_id, exc)
        deadline = time.monotonic() + min(ACQUIRE_RETRY, sent.policy.lease_ttl / 3)
        delay = 0.1
        while True:
            try:
                return self._zg.store.acquire(sent.spec, self.name, sent.policy, tag=sent.tag)
            except redis.RedisError as exc:
                if time.monotonic() + delay > deadline:
                    log.warning(
                        "rq job %s runs without a lease, its limits enforced here all the same: Redis "
                        "for leases unreachable (%s)",
                        sent.spec.job_id,
                        exc,
                    )
                    return None
            time.sleep(delay)
            delay *= 2

    def _zg_begin(self, job: Job, sent: _Sent | None) -> tuple[Attempt | None, bool]:
        """The job's attempt (leased, or unguarded when Redis is unreachable): (attempt, run?)."""
        zg = self._zg
        if zg is None or sent is None:
            return None, True
        spec, policy = sent.spec, sent.policy
        acquired = self._zg_acquired(sent)
        try:
            if acquired is not None:
                acquired = wait_out_recovery(
                    acquired,
                    lambda: zg.store.acquire(spec, self.name, policy, tag=sent.tag),
                    lambda a: (
                        a.status is not AcquireStatus.ACQUIRED and a.holder_state is LeaseState.RECOVERING
                    ),
                )
            if acquired is not None and acquired.status is not AcquireStatus.ACQUIRED:
                log.warning(
                    "rq job %s not run: %s (attempt %d, %s on %s)",
                    job.id,
                    acquired.status.value,
                    acquired.attempt,
                    acquired.holder_state or "superseded",
                    acquired.holder or "-",
                )
                return None, False
        except redis.RedisError as exc:
            log.warning("rq job %s runs without a lease: Redis for leases unreachable (%s)", job.id, exc)
            acquired = None
        slot = zg.slot
        hooks = AttemptHooks(
            progress=slot.progress,
            confirmed=slot.confirm,
            confirmations=slot.confirmed_until,  # in the horse: the parent's renewals
            ending=lambda: slot.read().outcome != 0,
        )
        attempt = Attempt(zg.store, spec, self.name, policy, acquired, sent_at=sent.sent_at, hooks=hooks)
        if acquired is None:
            attempt.run_unguarded()
        started = attempt.started_monotonic
        self._zg_generation = zg.slot.start(
            job.id,
            attempt.token,
            started,
            hard_deadline=started + policy.hard_timeout if policy.hard_timeout is not None else None,
            progress_timeout=policy.progress_timeout,
            confirmed_until=attempt.confirmed_until,
        )
        if not attempt.unguarded:
            zg.heartbeat.add(attempt)
        self._zg_attempt = attempt
        emit(ADAPTER, attempt.event(JobStarted))
        return attempt, True

    def _zg_prepare(self, job: Job, queue: Queue) -> tuple[Execution, Attempt | None] | None:
        """RQ's ``prepare_execution`` with the job's lease acquired around it (the two round trips
        overlap); None when this delivery is not to run."""
        sent = self._zg_send(job, queue)
        execution = self.prepare_execution(job)
        attempt, run = self._zg_begin(job, sent)
        if not run:
            self._zg_skip(job, execution)
            return None
        return execution, attempt

    def _zg_skip(self, job: Job, execution: Execution) -> None:
        """A delivery not to run (duplicate or stale): undo what RQ prepared for it."""
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipe, *([execution] if internals.RQ3 else []))
            pipe.execute()
        self.set_state(WorkerStatus.IDLE)

    def _zg_watch(self, attempt: Attempt, pid: int, capture: Any, escalate: Any) -> Watched:
        assert self._zg is not None
        zg = self._zg

        generation = self._zg_generation

        def signal_job(signum: int) -> None:
            zg.slot.aim(generation)  # a signal that arrives once the next job began is not its
            with contextlib.suppress(ProcessLookupError):  # the horse ended meanwhile
                os.kill(pid, signum)

        def stop(watched: Watched, limit: Limit, stack: str | None) -> None:
            if self._zg_attempt is not attempt:
                return  # it ended meanwhile
            if limit is not Limit.SOFT:  # set before any receiver runs: the job may end meanwhile
                self._zg_stop = (limit.outcome, stack)
            emit_limit(ADAPTER, attempt.event, limit, limit.seconds(attempt.policy), stack)
            signal_job(Interrupt.at(limit).signal)

        def stalled(watched: Watched) -> None:
            # The worker was frozen past the job's lease and a limit: a stall, as a sweeper judges
            # it, not a timeout. Given up now (recovered at once) and stopped as superseded.
            if self._zg_attempt is not attempt or attempt.unguarded:
                return
            why = "its worker was frozen past the job's lease and a limit: a stall, not a timeout"
            log.warning("rq job %s: %s; recovering it", attempt.job.job_id, why)
            try:
                zg.store.abandon(attempt.job, attempt.token, Outcome.STALLED)
            except LeaseLost:
                pass  # recovered elsewhere while it was frozen
            except redis.RedisError as exc:
                log.warning(
                    "rq job %s: not given up (%s); its lease expires instead", attempt.job.job_id, exc
                )
            attempt.mark_lost(LeaseLost(attempt.job.job_id, attempt.token, why))
            self._zg_stop_lost()

        clock = LimitClock(attempt.policy, attempt.started_monotonic, lambda: zg.slot.read().last_progress)
        return zg.watchdog.watch(
            Watched(
                clock,
                stop,
                capture,
                escalate=escalate,
                escalate_after=ESCALATE_AFTER,
                label=attempt.job.job_id,
                stalled=stalled,
            )
        )

    def _zg_end(self, attempt: Attempt | None, watched: Watched | None) -> None:
        zg = self._zg
        if zg is None:
            return
        if watched is not None:
            zg.watchdog.unwatch(watched)
        if attempt is not None:
            zg.heartbeat.remove(attempt)
        zg.slot.clear()
        self._zg_attempt = None

    def _zg_release(
        self, attempt: Attempt, outcome: Outcome, reason: str = "", stack: str | None = None
    ) -> bool:
        """End the attempt; False when a newer attempt holds the job (this one's end is refused)."""
        return record_end(ADAPTER, attempt, outcome, reason, stack)

    def _zg_lost(self, attempt: Attempt, error: LeaseLost) -> None:
        """Heartbeat thread: a newer attempt holds this job. Stop this one now."""
        if attempt is not self._zg_attempt:
            return
        self._zg_stop_lost()

    def _zg_stop_lost(self) -> None:
        raise NotImplementedError

    # -- RQ's job lifecycle, guarded -------------------------------------------------------------
    def prepare_job_execution(self, job: Job, *args: Any, **kwargs: Any) -> None:
        """RQ's preparation of the job (in the process that runs it), tried again while Redis does
        not answer, for up to half the lease's TTL (a killed connection, a restart). Past that, the
        job never started: it is given up as a stall and recovered, not failed
        (:meth:`handle_job_failure`)."""
        attempt = self._zg_attempt
        if attempt is None:
            return super().prepare_job_execution(job, *args, **kwargs)  # type: ignore[misc, no-any-return]
        deadline = time.monotonic() + attempt.policy.lease_ttl / 2
        if attempt.policy.hard_timeout is not None:  # its limit's clock runs: leave it room to start
            deadline = min(deadline, attempt.started_monotonic + attempt.policy.hard_timeout / 2)
        prepare = super().prepare_job_execution  # type: ignore[misc]
        try:
            _while_redis_away(
                f"rq job {job.id}: RQ could not prepare it", deadline, lambda: prepare(job, *args, **kwargs)
            )
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._zg_unprepared = exc
            raise

    def perform_job(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> bool:
        """RQ's perform_job inside the attempt's context; RQ's own alarm becomes a backstop."""
        attempt = self._zg_attempt
        if attempt is None:
            return bool(super().perform_job(job, queue, *args, **kwargs))  # type: ignore[misc]
        self._zg_job_timeout = job.timeout
        if attempt.policy.hard_timeout is not None:
            job.timeout = math.ceil(attempt.policy.hard_timeout) + BACKSTOP_SECONDS
        try:
            with running(attempt):
                return bool(super().perform_job(job, queue, *args, **kwargs))  # type: ignore[misc]
        finally:
            job.timeout = self._zg_job_timeout

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        """The body returned or raised: interrupts are ignored from here on, and the job's own timeout
        is put back before RQ may save the job (a retry does)."""
        self._zg_body_done = True
        if self._zg_attempt is not None:
            job.timeout = self._zg_job_timeout
            if self._zg is not None:
                self._zg.slot.set_outcome(OUTCOME_RECORDING)  # the heartbeat: its release is coming
        ended = super().handle_execution_ended  # type: ignore[misc]
        self._zg_while_redis_away(job, "record its end", lambda: ended(job, queue, heartbeat_ttl))

    def handle_job_success(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> None:
        """Record the completion only if this attempt still holds the lease.

        When this process knows no one can have claimed the lease yet (``Attempt.safe_to_finish``), the
        release is written later, off the job's path; otherwise it is checked with Redis first.
        """
        attempt = self._zg_attempt
        if attempt is not None:
            if attempt.safe_to_finish():
                self._zg_completed_here(attempt)
            elif not self._zg_release(attempt, Outcome.COMPLETED):
                return
        succeeded = super().handle_job_success  # type: ignore[misc]
        self._zg_while_redis_away(job, "record its success", lambda: succeeded(job, queue, *args, **kwargs))

    def _zg_while_redis_away(self, job: Job, what: str, call: Callable[[], object]) -> None:
        """RQ's own writes for a guarded job whose body ended, tried again while Redis does not
        answer (a killed connection, a restart) for up to half the lease's TTL: RQ alone would fail
        the job, healthy as it is. Past that, the error is RQ's to handle."""
        attempt = self._zg_attempt
        if attempt is None:
            call()
            return
        deadline = time.monotonic() + attempt.policy.lease_ttl / 2
        _while_redis_away(f"rq job {job.id}: RQ could not {what}", deadline, call)

    def _zg_completed_here(self, attempt: Attempt) -> None:
        assert self._zg is not None
        if attempt.unguarded:
            pass  # no lease to release
        elif self.is_horse:
            self._zg.slot.set_outcome(OUTCOME_COMPLETED)  # the parent writes the release
        else:
            self._zg.heartbeat.defer(DeferredRelease(attempt.job, attempt.token, Outcome.COMPLETED))
        duration = time.monotonic() - attempt.started_monotonic
        emit(ADAPTER, attempt.event(JobCompleted, reason=Outcome.COMPLETED.value, duration=duration))

    def handle_job_retry(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> None:
        """A job that returned ``Retry``: its attempt ended; RQ schedules the retry."""
        attempt = self._zg_attempt
        if attempt is not None and not self._zg_release(attempt, Outcome.FAILED, "returned Retry"):
            return
        super().handle_job_retry(job, queue, *args, **kwargs)  # type: ignore[misc]

    def handle_job_failure(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> None:
        """Failures the RQ way, with zombieguard's verdict on why, and refused for a superseded attempt."""
        attempt = self._zg_attempt
        if attempt is None:
            proceed = True
        elif self._zg_unprepared is not None:
            proceed = self._zg_unstarted(attempt, self._zg_unprepared)
        elif self.is_horse or not self._zg_forks:
            proceed = self._zg_raised_here(attempt, kwargs)
        else:
            proceed = self._zg_horse_ended(attempt, job, kwargs)
        if proceed:
            super().handle_job_failure(job, queue, *args, **kwargs)  # type: ignore[misc]

    def _zg_unstarted(self, attempt: Attempt, error: redis.RedisError) -> bool:
        """RQ could not prepare the job, Redis not answering: it never started. A stall to recover,
        not a failure to record; without a lease (unguarded), RQ records it as it would alone."""
        job_id = attempt.job.job_id
        if attempt.unguarded:
            return True
        log.warning("rq job %s: RQ could not prepare it (%s); recovering it", job_id, error)
        self._zg_give_up(attempt)
        return False

    def _zg_give_up(self, attempt: Attempt) -> None:
        """Give the attempt's lease up as a stall and sweep at once (the job is recovered or
        dead-lettered); Redis away, the lease expires instead."""
        assert self._zg is not None
        try:
            attempt.store.abandon(attempt.job, attempt.token, Outcome.STALLED)
            self._zg.sweeper.sweep_once()
        except (redis.RedisError, LeaseLost) as exc:
            log.warning(
                "rq job %s: could not give the lease up (%s); it expires instead", attempt.job.job_id, exc
            )

    def _zg_died(self, attempt: Attempt, exc_string: str) -> bool:
        """The horse died by itself (OOM, segfault, a poison payload): a stall for the sweeper to
        recover or dead-letter, not a failure to record (without a lease: RQ's failure, as alone)."""
        if attempt.unguarded:
            return True
        log.warning("rq job %s: its horse died (%s); recovering it", attempt.job.job_id, exc_string.strip())
        self._zg_give_up(attempt)
        return False

    def _zg_raised_here(self, attempt: Attempt, kwargs: dict[str, Any]) -> bool:
        """The job raised in this process (zombieguard's interrupts among the possibilities)."""
        exc_string: str = kwargs.get("exc_string", "")
        outcome = Outcome.FAILED if self._zg_interrupt is None else self._zg_interrupt.outcome
        last_line = exc_string.strip().splitlines()[-1] if exc_string.strip() else ""
        return self._zg_release(
            attempt, outcome, last_line, exc_string if outcome is not Outcome.FAILED else None
        )

    def _zg_horse_ended(self, attempt: Attempt, job: Job, kwargs: dict[str, Any]) -> bool:
        """In the parent: the horse did not exit normally. Decide what RQ is to record, if anything."""
        if attempt.lost is not None:
            return False  # killed because a newer attempt holds the job: nothing of this one is recorded
        if internals.stop_requested_for(self) == job.id:
            # Stopped on request (send_stop_job_command): RQ's STOPPED, not a stall to recover.
            return self._zg_release(attempt, Outcome.STOPPED, "stopped on request (send_stop_job_command)")
        if self._zg_kill_command and self._zg_stop is None:
            # Killed on request (send_kill_horse_command): failed, as RQ alone fails it.
            reason = "horse killed on request (send_kill_horse_command)"
            return self._zg_release(attempt, Outcome.STOPPED, reason)
        if self._zg_stop is None:
            return self._zg_died(attempt, kwargs.get("exc_string", ""))
        outcome, stack = self._zg_stop
        policy = attempt.policy
        if outcome is Outcome.TIMED_OUT:
            error: JobInterrupt = hard_limit_error(policy, job.timeout, killed=True)
        else:
            error = JobHung(
                f"job made no progress within its progress_timeout of {policy.progress_timeout:g} s"
            )
        if not self._zg_release(attempt, outcome, str(error), stack):
            return False
        with contained(f"on_failure callback of rq job {job.id}"):
            run_failure_callback(job, self.death_penalty_class, error)
        kwargs["exc_string"] = failure_text(outcome, error, stack)
        return True


class GuardedWorker(_GuardedMixin, Worker):
    """RQ's forking :class:`rq.Worker`, guarded.

    ``rq worker -w zombieguard.integrations.rq.GuardedWorker``.
    """

    _zg_forks = True

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Fork a horse under the job's lease, watched by this process."""
        prepared = self._zg_prepare(job, queue)
        if prepared is None:
            return
        execution, attempt = prepared
        self._zg_parent = os.getpid()
        watched = None
        try:
            self.fork_work_horse(job, queue)
            if attempt is not None:
                pid = self.horse_pid
                assert self._zg is not None
                dumper = self._zg.dumper
                watched = self._zg_watch(
                    attempt,
                    pid,
                    capture=lambda: dumper.request(pid),
                    escalate=lambda w: self._zg_kill_horse(),
                )
            self.monitor_work_horse(job, queue, *([execution] if internals.RQ3 else []))
            if (
                attempt is not None
                and self._zg is not None
                and self._zg.slot.read().outcome == OUTCOME_COMPLETED
            ):
                self._zg.heartbeat.defer(DeferredRelease(attempt.job, attempt.token, Outcome.COMPLETED))
        finally:
            self._zg_end(attempt, watched)
        self.set_state(WorkerStatus.IDLE)

    def setup_work_horse_signals(self) -> None:
        """In the horse: RQ's signals, zombieguard's interrupts, stack dumps, death with the parent."""
        super().setup_work_horse_signals()  # type: ignore[no-untyped-call]
        if self._zg is not None and self._zg_attempt is not None:
            _die_with_parent(self._zg_parent)
            self._zg_install_interrupts()
            self._zg.dumper.install()

    def _zg_kill_horse(self) -> None:
        """Kill the horse and what it started (its own session: RQ's horse calls setsid). Never
        this worker's own process group: RQ sets ``horse_pid`` to 0 once it reaped the horse, and
        a horse signalled before its setsid is still in this worker's group."""
        pid = self.horse_pid
        if pid <= 0:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            group = os.getpgid(pid)
            if group == os.getpgrp():
                os.kill(pid, signal.SIGKILL)
            else:
                os.killpg(group, signal.SIGKILL)

    def _zg_stop_lost(self) -> None:
        self._zg_kill_horse()


class GuardedSimpleWorker(_GuardedMixin, SimpleWorker):
    """RQ's :class:`rq.SimpleWorker` (no fork), guarded, with a watchdog process beside it.

    ``rq worker -w zombieguard.integrations.rq.GuardedSimpleWorker``.
    """

    _zg_watchdog_process = True

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run the job in this thread under its lease; the watchdog thread and the watchdog process watch."""
        prepared = self._zg_prepare(job, queue)
        if prepared is None:
            return
        execution, attempt = prepared
        watched = None
        main = threading.get_ident()
        try:
            if attempt is not None:
                watched = self._zg_watch(
                    attempt, os.getpid(), capture=lambda: thread_stack(main), escalate=None
                )
            self.perform_job(job, queue, *([execution] if internals.RQ3 else []))
        finally:
            self._zg_end(attempt, watched)
        self.set_state(WorkerStatus.IDLE)

    def _zg_stop_lost(self) -> None:
        os.kill(os.getpid(), Interrupt.LOST.signal)
