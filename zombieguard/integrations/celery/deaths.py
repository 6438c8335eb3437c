"""Prefork, in the worker's main process: what the death of a pool process makes of its task.

Celery reports the death to the task's request (:mod:`.request`), and the monitor (:mod:`.monitor`)
often sees it first. Either way the verdict comes from the monitor's record and the task's lease:
timed out or hung (killed here at a limit), lease lost (a newer attempt holds the task: nothing of
this one is recorded), stalled (it died by itself: recovered or dead-lettered), or Celery's own
handling. A task that died before its lease was written has it written here first, then recovered.
"""

from __future__ import annotations

import contextlib
import functools
import re
from typing import TYPE_CHECKING, Any

import redis

from zombieguard.containment import contained, log
from zombieguard.enforcement.slot import SlotState
from zombieguard.errors import ConfigurationError, LeaseLost
from zombieguard.integrations.celery import internals
from zombieguard.integrations.celery.adapter import ADAPTER
from zombieguard.integrations.celery.message import message_payload
from zombieguard.leases import CorruptRecord, JobSpec, LeaseRecord, LeaseState, Outcome

if TYPE_CHECKING:
    from zombieguard.integrations.celery.monitor import SlotMonitor
    from zombieguard.integrations.celery.worker import CeleryRuntime


class PoolDeaths:
    """The verdicts on a prefork worker's dead pool processes, and the recovery of their tasks."""

    def __init__(self, runtime: CeleryRuntime, monitor: SlotMonitor) -> None:
        self.runtime = runtime
        self.monitor = monitor

    def verdict(self, request: Any, terminated: bool, how: str = "") -> Outcome | None:
        """The process running ``request`` died (``terminated``: by ``revoke(terminate=True)``;
        ``how``: Celery's words on it, ``Worker exited prematurely: signal 9 (SIGKILL)``). What
        zombieguard makes of it: timed out or hung (this worker killed it at a limit), lease lost
        (superseded), stalled (it died by itself: recovered or dead-lettered), None (Celery's own
        handling)."""
        how = self._said(how)
        # The slot first: the monitor records what it saw (killed, or dead before its lease was
        # written) before it clears a slot, under the same lock.
        state, killed = self.monitor.died(request.id)
        if killed is not None:
            return killed
        return self._from_lease(request, state, terminated, how)

    def _from_lease(
        self, request: Any, state: SlotState | None, terminated: bool, how: str
    ) -> Outcome | None:
        """:meth:`verdict` for a pool process this worker did not kill, from the task's lease."""
        job_id = request.id
        runtime = self.runtime
        record = None
        read = False
        with contextlib.suppress(Exception):
            record = runtime.store.record(job_id)
            read = True
        if record is None:
            return None if state is None or terminated else self._without_lease(request, state, read, how)
        if not holds_lease(record, runtime.name, state):
            # A newer attempt (or a sweeper) holds the task: nothing of this one is recorded.
            log.warning("celery task %s: its pool process died; its attempt no longer holds the task", job_id)
            return Outcome.LEASE_LOST
        if record.state is LeaseState.DONE:
            return None  # it died after its attempt's end was written: Celery's own handling
        token = state.token if state is not None and state.token else record.token
        spec = JobSpec(job_id, ADAPTER, record.task, record.queue)
        if not terminated:
            orphans = functools.partial(runtime.end_orphans, spec, token, record.attempt)
            runtime.give_up_stalled(spec, token, died_reason(how), before_sweep=orphans)
            return Outcome.STALLED
        try:  # revoked: Celery records it so; the lease ends stopped
            runtime.store.release(spec, token, Outcome.STOPPED, "revoked with terminate=True")
        except (redis.RedisError, LeaseLost) as exc:
            log.warning("celery task %s: its stop not recorded (%s)", job_id, exc)
        return None

    def superseded(self, job_id: str) -> bool:
        """Whether the attempt of ``job_id`` that this worker runs no longer holds the task (see
        :func:`is_superseded`): then nothing of it may be recorded, by whatever path notices its
        end. False when Redis cannot tell."""
        state = self.monitor.running(job_id)
        try:
            record = self.runtime.store.record(job_id)
        except (redis.RedisError, CorruptRecord) as exc:
            log.warning("celery task %s: could not check its lease (%s)", job_id, exc)
            return False
        return record is not None and is_superseded(record, self.runtime.name, state)

    def _said(self, how: str) -> str:
        """Celery's words on a pool process's end (``Worker exited prematurely: signal 9 (SIGKILL)
        Job: 0.``, ``exitcode 1``) as the monitor says it (``killed by signal 9 (SIGKILL)``)."""
        found = _CELERY_END.search(how)
        if found is None:
            return how
        number = int(found.group(2))
        return self.monitor.described(number if found.group(1) == "signal" else number << 8)

    def recover_unleased(self, job_id: str, how: str) -> None:
        """In the event loop: recover a task whose pool process the monitor saw die before its lease
        was written, unless Celery's news of it came first (:meth:`verdict` recovered it)."""
        state = self.monitor.take_unleased(job_id)
        if state is None:
            return
        request = internals.request_by_id(job_id)
        if request is None:
            log.warning("celery task %s: its pool process died; no request left to recover it", job_id)
            return
        # Celery's news of the death runs in this thread too, so it comes before or after, not
        # during (a prefork worker without an event loop, on a transport that has none, runs this in
        # the monitor's thread: there the two may overlap).
        with contained(f"celery task {job_id}: recovering it"):
            if self._recover_unleased(state, request, how):
                self.monitor.recovered(job_id)

    def _recover_unleased(self, state: SlotState, request: Any, how: str) -> bool:
        """Write the lease of a task whose pool process died before it could (within its
        ``lease_delay``), from its slot and the payload of Celery's request for it (the message as it
        came), and recover the task. False when another attempt holds it or Redis is away."""
        payload = message_payload(request)
        try:
            token = self.runtime.write_lease_for(state, payload)
        except (ConfigurationError, redis.RedisError) as exc:
            log.warning("celery task %s: its lease not written for recovery (%s)", state.job_id, exc)
            return False
        spec = JobSpec(state.job_id, ADAPTER, state.task, state.queue, payload)
        orphans = functools.partial(self.runtime.end_orphans, spec, token, state.attempt)
        return bool(token) and self.runtime.give_up_stalled(
            spec, token, died_reason(how), before_sweep=orphans
        )

    def _without_lease(self, request: Any, state: SlotState, read: bool, how: str) -> Outcome | None:
        """:meth:`verdict` for a task that died by itself with no lease in Redis (``read``: Redis
        said so; else it did not answer)."""
        if not state.token:
            # Its lease not written yet (within its lease_delay): write it, recover.
            return Outcome.STALLED if self._recover_unleased(state, request, how) else None
        if read:
            # Its lease vanished (a failover, a restart without persistence): again, recover.
            return Outcome.STALLED if self._recover_vanished(state, request, how) else None
        return None

    def _recover_vanished(self, state: SlotState, request: Any, how: str) -> bool:
        """Recover a task whose pool process died and whose lease Redis no longer has: written again
        from its slot and the payload of Celery's request for it, then given up. False when it
        could not be (another attempt holds it, Redis away): Celery's own handling then."""
        payload = message_payload(request)
        spec = JobSpec(state.job_id, ADAPTER, state.task, state.queue, payload)
        orphans = functools.partial(self.runtime.end_orphans, spec, state.token, state.attempt)
        return self.runtime.give_up_stalled(
            spec,
            state.token,
            died_reason(how),
            before_sweep=orphans,
            again=lambda: self.runtime.write_again_for(state, state.token, payload),
        )


_CELERY_END = re.compile(r"\b(signal|exitcode) (\d+)\b")
"""How billiard's ``human_status`` words a pool process's end, in Celery's ``WorkerLostError``."""


def died_reason(how: str) -> str:
    """A pool process's death, for the attempt's history (``how``: Celery's words on it, if any)."""
    return f"its pool process died: {how}" if how else "its pool process died"


def holds_lease(record: LeaseRecord, worker: str, state: SlotState | None) -> bool:
    """Whether the lease ``record`` is the one of the attempt ``worker`` runs (``state``: its slot, if
    known), still running or ended by that attempt itself (``done``). Not when another worker or
    token holds it, or a sweeper claimed, requeued or ended it: then the attempt is superseded. An
    attempt whose lease is not written yet holds the task unless the lease is a newer attempt's."""
    if state is not None and not state.token:
        return record.attempt < state.attempt or (record.attempt == state.attempt and record.worker == worker)
    own = record.state in (LeaseState.RUNNING, LeaseState.DONE) and record.worker == worker
    return own and (state is None or record.token == state.token)


def is_superseded(record: LeaseRecord, worker: str, state: SlotState | None) -> bool:
    """Whether the attempt ``worker`` runs (``state``: its slot, if known) no longer holds its task:
    a newer attempt or a sweeper has it, or its lease, still running, was given up for a sweeper to
    act on (see :func:`holds_lease`)."""
    return record.given_up or not holds_lease(record, worker, state)
