"""Prefork, in a pool process: the executor that announces each attempt in the process's slot, for
the worker's main process (:mod:`.monitor`) to renew and enforce."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery.app.task import Context, Task

from zombieguard.containment import log
from zombieguard.enforcement.interrupts import Interrupt, install_interrupt_handlers
from zombieguard.enforcement.slot import JobSlot
from zombieguard.enforcement.stacks import StackDumper
from zombieguard.integrations.celery.adapter import ADAPTER
from zombieguard.integrations.celery.executor import Executor, Running, announce
from zombieguard.integrations.celery.message import MUTABLE, mutable_fields, task_payload
from zombieguard.worker.attempt import Attempt, AttemptHooks
from zombieguard.worker.heartbeat import Heartbeat
from zombieguard.worker.lifecycle import stopping

if TYPE_CHECKING:
    from zombieguard.integrations.celery.worker import CeleryRuntime


class PoolProcessExecutor(Executor):
    """Prefork: a pool process. The worker's main process renews and enforces through the slot."""

    def __init__(self, runtime: CeleryRuntime, index: int) -> None:
        releases = Heartbeat(
            runtime.store, ADAPTER, runtime.name, runtime.default_policy.renew_every, presence=False
        )
        super().__init__(runtime, releases)
        self.slot = JobSlot(runtime.dir / f"slot-{index}")
        self._hooks = AttemptHooks(
            progress=self.slot.progress,
            confirmations=self.slot.confirmed_until,
            acquired=self._acquired,
            refused=self.refused,
        )
        """Every attempt of this process runs in its one slot: one set of hooks serves them all."""
        self.dumper = StackDumper(runtime.dir / f"stacks-{index}.txt")
        self.dumper.install()
        install_interrupt_handlers(self.raise_interrupt)
        releases.start()

    def begin(self, state: Running) -> None:
        """Write the slot: the main process renews the lease and watches the limits from it (the
        limits at once; the lease once it is written, when the token reaches the slot)."""
        attempt = state.attempt
        state.generation = announce(self.slot, attempt, self.pid, keep_payload=False)

    def hooks(self) -> AttemptHooks:
        """Beats and confirmations go to the slot, for the main process."""
        return self._hooks

    def describer(self, task: Task, request: Any) -> tuple[Callable[[], str], bool]:
        """Only a snapshot of what a body may change in place now (its arguments, its request's
        chain, callbacks and headers): the payload is computed from it if the lease is written,
        which most tasks end before. A pool process that dies before is recovered from Celery's
        request in the main process."""
        try:
            snapshot = (request.args, request.kwargs, mutable_fields(request))
            frozen = pickle.dumps(snapshot, pickle.HIGHEST_PROTOCOL)
        except Exception:  # what only a serializer of its own can carry: the payload now
            payload = task_payload(task, request)
            return lambda: payload, True

        def describe() -> str:
            try:
                args, kwargs, values = pickle.loads(frozen)
            except Exception as exc:  # e.g. an argument's own __setstate__
                log.warning(
                    "celery task %s: the copy of its arguments does not load (%s); its payload "
                    "takes them as they are now",
                    request.id,
                    exc,
                )
                return task_payload(task, request)
            fields = dict(zip(MUTABLE, values, strict=True))
            return task_payload(task, Context(vars(request), **fields), args, kwargs)

        return describe, True

    def _acquired(self, attempt: Attempt) -> None:
        self.slot.set_token(attempt.token)
        self.slot.confirm(attempt.confirmed_until)

    def aimed_at(self, state: Running) -> bool:
        """The main process names the task an interrupt is for in the slot before it signals."""
        return self.slot.aimed_at(state.generation)

    def refused(self, attempt: Attempt) -> None:
        """Interrupt the task in the main thread (the signal handler raises ``LeaseLost``)."""
        stopping(
            self.runtime.job_processes(attempt.job.job_id, os.getpid(), attempt.started_monotonic),
            attempt.policy.children_grace,
            lambda found: os.kill(os.getpid(), Interrupt.LOST.signal),
            adapter=ADAPTER,
            make=attempt.event,
            note=attempt.note_ended,
        )

    def end(self, state: Running) -> None:
        """Clear the slot."""
        self.slot.clear()
