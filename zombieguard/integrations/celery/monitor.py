"""Prefork, in the worker's main process: the monitor that reads the pool processes' slots, renews
their tasks' leases, writes a late lease for a process stuck in C code, and enforces the limits
(soft and hard interrupts by signal, SIGKILL for a process no interrupt stops)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from zombieguard.containment import contained, log, named
from zombieguard.enforcement.children import Found
from zombieguard.enforcement.deaths import child_status, how_it_ended, oom_kills
from zombieguard.enforcement.interrupts import Interrupt
from zombieguard.enforcement.limits import Deadlines, Limit
from zombieguard.enforcement.slot import JobSlot, SlotState
from zombieguard.enforcement.stacks import StackDumper
from zombieguard.enforcement.watchdog import process_exited
from zombieguard.errors import LeaseLost
from zombieguard.events import Subject
from zombieguard.integrations.celery import internals
from zombieguard.integrations.celery.adapter import ADAPTER
from zombieguard.integrations.celery.deaths import PoolDeaths, died_reason
from zombieguard.integrations.celery.message import message_payload
from zombieguard.leases import JobSpec, Outcome, text
from zombieguard.worker.heartbeat import processes_under
from zombieguard.worker.lifecycle import ESCALATE_AFTER, emit_limit, stopping
from zombieguard.worker.onbehalf import release_written

if TYPE_CHECKING:
    from zombieguard.integrations.celery.worker import CeleryRuntime


MONITOR_PERIOD = 0.05
"""How often a prefork worker's main process reads its pool processes' slots."""


LATE_LEASE = 0.1
"""Prefork: how long past its ``lease_delay`` a pool process's task may go without its lease before
the main process writes it (no thread of the pool process can: C code holding the GIL)."""


@dataclass
class _Tracked:
    """A pool process's running attempt, as the worker's main process follows it."""

    path: Path
    state: SlotState
    renewed: float
    soft_fired: bool = False
    stopped: Outcome | None = None
    stopped_at: float = 0.0
    stack: str | None = None
    killed: bool = False
    written: int = 0
    """The token of the lease this process wrote for the task, its pool process late to write it
    (0: none); the pool process adopts it when it runs again (see :func:`announce`)."""
    tried: bool = False
    """This process tried to write the task's lease and had an answer from Redis."""
    retry_at: float = 0.0
    """When to try again, Redis not having answered (monotonic)."""

    @property
    def token(self) -> int:
        """The task's lease token, whoever wrote the lease (0 while none is written)."""
        return self.state.token or self.written


class SlotMonitor:
    """Prefork: renews the leases of the pool processes' attempts and enforces their limits."""

    def __init__(self, runtime: CeleryRuntime) -> None:
        self.runtime = runtime
        self.deaths = PoolDeaths(runtime, self)
        """What the death of a pool process makes of its task."""
        self.slots: dict[Path, JobSlot] = {}
        self.tracked: dict[Path, _Tracked] = {}
        self._killed: dict[str, Outcome] = {}
        """Tasks whose pool process this monitor killed, and why (timed out, hung, superseded), or
        saw die (stalled: recovered)."""
        self._unleased: dict[str, SlotState] = {}
        """Tasks whose pool process died before their lease was written, to recover in the event
        loop (from Celery's request) by whichever comes first: this monitor's news or Celery's."""
        self.to_release: list[_Tracked] = []
        """Tasks that ended after this process wrote their leases for them: each lease is released
        as completed unless the pool process adopted it (then it records its own end). Kept until
        Redis answers."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listed = 0.0
        self.looked = time.monotonic()
        """When this monitor last looked at the slots (monotonic), or was made."""
        self._unanswered = False
        """Redis did not answer the last write or release of a lease this process wrote for a task
        (logged once until it answers again)."""
        self._oom = oom_kills()
        """The cgroup's OOM kills, counted at most a second ago: one more since names a death's cause."""
        self._own_kills = _OwnKills()

    def _refresh(self, now: float, *, force: bool = False) -> None:
        if now - self._listed < 1.0 and not force:
            return
        self._listed = now
        self._oom = oom_kills()
        for path in self.runtime.dir.glob("slot-*"):
            if path not in self.slots:
                with contextlib.suppress(OSError, ValueError):
                    self.slots[path] = JobSlot(path)

    def check(self, now: float) -> None:
        """One look at every slot: renew what is due, act on every limit that passed."""
        self._refresh(now)
        due: list[_Tracked] = []
        late: list[_Tracked] = []
        died: list[tuple[SlotState, int, Any, str]] = []
        with self._lock:
            since, self.looked = now - self.looked, now
            for path, slot in list(self.slots.items()):
                state = slot.read()
                tracked = self.tracked.get(path)
                if tracked is not None and (not state.active or state.generation != tracked.state.generation):
                    if tracked.written:
                        self.to_release.append(tracked)
                    del self.tracked[path]
                    tracked = None
                if not state.active:
                    continue
                gone = process_exited(state.pid) and _died_by_itself(state, tracked)
                if not gone and _woke_past_its_lease(state, tracked, now, since):
                    if not self._kill_woken(slot, state):
                        continue  # it gave the task up itself and took another: the next look sees it
                    log.warning(
                        "celery task %s[%s]: its worker was frozen %.1f s, past the task's lease and a "
                        "limit: a stall, killed and recovered, not timed out",
                        state.task,
                        state.job_id,
                        since,
                    )
                    gone = True
                if gone:
                    token = state.token or (tracked.written if tracked is not None else 0)
                    # Marked before the slot is cleared: Celery's report, if it comes in between,
                    # must find the task handled here (or to be handled), not take it for one with
                    # no lease.
                    if token:
                        self._killed[state.job_id] = Outcome.STALLED
                    else:
                        self._unleased[state.job_id] = state
                    # Celery's request for it, while Celery still holds it: what a lease that
                    # vanished is written again with.
                    request = internals.request_by_id(state.job_id) if token else None
                    died.append((state, token, request, self._how_it_ended(state.pid)))
                    slot.clear()
                    self.tracked.pop(path, None)
                    continue
                if tracked is None:
                    # The acquire itself set the lease's expiry: the first renewal is due a third in.
                    tracked = self.tracked[path] = _Tracked(path, state, renewed=state.started)
                tracked.state = state
                with contained(f"prefork monitor, task {state.job_id}"):
                    self._enforce(tracked, now)
                if tracked.token and not tracked.killed and now - tracked.renewed >= state.lease_ttl / 3:
                    due.append(tracked)
                elif _lease_late(tracked, now):
                    late.append(tracked)
        self._act(now, due, late, died)

    def _act(
        self,
        now: float,
        due: list[_Tracked],
        late: list[_Tracked],
        died: list[tuple[SlotState, int, Any, str]],
    ) -> None:
        """What a look found to do in Redis (outside the lock)."""
        if self.to_release:
            self._release_written()
        for tracked in late:
            self._write_lease(tracked, now)
        if due:
            self._renew(due)
        for state, token, request, how in died:
            self._died(state, token, request, how)

    def _how_it_ended(self, pid: int) -> str:
        """How a pool process that died ended (it is a child of this process, not reaped yet)."""
        status = child_status(pid)
        return "" if status is None else self.described(status)

    def described(self, status: int) -> str:
        """A pool process's end, from its wait status, the OOM killer named when the cgroup's count
        rose since this monitor last read it."""
        return how_it_ended(status, self._oom, oom_kills())

    def _write_lease(self, tracked: _Tracked, now: float) -> None:
        """Write the lease of a task whose pool process has not written it past its ``lease_delay``
        (no thread of it can run: C code holding the GIL), with the payload of Celery's request for
        it, under the task's execution tag: the pool process adopts it if it runs again. A task
        that ends meanwhile has it released (:meth:`_release_written`)."""
        state = tracked.state
        tracked.tried = True
        with contained(f"celery task {state.job_id}: writing its lease for its pool process"):
            payload = self.runtime.request_payload(state.job_id)
            if payload is None:
                return
            try:
                token = self.runtime.write_lease_for(state, payload)
            except redis.RedisError as exc:
                tracked.tried, tracked.retry_at = False, now + 1.0
                self._answered(exc)
                return
            self._answered(None)
            if not token:
                return  # another attempt holds the task: this copy's own acquire is refused
            with self._lock:
                tracked.written = token
                tracked.renewed = now
                if self.tracked.get(tracked.path) is not tracked:  # it ended meanwhile
                    self.to_release.append(tracked)
            log.debug(
                "celery task %s[%s]: its lease written by the worker for process %d, which had not "
                "written it %.2f s in (C code holding the GIL, or a busy machine)",
                state.task,
                state.job_id,
                state.pid,
                now - state.started,
            )

    def _answered(self, exc: redis.RedisError | None) -> None:
        """Log a failed write or release of a lease written for a task once, until Redis answers."""
        if exc is not None and not self._unanswered:
            log.warning(
                "celery worker %s: leases written for its tasks wait for Redis (%s)", self.runtime.name, exc
            )
        elif exc is None and self._unanswered:
            log.warning("celery worker %s: Redis answers again", self.runtime.name)
        self._unanswered = exc is not None

    def _release_written(self) -> None:
        """Release, as completed, the leases this process wrote for tasks that ended without
        adopting them (the body returned before its process wrote or adopted the lease)."""
        with self._lock:
            ended, self.to_release = self.to_release, []
        for index, tracked in enumerate(ended):
            state = tracked.state
            spec = JobSpec(state.job_id, ADAPTER, state.task, state.queue)
            revoked = internals.revoked(state.job_id)
            try:
                release_written(
                    self.runtime.store,
                    spec,
                    tracked.written,
                    "revoked" if revoked else "ended before its pool process took over its lease",
                    Outcome.STOPPED if revoked else Outcome.COMPLETED,
                )
            except redis.RedisError as exc:
                self._answered(exc)
                with self._lock:
                    self.to_release[:0] = ended[index:]
                return
            self._answered(None)

    def _died(self, state: SlotState, token: int, request: Any, how: str) -> None:
        """A pool process died mid-task, and Celery has not said so yet (under load its pool notices
        only every few seconds): recover the task now. Celery's news of it, when it comes, finds the
        task handled (:meth:`PoolDeaths.verdict` says stalled). A task that died before its lease
        was written is recovered in the event loop, from Celery's request for it."""
        if not token:
            job_id = state.job_id
            self.runtime.in_loop(lambda: self.deaths.recover_unleased(job_id, how))
            return
        spec = JobSpec(state.job_id, ADAPTER, state.task, state.queue)
        orphans = functools.partial(self.runtime.end_orphans, spec, token, state.attempt)
        again = None
        if request is not None:  # its lease vanished: written again with the message's payload
            again = functools.partial(self.runtime.write_again_for, state, token, message_payload(request))
        if not self.runtime.give_up_stalled(spec, token, died_reason(how), before_sweep=orphans, again=again):
            # Celery's news of it came first (it was handled then), or it is left to Celery's news.
            self._killed.pop(state.job_id, None)

    def _event(self, state: SlotState) -> Callable[..., Any]:
        """Events about a pool process's task; the job's description is read from its lease (the slot
        does not hold it), one round trip, only when a limit fires."""
        payload = ""
        with contextlib.suppress(redis.RedisError):
            payload = text(
                self.runtime.store.client.hget(self.runtime.store.lease_key(state.job_id), "payload") or ""
            )

        subject = Subject(
            job_id=state.job_id,
            task=state.task,
            queue=state.queue,
            attempt=state.attempt,
            worker=self.runtime.name,
            adapter=ADAPTER,
            started_at=state.started_at,
            payload=payload,
        )
        return subject.event

    def _enforce(self, tracked: _Tracked, now: float) -> None:
        state = tracked.state
        if tracked.stopped is not None:
            if not tracked.killed and now >= tracked.stopped_at + ESCALATE_AFTER:
                self._kill(tracked)
            return
        limit = Deadlines.of_slot(state, soft=not tracked.soft_fired).passed(now)
        if limit is Limit.HARD or limit is Limit.PROGRESS:
            self._stop_task(tracked, limit)
        elif limit is Limit.SOFT:
            tracked.soft_fired = True
            emit_limit(ADAPTER, self._event(state), Limit.SOFT, None, None)
            self.slots[tracked.path].aim(state.generation)
            _signal(state.pid, Interrupt.SOFT.signal)

    def _dumper(self, tracked: _Tracked) -> StackDumper:
        return _dumper_of(self.runtime.dir, tracked.path)

    def _stop_task(self, tracked: _Tracked, limit: Limit) -> None:
        state = tracked.state
        stack = self._dumper(tracked).request(state.pid)
        kind = limit.outcome

        def interrupt(found: Found) -> None:
            seconds = _seconds(state, kind)
            emit_limit(ADAPTER, self._event(state), limit, seconds, stack, processes=found.described)
            tracked.stopped, tracked.stopped_at, tracked.stack = kind, time.monotonic(), stack
            self.slots[tracked.path].aim(state.generation)
            _signal(state.pid, Interrupt.at(limit).signal)

        self._stopping(state, interrupt)

    def _kill_woken(self, slot: JobSlot, state: SlotState) -> bool:
        """Kill the pool process of ``slot``, woken from a freeze past its task's lease, if it still
        runs the task of ``state``: its own watch saw the freeze too, and may have given that task
        up and taken the next one, which the kill must not hit. Whether it was killed."""
        killed: list[bool] = []

        def stop(found: Found) -> None:
            now = slot.read()
            if now.active and now.generation == state.generation:
                self._own_kills.pids.add(state.pid)
                _signal(state.pid, signal.SIGKILL)
                killed.append(True)

        self._stopping(state, stop)
        return bool(killed)

    def _stopping(self, state: SlotState, stop: Callable[[Found], object]) -> None:
        """:func:`stopping` for the task in a pool process's slot."""
        where = self.runtime.job_processes(state.job_id, state.pid, state.started)

        def make(kind: type[Any], **fields: Any) -> Any:  # a round trip: only when it says something
            return self._event(state)(kind, **fields)

        def note(processes: tuple[str, ...]) -> None:
            store, token = self.runtime.store, state.token or None
            store.note_ended_processes(state.job_id, token, self.runtime.name, processes)

        stopping(where, state.children_grace, stop, adapter=ADAPTER, make=make, note=note)

    def _kill(self, tracked: _Tracked) -> None:
        """The task did not end after its interrupt (C code holding the GIL): kill its process."""
        state = tracked.state
        tracked.killed = True
        kind = tracked.stopped or Outcome.TIMED_OUT
        self._killed[state.job_id] = kind
        self._own_kills.pids.add(state.pid)
        log.error(
            "celery task %s[%s] did not stop when interrupted (%s; C code holding the GIL?): killing "
            "the process that runs it (pid %d); the worker starts another",
            state.task,
            state.job_id,
            kind,
            state.pid,
        )
        if kind is Outcome.LEASE_LOST:
            self._stopping(state, _sender(state.pid, signal.SIGKILL))
            return
        limit = _seconds(state, kind)
        what = "hard_timeout" if kind is Outcome.TIMED_OUT else "progress_timeout"
        reason = f"ran past its {what} of {limit:g} s and was killed (stuck where no Python code runs)"
        spec = JobSpec(state.job_id, ADAPTER, state.task, state.queue)
        superseded = False
        if tracked.token:  # else no lease was written (stuck within its lease_delay): Celery's record only
            try:
                self.runtime.store.release(spec, tracked.token, kind, reason, tracked.stack)
            except LeaseLost:
                superseded = True  # a newer attempt holds the task: nothing of this one is recorded
                self._killed[state.job_id] = Outcome.LEASE_LOST
            except redis.RedisError as exc:
                log.warning("celery task %s: its timeout not written to its lease (%s)", state.job_id, exc)
        self._stopping(state, _sender(state.pid, signal.SIGKILL))
        if not superseded:
            job_id = state.job_id
            self.runtime.in_loop(lambda: self.runtime.record_timeout(job_id, limit))

    def _renew(self, due: list[_Tracked]) -> None:
        runtime = self.runtime
        sent_at = time.monotonic()
        try:
            codes = runtime.store.renew(
                ADAPTER,
                runtime.name,
                runtime.heartbeat.worker_ttl,
                [(t.state.job_id, t.token) for t in due],
                processes_under(
                    [runtime.job_processes(t.state.job_id, t.state.pid, t.state.started) for t in due]
                ),
            )
        except redis.RedisError as exc:
            log.warning("celery worker %s: renewing pool processes' leases failed: %s", runtime.name, exc)
            return
        for tracked, code in zip(due, codes, strict=True):
            state = tracked.state
            if code == "ok":
                tracked.renewed = sent_at
                self.slots[tracked.path].confirm(sent_at + state.lease_ttl)
            elif code == "missing":
                # Redis lost it (restart without persistence); the attempt re-establishes it when it
                # next writes. Renewing again later is harmless.
                tracked.renewed = sent_at
            elif tracked.stopped is None and self._still_running(tracked):
                log.warning(
                    "%s attempt %d lost its lease: %s. This attempt is stopped",
                    named(ADAPTER, state.task, state.job_id),
                    state.attempt,
                    runtime.store.why_lost(state.job_id, tracked.token, f"its renewal was refused ({code})"),
                )
                tracked.stopped, tracked.stopped_at = Outcome.LEASE_LOST, time.monotonic()
                self._stopping(state, _sender(state.pid, Interrupt.LOST.signal))

    def _still_running(self, tracked: _Tracked) -> bool:
        """Whether the task a renewal was sent for is still in its slot (it may have ended since)."""
        state = self.slots[tracked.path].read()
        return state.active and state.generation == tracked.state.generation

    def woke_past_lease(self, job_id: str) -> bool:
        """Whether the task ``job_id`` is (or is being) given up as a stall because its worker was
        frozen past its lease and a limit (see :func:`_woke_past_its_lease`): this monitor did so,
        or has not looked since the worker woke and will."""
        now = time.monotonic()
        with self._lock:
            if self._killed.get(job_id) is Outcome.STALLED or job_id in self._unleased:
                return True
            since = now - self.looked
            for path, slot in self.slots.items():
                state = slot.read()
                if state.active and state.job_id == job_id:
                    return _woke_past_its_lease(state, self.tracked.get(path), now, since)
        return False

    def running(self, job_id: str) -> SlotState | None:
        """The slot of the pool process running ``job_id`` (its token: the lease this process wrote
        for it, when its own is not written), None when no pool process runs it."""
        with self._lock:
            for tracked in self.tracked.values():
                if tracked.state.active and tracked.state.job_id == job_id:
                    return dataclasses.replace(tracked.state, token=tracked.token)
        return None

    def stacks(self, pid: int) -> str | None:
        """The stacks of pool process ``pid``, dumped now; None when it has no slot here, or nothing
        came within half a second."""
        with self._lock:
            slots = list(self.slots.items())
        for path, slot in slots:
            if slot.read().pid == pid:
                return _dumper_of(self.runtime.dir, path).request(pid)
        return None

    def died(self, job_id: str) -> tuple[SlotState | None, Outcome | None]:
        """A pool process died running ``job_id``'s task: clear its slot. What this monitor knows of
        it: the task's state (from its slot, or from when this monitor saw it die before its lease
        was written), and why this monitor killed it (None: it did not, or the task was not
        recovered yet)."""
        state = self.forget(job_id)
        killed = self._killed.pop(job_id, None)
        unleased = self._unleased.pop(job_id, None)  # seen dead by this monitor, not recovered
        return state or unleased, killed

    def take_unleased(self, job_id: str) -> SlotState | None:
        """The state of ``job_id``'s task if this monitor saw its pool process die before its lease
        was written and nobody recovered it yet: the caller recovers it (then :meth:`recovered`)."""
        return self._unleased.pop(job_id, None)

    def recovered(self, job_id: str) -> None:
        """``job_id``'s task, whose pool process died, was recovered: Celery's news of the death,
        when it comes, is then handled (:meth:`died` says stalled)."""
        self._killed[job_id] = Outcome.STALLED

    def forget(self, job_id: str) -> SlotState | None:
        """A pool process died: clear the slot it left for ``job_id``; its state, if it had one."""
        with self._lock:
            # A pool process started since the last listing has a slot this monitor does not know.
            self._refresh(time.monotonic(), force=True)
            for path, slot in list(self.slots.items()):
                state = slot.read()
                if state.active and state.job_id == job_id:
                    slot.clear()
                    self.tracked.pop(path, None)
                    return state
        return None

    def _run(self) -> None:
        while not self._stop.wait(MONITOR_PERIOD):
            with contained("prefork monitor"):
                self.check(time.monotonic())

    def start(self) -> None:
        """Start the thread."""
        logging.getLogger("multiprocessing").addFilter(self._own_kills)
        self._thread = threading.Thread(target=self._run, name="zombieguard-prefork-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, after a last look (the leases it wrote for tasks that ended since are
        released)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        logging.getLogger("multiprocessing").removeFilter(self._own_kills)
        with contained("prefork monitor's last look"):
            self.check(time.monotonic())


def _dumper_of(directory: Path, slot: Path) -> StackDumper:
    """Where the pool process of the slot file ``slot`` dumps its stacks."""
    index = slot.name.removeprefix("slot-")
    return StackDumper(directory / f"stacks-{index}.txt")


def _lease_late(tracked: _Tracked, now: float) -> bool:
    """Whether a pool process's task is past its ``lease_delay`` with no lease written for it (and
    the main process has not tried to write it)."""
    state = tracked.state
    return (
        not tracked.token
        and not tracked.tried
        and tracked.stopped is None
        and state.lease_delay is not None
        and now >= max(state.started + state.lease_delay + LATE_LEASE, tracked.retry_at)
    )


def _woke_past_its_lease(state: SlotState, tracked: _Tracked | None, now: float, since: float) -> bool:
    """Whether a task's hard or progress limit passed while the worker was frozen (or starved: its
    monitor did not look for ``since`` seconds) longer than the task's lease lives. Its lease lapsed
    before the limit passed: a sweeper elsewhere takes that for a stall, and so does this worker
    (the task is run again, not failed), whether or not one did. A task stopped already is not."""
    if since <= state.lease_ttl or (tracked is not None and tracked.stopped is not None):
        return False
    return Deadlines.of_slot(state, soft=False).passed(now) is not None


class _OwnKills(logging.Filter):
    """Billiard's error about a pool process that "exited with 'signal 9 (SIGKILL)'" says, where
    zombieguard killed it, that it did."""

    def __init__(self) -> None:
        super().__init__()
        self.pids: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        """The record, reworded and made a warning where its process is one zombieguard killed."""
        pid = record.args[1] if isinstance(record.args, tuple) and len(record.args) == 3 else None
        if record.msg == internals.POOL_PROCESS_EXITED and pid in self.pids:
            self.pids.discard(pid)
            record.msg = f"{record.msg}: zombieguard killed it, as logged above; the pool starts another"
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _died_by_itself(state: SlotState, tracked: _Tracked | None) -> bool:
    """Whether a pool process that exited mid-task died on its own: not killed by this monitor (at
    a limit, or superseded) nor terminated by ``revoke(terminate=True)``, both of which Celery's
    report of the death settles."""
    return not (tracked is not None and tracked.killed) and not internals.revoked(state.job_id)


def _seconds(state: SlotState, kind: Outcome) -> float:
    """The limit a slot's task passed: its hard_timeout (timed out) or progress_timeout (hung)."""
    if kind is Outcome.TIMED_OUT:
        return (state.hard_deadline or state.started) - state.started
    return state.progress_timeout or 0.0


def _sender(pid: int, signum: int) -> Callable[[Found], None]:
    """A ``stop`` for :func:`stopping` that sends ``signum`` to ``pid``."""
    return lambda found: _signal(pid, signum)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)
