"""A task whose own process does not write its lease in time (C code holding the GIL) has it written
by another process of its worker, which hands it over: the prefork worker's main process, the
watchdog process beside a threads or solo worker (real Redis, real slots; the prefork worker's guard
reduced to what its monitor uses)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

from zombieguard import Policy
from zombieguard.attempt import Attempt
from zombieguard.integrations.celery import ADAPTER, SlotMonitor
from zombieguard.lease import JobSpec, LeaseStore, Outcome
from zombieguard.sidecar import SlotWatcher, lease_from_slot
from zombieguard.slot import JobSlot, SlotState, execution_tag
from zombieguard.watchdog import StackDumper

POLICY = Policy(lease_ttl=5, lease_delay=0.05)
SPEC = JobSpec("j1", ADAPTER, "app.work", "default", '{"signature": {}}')


class StandInGuard:
    """The parts of a prefork worker's ``WorkerGuard`` its ``SlotMonitor`` uses."""

    def __init__(self, store: LeaseStore, directory: Path) -> None:
        self.store = store
        self.dir = directory
        self.name = "w1"
        self.heartbeat = SimpleNamespace(worker_ttl=15.0)

    def request_payload(self, job_id: str) -> str:
        return SPEC.payload

    def lease_from_slot(self, state: SlotState, payload: str) -> tuple[JobSpec, int] | None:
        token = lease_from_slot(self.store, state, payload, adapter=ADAPTER, worker=self.name, policy=POLICY)
        return (SPEC, token) if token else None


def _announce(slot: JobSlot, ago: float) -> int:
    """A pool process's pending task started ``ago`` seconds ago (this process stands in for it)."""
    return slot.start(
        SPEC.job_id,
        0,
        time.monotonic() - ago,
        hard_deadline=None,
        progress_timeout=None,
        pid=os.getpid(),
        lease_ttl=POLICY.lease_ttl,
        task=SPEC.task,
        queue=SPEC.queue,
        lease_delay=POLICY.lease_delay,
        max_stalls=1,
        dead_letter=False,
        overdue_grace=2.0,
    )


def _monitor(store: LeaseStore, tmp_path: Path) -> tuple[SlotMonitor, JobSlot]:
    slot = JobSlot(tmp_path / "slot-0")
    return SlotMonitor(StandInGuard(store, tmp_path)), slot  # type: ignore[arg-type]


def test_the_main_process_leaves_a_task_within_its_lease_delay_to_its_own_process(
    store: LeaseStore, tmp_path: Path
) -> None:
    monitor, slot = _monitor(store, tmp_path)
    _announce(slot, 0.0)
    monitor.check(time.monotonic())
    assert store.record(SPEC.job_id) is None


def test_the_main_process_writes_a_late_lease_and_releases_it_when_the_task_ends_without_adopting_it(
    store: LeaseStore, tmp_path: Path
) -> None:
    monitor, slot = _monitor(store, tmp_path)
    _announce(slot, 0.5)
    monitor.check(time.monotonic())
    record = store.record(SPEC.job_id)
    assert record is not None
    assert (record.state, record.worker) == ("running", "w1")
    slot.clear()  # the task returned before its process looked at its lease
    monitor.check(time.monotonic())
    assert store.record(SPEC.job_id) is None  # a first attempt that completed leaves nothing


def test_a_late_lease_the_task_adopted_is_left_for_the_task_to_release(
    store: LeaseStore, tmp_path: Path
) -> None:
    monitor, slot = _monitor(store, tmp_path)
    generation = _announce(slot, 0.5)
    monitor.check(time.monotonic())
    attempt = Attempt(store, SPEC, "w1", POLICY, None)
    attempt.tag = execution_tag(os.getpid(), generation)
    attempt.acquire_now()  # the task's own process, running again
    record = store.record(SPEC.job_id)
    assert record is not None
    assert (attempt.lost, attempt.token) == (None, record.token)
    slot.clear()
    monitor.check(time.monotonic())
    record = store.record(SPEC.job_id)
    assert record is not None
    assert record.state == "running"  # its end is the task's to record
    attempt.release(Outcome.FAILED, "its own end")
    record = store.record(SPEC.job_id)
    assert record is not None
    assert (record.state, record.reason) == ("done", "its own end")


def _watcher(store: LeaseStore, tmp_path: Path) -> SlotWatcher:
    """The watchdog process's part that looks at one slot (this process stands in for the worker)."""
    return SlotWatcher(
        os.getpid(),
        StackDumper(tmp_path / "stacks.txt"),
        store,
        adapter_spec=ADAPTER,
        grace=0.3,
        worker="w1",
        payload_spec="",
    )


def test_the_watchdog_process_writes_a_late_lease_grace_past_lease_delay_and_releases_it_unless_adopted(
    store: LeaseStore, tmp_path: Path
) -> None:
    watcher, slot = _watcher(store, tmp_path), JobSlot()
    _announce(slot, 0.0)
    reason, due = watcher.act_on(slot)
    assert reason is None
    assert due == slot.read().started + POLICY.lease_delay + 0.3  # it looks again then
    assert store.record(SPEC.job_id) is None
    _announce(slot, 0.5)
    watcher.act_on(slot)
    record = store.record(SPEC.job_id)
    assert record is not None
    assert (record.state, record.worker) == ("running", "w1")
    # The task's policy, as its slot gives it: what a sweeper decides a recovery by.
    assert (record.max_stalls, record.dead_letter, record.overdue_grace) == (1, False, 2.0)
    slot.clear()  # the task returned before its worker looked at its lease
    watcher.act_on(slot)
    assert store.record(SPEC.job_id) is None
    # Adopted: the worker records the end.
    generation = _announce(slot, 0.5)
    watcher.act_on(slot)
    attempt = Attempt(store, SPEC, "w1", POLICY, None)
    attempt.tag = execution_tag(os.getpid(), generation)
    attempt.acquire_now()
    assert attempt.lost is None
    slot.clear()
    watcher.act_on(slot)
    record = store.record(SPEC.job_id)
    assert record is not None
    assert (record.state, record.token) == ("running", attempt.token)
