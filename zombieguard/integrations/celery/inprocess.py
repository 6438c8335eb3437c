"""Threads and solo pools: tasks run in the worker's own process. Its heartbeat renews the leases,
its watchdog thread enforces the limits, and the watchdog process beside it acts when no thread
of the worker can (C code holding the GIL)."""

from __future__ import annotations

import functools
import os
import pickle
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
from celery.app.task import Task

from zombieguard.containment import contained, log
from zombieguard.enforcement.children import Found, JobProcesses
from zombieguard.enforcement.interrupts import Interrupt, install_interrupt_handlers, interrupt_thread
from zombieguard.enforcement.limits import Limit, LimitClock
from zombieguard.enforcement.slot import PAYLOAD_ROOM, JobSlot
from zombieguard.enforcement.stacks import thread_stack
from zombieguard.enforcement.watchdog import Watched
from zombieguard.errors import HardTimeLimitExceeded, JobHung, JobInterrupt
from zombieguard.integrations.celery.adapter import ADAPTER
from zombieguard.integrations.celery.executor import Executor, Running, SoftTimeLimit, announce
from zombieguard.integrations.celery.message import Snapshot, task_payload
from zombieguard.worker.attempt import Attempt, AttemptHooks
from zombieguard.worker.lifecycle import ESCALATE_AFTER, emit_limit, stopping

if TYPE_CHECKING:
    from zombieguard.integrations.celery.worker import CeleryRuntime


class InProcessExecutor(Executor):
    """Threads and solo pools: the worker's own heartbeat renews, its watchdog enforces."""

    def __init__(self, runtime: CeleryRuntime, signals_main_thread: bool) -> None:
        super().__init__(runtime, runtime.heartbeat)
        self.signals_main_thread = signals_main_thread
        self.own_environment = signals_main_thread
        self._watched: dict[int, Watched] = {}
        self._states: dict[int, Running] = {}
        self._hooks: dict[int, AttemptHooks] = {}
        """Per pool thread: its slot's (every attempt of a thread runs in that thread's slot)."""
        if signals_main_thread:
            install_interrupt_handlers(self.raise_interrupt)

    def begin(self, state: Running) -> None:
        """Renew the lease with the worker's heartbeat; enforce the limits with its watchdog."""
        runtime, attempt = self.runtime, state.attempt
        ident = threading.get_ident()
        if not attempt.pending:
            runtime.heartbeat.add(attempt)
        self._states[ident] = state
        if not self.signals_main_thread:
            state.thread = threading.get_native_id()
        attempt.processes = self.processes(state)
        if attempt.policy.limited:  # else the watchdog has nothing to enforce
            clock = LimitClock(
                attempt.policy, attempt.started_monotonic, lambda: attempt.last_progress_monotonic
            )
            watched = Watched(
                clock,
                stop=lambda w, limit, stack: self._stop(state, ident, limit, stack),
                capture=lambda: thread_stack(ident),
                escalate=lambda w: runtime.zombie_threads.stuck(state, ident, w),
                escalate_after=ESCALATE_AFTER,
                label=attempt.job.job_id,
                stalled=lambda w: self._stalled(state, ident),
            )
            self._watched[ident] = runtime.watchdog.watch(watched)
        # The watchdog process beside the worker reads it, for when no thread of this one can run.
        slot = state.slot = runtime.thread_slot(ident)
        state.generation = announce(slot, attempt, self.pid, keep_payload=True)

    def hooks(self) -> AttemptHooks:
        """Beats go to this thread's slot, for the watchdog process; a pending lease, once written,
        to the heartbeat and the slot."""
        ident = threading.get_ident()
        hooks = self._hooks.get(ident)
        if hooks is None:
            slot = self.runtime.thread_slot(ident)
            hooks = self._hooks[ident] = AttemptHooks(
                progress=slot.progress,
                acquired=lambda written: self._acquired(written, slot),
                refused=self.refused,
            )
        return hooks

    def describer(self, task: Task, request: Any) -> tuple[Callable[[], str], bool]:
        """The request, pickled now (a few microseconds, where the payload costs tens): the payload
        is computed from it if the lease is written, which most tasks end before; the slot keeps it
        for the watchdog process, which writes the lease when no thread here can (C code holding the
        GIL). False, the payload computed now, when it does not pickle or fit the slot."""
        try:
            pickled = pickle.dumps(vars(request), pickle.HIGHEST_PROTOCOL)
        except Exception:  # what only a serializer of its own can carry
            pickled = b""
        if not pickled or len(pickled) > PAYLOAD_ROOM:
            payload = task_payload(task, request)
            return lambda: payload, False
        return Snapshot(task, request, pickled), True

    def _acquired(self, attempt: Attempt, slot: JobSlot) -> None:
        self.runtime.heartbeat.add(attempt)
        slot.set_token(attempt.token)

    def aimed_at(self, state: Running) -> bool:
        """Solo: the watchdog thread names the task an interrupt is for before it signals."""
        return state.slot is not None and state.slot.aimed_at(state.generation)

    def refused(self, attempt: Attempt) -> None:
        """Interrupt the task's thread, as for a lease found superseded."""
        self.lost(attempt)

    def end(self, state: Running) -> None:
        """Stop renewing and enforcing."""
        runtime, ident = self.runtime, threading.get_ident()
        self._states.pop(ident, None)
        watched = self._watched.pop(ident, None)
        if watched is not None:
            runtime.watchdog.unwatch(watched)
        if state.attempt.token:  # its lease was written (and renewed since): no longer
            runtime.heartbeat.remove(state.attempt)
        if state.slot is not None:
            state.slot.clear()
        runtime.zombie_threads.thread_ended(ident)

    def _stop(self, state: Running, ident: int, limit: Limit, stack: str | None) -> None:
        attempt = state.attempt
        ended = not self.signals_main_thread and (state.body_done or self._states.get(ident) is not state)
        if limit is Limit.SOFT or ended:
            emit_limit(ADAPTER, attempt.event, limit, limit.seconds(attempt.policy), stack)
            self._interrupt(state, ident, Interrupt.at(limit))
            return
        state.stack = stack

        def interrupt(found: Found) -> None:
            seconds = limit.seconds(attempt.policy)
            emit_limit(ADAPTER, attempt.event, limit, seconds, stack, processes=found.described)
            self._interrupt(state, ident, Interrupt.at(limit))

        stopping(
            self.processes(state),
            attempt.policy.children_grace,
            interrupt,
            adapter=ADAPTER,
            make=attempt.event,
            note=attempt.note_ended,
        )

    def processes(self, state: Running) -> JobProcesses:
        """Where the processes the task of ``state`` started are."""
        return self.runtime.job_processes(
            state.attempt.job.job_id, self.pid, state.attempt.started_monotonic, state.thread
        )

    def _interrupt(self, state: Running, ident: int, kind: Interrupt) -> None:
        if self.signals_main_thread:
            if state.slot is not None:
                state.slot.aim(state.generation)
            os.kill(os.getpid(), kind.signal)
            return
        if state.body_done or self._states.get(ident) is not state:
            return  # it ended meanwhile: an interrupt now would land in the thread's next task
        state.interrupt = kind
        exc_type: type[BaseException] = {
            Interrupt.SOFT: SoftTimeLimit,
            Interrupt.HARD: HardTimeLimitExceeded,
            Interrupt.HUNG: JobHung,
        }[kind]
        interrupt_thread(ident, exc_type)

    def _stalled(self, state: Running, ident: int) -> None:
        """The worker was frozen past the task's lease and a limit (see :attr:`Watched.stalled`):
        a stall, not a timeout. The lease is given up as stalled (written first if it was still
        pending), the task recovered at once, and this attempt stopped as superseded: nothing of it
        is recorded."""
        if state.body_done or self._states.get(ident) is not state:
            return
        attempt = state.attempt
        why = "its worker was frozen past the task's lease and a limit: a stall, not a timeout"
        with contained(f"celery task {attempt.job.job_id}: giving it up as stalled"):
            try:
                attempt.acquire_now()
            except redis.RedisError as exc:
                log.warning("celery task %s: %s; its lease not written (%s)", attempt.job.job_id, why, exc)
            if attempt.token and attempt.lost is None:
                # The attempt stopped before the sweep (a round trip to the broker): the watchdog
                # process, woken with this one, would take a job still running past its limit for
                # one stuck in C code.
                self.runtime.give_up_stalled(
                    attempt.described(),
                    attempt.token,
                    why,
                    before_sweep=lambda: self.lost(attempt),
                    again=attempt.reestablish,
                )
                return
        self.lost(attempt)

    def lost(self, attempt: Attempt) -> None:
        """The heartbeat found this attempt superseded: stop it, and what it started."""
        for ident, state in list(self._states.items()):
            if state.attempt is not attempt or state.body_done:
                continue
            stopping(
                self.processes(state),
                attempt.policy.children_grace,
                functools.partial(self._interrupt_lost, state, ident),
                adapter=ADAPTER,
                make=attempt.event,
                note=attempt.note_ended,
            )

    def _interrupt_lost(self, state: Running, ident: int, found: Found) -> None:
        if self.signals_main_thread:
            os.kill(os.getpid(), Interrupt.LOST.signal)
        elif state.body_done or self._states.get(ident) is not state:
            return  # it ended meanwhile: an interrupt now would land in the thread's next task
        else:
            state.interrupt = Interrupt.LOST
            interrupt_thread(ident, JobInterrupt)
