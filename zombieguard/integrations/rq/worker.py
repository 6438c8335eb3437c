"""The guarded worker classes (``rq worker -w ...``): RQ's hooks, translated into the job's
lifecycle. The worker process holds each job's lease and watches it (:mod:`.runtime`,
:mod:`.acquire`); a ``GuardedWorker``'s horse runs the job, a ``GuardedSimpleWorker`` runs it itself
with a watchdog process beside it (:mod:`.horse`); how a failed execution is recorded is
:mod:`.verdict`'s."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
import redis
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.executions import Execution
from rq.job import Job
from rq.logutils import setup_loghandlers
from rq.queue import Queue
from rq.worker import SimpleWorker, Worker, WorkerStatus

from zombieguard.enforcement.children import Found, JobProcesses
from zombieguard.enforcement.deaths import how_it_ended, oom_kills
from zombieguard.enforcement.interrupts import Interrupt, install_interrupt_handlers
from zombieguard.enforcement.limits import Limit, LimitClock
from zombieguard.enforcement.slot import OUTCOME_COMPLETED, OUTCOME_RECORDING
from zombieguard.enforcement.stacks import thread_stack
from zombieguard.enforcement.watchdog import Watched
from zombieguard.errors import ConfigurationError, LeaseLost
from zombieguard.events import JobCompleted, emit
from zombieguard.integrations.rq import acquire, internals, verdict
from zombieguard.integrations.rq.adapter import ADAPTER
from zombieguard.integrations.rq.horse import die_with_parent, limit_error, while_redis_away
from zombieguard.integrations.rq.runtime import RQRuntime
from zombieguard.leases import DeferredRelease, Outcome
from zombieguard.policy import Policy, current_config
from zombieguard.worker.attempt import Attempt, running
from zombieguard.worker.lifecycle import BACKSTOP_SECONDS, ESCALATE_AFTER, emit_limit, record_end, stopping


class _OwnKills(logging.Filter):
    """Tells RQ's line about a horse that "terminated unexpectedly" what zombieguard did to it."""

    def __init__(self, worker: _GuardedMixin) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        """RQ's record, its account of the horse's end replaced where zombieguard killed it."""
        if isinstance(record.args, tuple) and any(internals.UNEXPECTED_END in str(a) for a in record.args):
            account = self.worker.zg_own_kill()
            if account is not None:
                record.args = tuple(
                    account if internals.UNEXPECTED_END in str(arg) else arg for arg in record.args
                )
        return True


class _GuardedMixin:
    """The behaviour both guarded worker classes add to RQ's."""

    _zg_watchdog_process = False
    _zg_forks = False
    """Whether jobs run in a horse this process forks (RQ < 2.7's SimpleWorker subclasses Worker:
    the class, not isinstance, says so)."""
    _zg: RQRuntime | None = None
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
    _zg_horse_status: int | None = None
    """The wait status of the running job's horse, when RQ found it dead."""
    _zg_oom_before: int | None = None
    """The cgroup's OOM kills counted as the running job started (see ``oom_kills``)."""

    if TYPE_CHECKING:  # RQ's attributes and methods, as this mixin uses them
        name: str
        connection: redis.Redis
        is_horse: bool
        horse_pid: int
        death_penalty_class: Any

        pubsub: Any
        pubsub_thread: Any

        log: logging.Logger

        def set_state(self, state: str, pipeline: Any = None) -> None: ...
        def prepare_execution(self, job: Job) -> Execution: ...
        def cleanup_execution(self, job: Job, pipeline: Any, *args: Any) -> None: ...

    # -- the worker's lifetime --------------------------------------------------------------
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """RQ's worker, its configuration validated first: an invalid one fails here, as it starts."""
        try:
            current_config()
        except ConfigurationError as exc:
            if click.get_current_context(silent=True) is None:
                raise
            # Under ``rq worker``, which logs any other exception with its traceback: one line.
            exc.show()
            raise SystemExit(exc.exit_code) from None
        super().__init__(*args, **kwargs)

    def bootstrap(
        self,
        logging_level: str | None = "INFO",
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ) -> None:
        """RQ's bootstrap, then zombieguard's threads (and watchdog process). zombieguard's lines are
        written as RQ's are (its format, timestamps included), unless the application's logging
        handles them already."""
        super().bootstrap(logging_level, date_format, log_format)  # type: ignore[misc]
        level = logging_level or self.log.getEffectiveLevel()  # RQ's command passes None: RQ's level
        setup_loghandlers(level, date_format, log_format, name="zombieguard")
        self.log.addFilter(_OwnKills(self))
        self._zg = RQRuntime(self, with_watchdog_process=self._zg_watchdog_process, on_lost=self._zg_lost)
        self._zg_install_interrupts()
        model = (
            "each job in a horse it forks"
            if self._zg_forks
            else "each job in its own process, a watchdog process beside it"
        )
        queues = ", ".join(self.queue_names())  # type: ignore[attr-defined]
        self._zg.announce(
            f"{type(self).__name__}: {model}", self._zg.default_policy, f"every job of {queues}"
        )

    def zg_own_kill(self) -> str | None:
        """What zombieguard did to the horse of the running job, when it stopped it (a limit, a lost
        lease, ``zombieguard kill``); None otherwise."""
        attempt = self._zg_attempt
        if attempt is None:
            return None
        if attempt.lost is not None:
            return f"zombieguard stopped it: {attempt.lost.detail}"
        if self._zg_stop is None:
            return None
        outcome, _ = self._zg_stop
        if outcome is Outcome.TIMED_OUT:
            error: BaseException = limit_error(Interrupt.HARD, attempt.policy, self._zg_job_timeout)
            return f"zombieguard stopped it: {error}, and killed it, stuck where no Python code runs"
        return f"zombieguard stopped it as {outcome}: {limit_error(Interrupt.HUNG, attempt.policy, None)}"

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
        attempt, pid = self._zg_attempt, self.horse_pid
        if not self._zg_kill_command or attempt is None or pid <= 0:
            super().handle_payload(message)  # type: ignore[misc]
            return
        # zombieguard kill took the lease before sending it: say who stopped the job, and why.
        with contextlib.suppress(LeaseLost):
            attempt.verify()
        # RQ kills the horse's process group; what the job started elsewhere is ended here.
        handle = super().handle_payload  # type: ignore[misc]
        self._zg_stopping(attempt, pid, lambda found: handle(message))

    def _zg_install_interrupts(self) -> None:
        """Signal handlers that raise zombieguard's interrupts in the main thread (job code)."""

        def raise_interrupt(kind: Interrupt) -> None:
            if self._zg_body_done:
                return  # the body returned just before the limit: RQ is recording its end
            zg = self._zg
            if kind is not Interrupt.LOST and zg is not None and not zg.slot.aimed_at(self._zg_generation):
                return  # sent for the job before this one
            attempt = self._zg_attempt
            if kind is not Interrupt.LOST:
                self._zg_interrupt = kind
                policy = attempt.policy if attempt is not None else Policy()
                raise limit_error(kind, policy, self._zg_job_timeout)
            if attempt is not None and attempt.lost is not None:
                self._zg_interrupt = kind
                raise attempt.lost

        install_interrupt_handlers(raise_interrupt)

    # -- one job ------------------------------------------------------------------------------
    def _zg_prepare(self, job: Job, queue: Queue) -> tuple[Execution, Attempt | None] | None:
        """RQ's ``prepare_execution`` with the job's lease acquired around it (the two round trips
        overlap); None when this delivery is not to run."""
        self._zg_attempt = None
        self._zg_stop = None
        self._zg_interrupt = None
        self._zg_body_done = False
        self._zg_kill_command = False
        self._zg_unprepared = None
        self._zg_horse_status = None
        self._zg_oom_before = oom_kills() if self._zg_forks else None
        zg = self._zg
        sent = acquire.send(zg, self.name, job, queue) if zg is not None else None
        execution = self.prepare_execution(job)
        if zg is None or sent is None:
            return execution, None
        begun = acquire.begin(zg, self.name, job, sent)
        if begun is None:
            self._zg_skip(job, execution)
            return None
        self._zg_attempt, self._zg_generation = begun.attempt, begun.generation
        return execution, begun.attempt

    def _zg_skip(self, job: Job, execution: Execution) -> None:
        """A delivery not to run (duplicate or stale): undo what RQ prepared for it."""
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipe, *([execution] if internals.RQ3 else []))
            pipe.execute()
        self.set_state(WorkerStatus.IDLE)

    def _zg_watch(self, attempt: Attempt, pid: int, capture: Any, escalate: Any) -> Watched:
        assert self._zg is not None
        zg = self._zg
        attempt.processes = self._zg_processes(attempt, pid)
        generation = self._zg_generation

        def signal_job(signum: int) -> None:
            zg.slot.aim(generation)  # a signal that arrives once the next job began is not its
            with contextlib.suppress(ProcessLookupError):  # the horse ended meanwhile
                os.kill(pid, signum)

        def stop(watched: Watched, limit: Limit, stack: str | None) -> None:
            if self._zg_attempt is not attempt:
                return  # it ended meanwhile
            if limit is Limit.SOFT:
                emit_limit(ADAPTER, attempt.event, limit, limit.seconds(attempt.policy), stack)
                signal_job(Interrupt.SOFT.signal)
                return
            self._zg_stop = (limit.outcome, stack)  # before any receiver runs: the job may end meanwhile

            def interrupt(found: Found) -> None:
                seconds = limit.seconds(attempt.policy)
                emit_limit(ADAPTER, attempt.event, limit, seconds, stack, processes=found.described)
                signal_job(Interrupt.at(limit).signal)

            self._zg_stopping(attempt, pid, interrupt)

        def stalled(watched: Watched) -> None:
            # The worker was frozen past the job's lease and a limit: a stall, as a sweeper judges
            # it, not a timeout. Given up now (recovered at once) and stopped as superseded.
            if self._zg_attempt is not attempt or attempt.unguarded:
                return
            why = "its worker was frozen past the job's lease and a limit: a stall, not a timeout"

            def stop_superseded() -> None:
                attempt.mark_lost(LeaseLost(attempt.job.job_id, attempt.token, why))
                self._zg_stop_lost()

            zg.give_up_stalled(
                attempt.job, attempt.token, why, before_sweep=stop_superseded, again=attempt.reestablish
            )

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

    def _zg_stopping(self, attempt: Attempt, pid: int, stop: Callable[[Found], object]) -> None:
        """:func:`stopping` for ``attempt``'s job, running in ``pid``."""
        stopping(
            self._zg_processes(attempt, pid),
            attempt.policy.children_grace,
            stop,
            adapter=ADAPTER,
            make=attempt.event,
            note=attempt.note_ended,
        )

    def _zg_processes(self, attempt: Attempt, pid: int) -> JobProcesses:
        """Where the processes ``attempt``'s job started are: under ``pid``, since it began."""
        assert self._zg is not None
        return self._zg.job_processes(attempt.job.job_id, pid, attempt.started_monotonic)

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
            while_redis_away(
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
            elif not record_end(ADAPTER, attempt, Outcome.COMPLETED):
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
        while_redis_away(f"rq job {job.id}: RQ could not {what}", deadline, call)

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
        if attempt is not None and not record_end(ADAPTER, attempt, Outcome.FAILED, "returned Retry"):
            return
        super().handle_job_retry(job, queue, *args, **kwargs)  # type: ignore[misc]

    def handle_work_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
        """RQ's, noting how the horse ended for the attempt's history."""
        self._zg_horse_status = ret_val
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)  # type: ignore[misc]

    def handle_job_failure(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> None:
        """Failures the RQ way, with zombieguard's verdict on why, and refused for a superseded attempt."""
        attempt = self._zg_attempt
        zg = self._zg
        if attempt is None or zg is None:
            proceed = True
        elif self._zg_unprepared is not None:
            proceed = verdict.unstarted(zg, attempt, self._zg_unprepared)
        elif self.is_horse or not self._zg_forks:
            proceed = verdict.raised_here(attempt, self._zg_interrupt, kwargs.get("exc_string", ""))
        else:
            status, self._zg_horse_status = self._zg_horse_status, None
            end = verdict.HorseEnd(
                stopped_on_request=internals.stop_requested_for(self) == job.id,
                kill_command=self._zg_kill_command,
                stop=self._zg_stop,
                death_penalty_class=self.death_penalty_class,
                how="" if status is None else how_it_ended(status, self._zg_oom_before, oom_kills()),
            )
            proceed = verdict.horse_ended(zg, attempt, job, end, kwargs)
        if proceed:
            super().handle_job_failure(job, queue, *args, **kwargs)  # type: ignore[misc]


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
            die_with_parent(self._zg_parent)
            self._zg_install_interrupts()
            self._zg.dumper.install()

    def _zg_kill_horse(self) -> None:
        """Kill the horse and what it started (its own session: RQ's horse calls setsid). Never
        this worker's own process group: RQ sets ``horse_pid`` to 0 once it reaped the horse, and
        a horse signalled before its setsid is still in this worker's group."""
        pid, attempt = self.horse_pid, self._zg_attempt
        if pid <= 0:
            return

        def kill(found: Found) -> None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                group = os.getpgid(pid)
                if group == os.getpgrp():
                    os.kill(pid, signal.SIGKILL)
                else:
                    os.killpg(group, signal.SIGKILL)

        if attempt is None:
            kill(Found([]))
            return
        # What the job started in a session of its own, or outside the horse's process group.
        self._zg_stopping(attempt, pid, kill)

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
        attempt = self._zg_attempt
        if attempt is None:
            return
        self._zg_stopping(attempt, os.getpid(), lambda found: os.kill(os.getpid(), Interrupt.LOST.signal))
