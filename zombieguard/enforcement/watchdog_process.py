"""The watchdog process beside a worker whose jobs run in its own main thread.

RQ's SimpleWorker and Celery's solo pool run the job in the worker's main thread: when it is stuck in C
code holding the GIL, no thread of that process runs, not the heartbeat and not the in-process watchdog.
This small process reads the worker's :class:`~zombieguard.enforcement.slot.JobSlot`; when a job passes
its hard limit (or its progress limit) by ``grace`` seconds and is still there, it has the worker dump
its stack (faulthandler), kills the worker with SIGKILL, ends the processes the job started (SIGTERM,
then SIGKILL past the job's ``kill_children_grace``) and gives the lease up with the reason and the
stack. A job whose lease was still to be written (Celery's ``lease_delay``) has it written from its slot
first (``--slot-payload module:function`` reads what the slot keeps). Grace is counted from when both
processes last ran: after a freeze of the whole worker (SIGSTOP, a paused VM), the worker's own threads
get their grace to stop a job before this process kills anything; and a job it finds past a limit on
waking from a freeze longer than the job's lease is a stall, as a sweeper judges it (its lease lapsed
before the limit passed): its lease is given up as stalled, and recovered, not failed.

When the worker is gone (killed here, or by anything else), the jobs still in its slots are given up
as stalls and, when it can build the integration's adapter (``--adapter module:factory``, given the
Redis client and ``--adapter-arg``), it runs one sweep so that each is failed (the stuck one) or
recovered at once, and asks the adapter to hand back what the worker's broker still holds for it
(:meth:`~zombieguard.adapter.JobAdapter.worker_gone`); with no adapter it leaves that to the sweepers
of the integration's other workers (and of the restarted one). The worker's supervisor restarts the
worker, as after any crash. This process exits once the worker is gone.

Run by the integrations:
``python -m zombieguard.enforcement.watchdog_process --pid ... --slot ... --adapter mod:factory``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from zombieguard.adapter import JobAdapter
from zombieguard.enforcement.children import Ending, JobProcesses
from zombieguard.enforcement.deaths import oom_kills
from zombieguard.enforcement.limits import Deadlines
from zombieguard.enforcement.slot import JobSlot, SlotState
from zombieguard.enforcement.stacks import StackDumper
from zombieguard.enforcement.watchdog import FROZEN_AFTER, process_exited
from zombieguard.errors import LeaseLost
from zombieguard.events import JobProcessesEnded, Subject, emit
from zombieguard.leases import JobSpec, LeaseStore, Outcome
from zombieguard.leases.connection import RedisTarget
from zombieguard.ops.stats import EventCounter
from zombieguard.policy import Settings
from zombieguard.recovery.sweeper import Sweeper
from zombieguard.worker.onbehalf import give_up, release_written, slot_policy, write_lease

log = logging.getLogger("zombieguard.enforcement.watchdog_process")

POLL_SECONDS = 0.05
"""The shortest wait between two looks at the slots."""
WATCHDOG_VARIABLE = "_ZOMBIEGUARD_WATCHDOG"
"""The environment variable that gives this process the leases' Redis and the adapter's argument
(a JSON object: ``redis``, a :class:`~zombieguard.leases.connection.RedisTarget` as JSON, and
``adapter_arg``)."""
THAWED_AFTER = 1.0
"""A look this much later than planned means this process did not run meanwhile (frozen with its
worker, or the machine paused): the worker gets its grace again from then."""


def overdue(state: SlotState, now: float, grace: float) -> Outcome | None:
    """Timed out or hung when the slot's job is past its hard or progress limit by ``grace``; else
    None."""
    limit = Deadlines.of_slot(state, soft=False).passed(now, grace) if state.active else None
    return None if limit is None else limit.outcome


def next_look(state: SlotState, grace: float) -> float:
    """The earliest time at which the slot's job can be :func:`overdue` (monotonic; infinite when no
    job or no limit). Its last progress only moves that time later."""
    return Deadlines.of_slot(state, soft=False).next(grace) if state.active else float("inf")


def _load(spec: str) -> Any:
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _load_adapter(spec: str, store: LeaseStore, arg: str) -> JobAdapter:
    adapter: JobAdapter = _load(spec)(store.client, *([arg] if arg else []))
    return adapter


class SlotFiles:
    """The slots to watch: one file, or every ``slot*`` file of a directory (one per pool thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._slots: dict[Path, JobSlot] = {}

    def __call__(self) -> list[JobSlot]:
        """The slots (the directory listed again at each call: a thread's slot appears at its
        first job)."""
        paths = sorted(self.path.glob("slot*")) if self.path.is_dir() else [self.path]
        for path in paths:
            if path not in self._slots:
                self._slots[path] = JobSlot(path)
        return list(self._slots.values())


def watch(
    pid: int,
    slots: Callable[[], Sequence[JobSlot]],
    dumper: StackDumper,
    store: LeaseStore,
    *,
    adapter_spec: str,
    grace: float,
    worker: str = "",
    payload_spec: str = "",
    integration: str = "",
    adapter_arg: str = "",
    workdir: Path | None = None,
    owner: str = "",
) -> Outcome | None:
    """Watch ``pid`` until it exits (None) or has to be killed (the reason), then act for the jobs
    it left (see the module's docstring). ``worker``: the worker's name, for a lease this process has
    to write for it; ``payload_spec``: the function (``module:function``) that turns what a slot
    keeps into that lease's payload (none: no payload); ``integration``: the integration's name (by
    default ``adapter_spec``, when that names no factory); ``workdir``: the worker's working
    directory (what the adapter reads when the worker is gone); ``owner``: the worker's value of
    :data:`~zombieguard.enforcement.children.OWNER_VARIABLE` (a process's own changes to its
    environment do not show from outside).

    It looks again when the first job it saw can be overdue, and at least every ``grace`` seconds: a
    job that starts after a look cannot be overdue sooner than ``grace`` after it. So it wakes a few
    times a second, not once per job, and is never later than one :data:`POLL_SECONDS`.

    A job whose lease its own process has not written ``grace`` past its ``lease_delay`` (no thread
    of it can run: C code holding the GIL) has it written from its slot, under the job's execution
    tag: the worker adopts it when it runs again, and if the job ends first this process releases it
    as completed (unless the worker adopted it, then the worker records the job's end).
    """
    watcher = SlotWatcher(
        pid,
        dumper,
        store,
        adapter_spec=adapter_spec,
        grace=grace,
        worker=worker or f"pid {pid}",
        payload_spec=payload_spec,
        integration=integration,
        adapter_arg=adapter_arg,
        owner=owner,
    )
    reason: Outcome | None = None
    try:
        while not process_exited(pid):
            look_at = time.monotonic() + grace
            for slot in slots():
                reason, due = watcher.act_on(slot)
                if reason is not None:
                    break
                look_at = min(look_at, due)
            if reason is not None:
                break
            time.sleep(max(POLL_SECONDS, look_at - time.monotonic()))
        watcher.worker_gone(slots(), workdir)
        return reason
    finally:
        watcher.settle()


@dataclass(frozen=True)
class _Written:
    """A lease this process wrote for a job whose own process could not."""

    generation: int
    token: int
    spec: JobSpec


class SlotWatcher:
    """What :func:`watch` does at each look at one of the worker's slots."""

    def __init__(
        self,
        pid: int,
        dumper: StackDumper,
        store: LeaseStore,
        *,
        adapter_spec: str,
        grace: float,
        worker: str,
        payload_spec: str,
        integration: str = "",
        adapter_arg: str = "",
        owner: str = "",
    ) -> None:
        self.pid = pid
        self.owner = owner
        self.dumper = dumper
        self.store = store
        self.adapter_spec = adapter_spec
        self.adapter_arg = adapter_arg
        self.integration = integration or (adapter_spec if ":" not in adapter_spec else "")
        self.grace = grace
        self.worker = worker
        self.payload_spec = payload_spec
        self.written: dict[JobSlot, _Written] = {}
        self.ending: Ending | None = None
        """The processes the job it killed the worker for started, being ended."""
        self.killed: JobSlot | None = None
        """The slot whose job this process killed the worker for (its lease given up already)."""
        self.stalled: dict[JobSlot, int] = {}
        """Per slot, the generation of the job found past a limit on waking from a freeze longer
        than its lease: a stall, not a timeout."""
        self._loaded: JobAdapter | None = None
        self._load_failed = False
        self._looked = self._awake_since = time.monotonic()
        self._frozen_for = 0.0
        """How long this process was frozen, last it was (0: never)."""
        self._unanswered = False
        """Redis did not answer the last write or release of a lease (logged once until it does)."""
        self._oom_at_start = oom_kills()

    def act_on(self, slot: JobSlot) -> tuple[Outcome | None, float]:
        """Kill the worker when the slot's job is overdue (and the worker has had ``grace`` since
        this process last ran again after a freeze): the reason, else None and when to look again.
        Writes and releases the leases the worker cannot write (see :func:`watch`)."""
        try:
            return self._act_on(slot)
        finally:
            self._looked = time.monotonic()  # a slow look (Redis, an import) is no freeze

    def _act_on(self, slot: JobSlot) -> tuple[Outcome | None, float]:
        state = slot.read()
        now = time.monotonic()
        if now - self._looked > self.grace + THAWED_AFTER:
            # This process did not run meanwhile: frozen, likely with its worker.
            self._awake_since, self._frozen_for = now, now - self._looked
        reason = overdue(state, now, self.grace)
        if reason is not None and self.stalled.get(slot) != state.generation and self._stall(state):
            self.stalled[slot] = state.generation
            if state.token:  # a lease still to be written: the worker writes it, and recovers the job
                # The worker's threads, waking, find it so too.
                self._give_up(slot, state, Outcome.STALLED, how="its worker was frozen past its lease")
        if reason is not None and now < self._awake_since + self.grace:
            return None, self._awake_since + self.grace  # just thawed: the worker's own threads act first
        if reason is not None and slot.read().generation == state.generation:
            if self.stalled.get(slot) == state.generation:
                reason = Outcome.STALLED
            self._kill(slot, state, reason)
            return reason, time.monotonic()
        due = next_look(state, self.grace)
        written = self.written.get(slot)
        if written is not None and written.generation != state.generation:
            self._release(slot, written)
            written = None
        if written is None and state.active and not state.token and state.lease_delay is not None:
            late = state.started + state.lease_delay + self.grace
            if now < late:
                due = min(due, late)
            else:
                self._write(slot, state)
        return None, due

    def _stall(self, state: SlotState) -> bool:
        """Whether the job became overdue, as a sweeper counts it (``overdue_grace``), while this
        process was frozen for longer than the job's lease, and its lease had lapsed by then: a
        stall, as a sweeper judges it."""
        if self._frozen_for <= max(state.lease_ttl, FROZEN_AFTER):
            return False
        froze = self._awake_since - self._frozen_for
        overdue_at = next_look(state, state.overdue_grace)
        return froze < overdue_at <= self._awake_since and state.confirmed_until < overdue_at

    def _payload(self, slot: JobSlot, state: SlotState) -> str:
        payload: str = _load(self.payload_spec)(state, slot.payload()) if self.payload_spec else ""
        return payload

    def _adapter(self) -> JobAdapter | None:
        """The integration's adapter, when ``--adapter`` names a factory (loaded once, when first
        needed: it may import the worker's application)."""
        if self._loaded is None and not self._load_failed and ":" in self.adapter_spec:
            try:
                self._loaded = _load_adapter(self.adapter_spec, self.store, self.adapter_arg)
            except Exception as exc:  # the sweepers of the integration's other workers act instead
                self._load_failed = True
                log.warning(
                    "the integration's adapter could not be loaded (%r); its jobs are left to "
                    "the sweepers of its other workers",
                    exc,
                )
        return self._loaded

    def _adapter_name(self) -> str:
        if self.integration:
            return self.integration
        adapter = self._adapter()
        return self.adapter_spec if adapter is None else adapter.name

    def _lease_for(self, slot: JobSlot, state: SlotState) -> int:
        """Write the lease of the slot's job on its behalf (see :mod:`zombieguard.worker.onbehalf`): its
        token, 0 when another attempt holds the job (or the job left the slot while its payload was read)."""
        payload = self._payload(slot, state)
        if slot.read().generation != state.generation:
            return 0
        return write_lease(
            self.store,
            state,
            payload,
            adapter=self._adapter_name(),
            worker=self.worker,
            policy=slot_policy(state),
        )

    def _write(self, slot: JobSlot, state: SlotState) -> None:
        try:
            token = self._lease_for(slot, state)
        except Exception as exc:  # Redis away, a payload that does not load: the next look tries again
            self._failed(f"job {state.job_id}: its lease not written for its worker", exc)
            return
        self._unanswered = False
        spec = JobSpec(state.job_id, self._adapter_name(), state.task, state.queue)
        self.written[slot] = _Written(state.generation, token, spec)
        if token:
            log.debug(
                "job %s: its lease written for worker %d, which had not written it %.2f s in (C code "
                "holding the GIL, or a busy machine)",
                state.job_id,
                self.pid,
                time.monotonic() - state.started,
            )

    def _release(self, slot: JobSlot, written: _Written) -> None:
        if written.token:
            try:
                release_written(
                    self.store,
                    written.spec,
                    written.token,
                    "ended before its worker adopted the lease its watchdog process wrote for it",
                )
            except redis.RedisError as exc:
                self._failed(f"job {written.spec.job_id}: its lease not released", exc)
                return  # the next look tries again
        self._unanswered = False
        del self.written[slot]

    def _failed(self, what: str, exc: Exception) -> None:
        """Log a failed write or release once, until one succeeds (it is tried at every look)."""
        if not self._unanswered:
            log.warning("%s (%s); trying again at every look", what, exc)
        self._unanswered = True

    def settle(self) -> None:
        """Before this process ends (its worker gone, or stopped with it): release the leases it
        wrote for jobs that have ended since. Those of jobs still in their slots (their worker died
        in them) are left to expire and be recovered."""
        for slot, written in list(self.written.items()):
            if slot.read().generation != written.generation:
                self._release(slot, written)
        if self.ending is not None:
            self.ending.wait(10)

    def _kill(self, slot: JobSlot, state: SlotState, reason: Outcome) -> None:
        pid = self.pid
        stack = self.dumper.request(pid)
        grace = state.children_grace
        where = JobProcesses(pid, state.started, None, frozenset({os.getpid()}), self.owner, state.job_id)
        found = where.find() if grace else None
        os.kill(pid, signal.SIGKILL)
        log.error("worker %d stuck %s in job %s: killed", pid, reason, state.job_id)
        if found and grace:
            log.warning(
                "job %s: ending the processes it started: %s", state.job_id, "; ".join(found.described)
            )
            self.ending = found.end(grace)
            name = self._adapter_name()
            subject = Subject(state.job_id, state.task, state.queue, state.attempt, self.worker, name)
            why = f"ended with the job (SIGKILL {grace:g} s past SIGTERM)"
            emit(name, subject.event(JobProcessesEnded, reason=why, processes=found.described))
            try:
                self.store.note_ended_processes(
                    state.job_id, state.token or None, self.worker, found.described
                )
            except redis.RedisError as exc:
                log.warning("job %s: the processes ended not noted on its lease (%s)", state.job_id, exc)
        self.killed = slot
        # The lease still to be written (Celery): the slot says all it needs. The worker is dead now,
        # so the slot stays as it was; one this process wrote is taken over under the job's tag.
        self._give_up(slot, state, reason, stack)

    def _give_up(
        self, slot: JobSlot, state: SlotState, reason: Outcome, stack: str | None = None, how: str = ""
    ) -> None:
        """Give the lease of the slot's job up for the sweeper to act on ``reason`` (its worker is
        dead). Nothing when another attempt holds the job (or its lease cannot be written now)."""
        try:
            token = state.token or self._lease_for(slot, state)
            if not token:
                return
            # Celery's message is kept in the slot only while its lease is to be written: without
            # it, a lease that vanished is not written again, and the broker hands the message back.
            payload = self._payload(slot, state)
            give_up(
                self.store,
                state,
                token,
                reason,
                adapter=self._adapter_name(),
                worker=self.worker,
                payload=None if self.payload_spec and not payload else payload,
                stack=stack,
                how=how,
            )
        except LeaseLost as exc:
            log.info("job %s: nothing to give up, another attempt holds it (%s)", state.job_id, exc)
        except Exception as exc:  # Redis away, a payload that does not load: its lease expires instead
            log.warning("job %s: its lease not given up (%r); it expires instead", state.job_id, exc)

    def worker_gone(self, slots: Sequence[JobSlot], workdir: Path | None) -> None:
        """The worker is gone: the jobs it left in its slots are stalls (given up now, not when their
        leases expire), one sweep acts on them, and the adapter hands back what the worker's broker
        still holds for it."""
        oom = oom_kills()
        how = (
            "its worker process was killed by the OOM killer (its cgroup's oom_kill count rose)"
            if oom is not None and self._oom_at_start is not None and oom > self._oom_at_start
            else "its worker process died"
        )
        for slot in slots:
            state = slot.read()
            # A job with no lease and none to write (it ran unguarded, Redis away) has none to give up.
            unleased = not state.token and state.lease_delay is None
            if state.active and slot is not self.killed and not unleased:
                log.warning("worker %d is gone, job %s with it: recovering it", self.pid, state.job_id)
                self._give_up(slot, state, Outcome.STALLED, how=how)
        adapter = self._adapter()
        if adapter is None:
            return
        name = self._adapter_name()
        try:
            Sweeper(
                self.store, {name: adapter}, name=f"watchdog-process-of-{self.pid}", sender=name
            ).sweep_once()
        except Exception as exc:  # the sweepers of the integration's other workers act instead
            log.warning("sweep after worker %d was gone failed (%r)", self.pid, exc)
        if workdir is not None:
            try:
                adapter.worker_gone(workdir)
            except Exception as exc:  # the broker's own timeout returns them instead
                log.warning("what worker %d held was not handed back (%r)", self.pid, exc)


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m zombieguard.enforcement.watchdog_process")
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--slot", type=Path, required=True)
    parser.add_argument("--dump", type=Path, required=True)
    parser.add_argument("--key-prefix", required=True)
    parser.add_argument(
        "--adapter",
        required=True,
        help="module:factory taking a Redis client, or the integration's name (abandon only)",
    )
    parser.add_argument(
        "--integration", default="", help="the integration's name (when --adapter is a factory)"
    )
    parser.add_argument("--workdir", type=Path, help="the worker's working directory")
    parser.add_argument("--grace", type=float, default=0.5)
    parser.add_argument("--worker", default="", help="the worker's name")
    parser.add_argument("--owner", default="", help="the worker's mark on what its jobs start")
    parser.add_argument(
        "--slot-payload",
        default="",
        help="module:function turning what a slot keeps into a lease's payload (default: none)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s zombieguard-watchdog-process %(message)s")
    # The worker's Ctrl+C reaches its whole process group; this process ends when the worker does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit)  # the worker stopping it: the last look of watch() first
    # The leases' Redis and the adapter's argument come through the environment: they may carry a
    # password, and any local user can read a command line.
    given = json.loads(os.environ.pop(WATCHDOG_VARIABLE, "{}"))
    if "redis" not in given:
        parser.error(f"{WATCHDOG_VARIABLE} must name the leases' Redis")
    target = RedisTarget.from_json(given["redis"])
    store = LeaseStore.from_target(target, Settings(key_prefix=args.key_prefix))
    EventCounter(store)  # what its sweep detects counts like any worker's
    watch(
        args.pid,
        SlotFiles(args.slot),
        StackDumper(args.dump),
        store,
        adapter_spec=args.adapter,
        grace=args.grace,
        worker=args.worker,
        payload_spec=args.slot_payload,
        integration=args.integration,
        adapter_arg=given.get("adapter_arg", ""),
        workdir=args.workdir,
        owner=args.owner,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
