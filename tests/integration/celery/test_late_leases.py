"""A task whose own process does not write its lease in time (C code holding the GIL) has it written
by another process of its worker, which hands it over: the prefork worker's main process, the
watchdog process beside a threads or solo worker (real Redis, real slots; the prefork worker's runtime
reduced to what its monitor uses)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import redis

from zombieguard import Policy
from zombieguard.enforcement.slot import JobSlot, SlotState, execution_tag
from zombieguard.enforcement.stacks import StackDumper
from zombieguard.enforcement.watchdog_process import SlotWatcher
from zombieguard.integrations.celery.adapter import ADAPTER
from zombieguard.integrations.celery.monitor import SlotMonitor
from zombieguard.leases import JobSpec, LeaseStore, Outcome
from zombieguard.worker.attempt import Attempt
from zombieguard.worker.onbehalf import write_lease

POLICY = Policy(lease_ttl=5, lease_delay=0.05)
SPEC = JobSpec("j1", ADAPTER, "app.work", "default", '{"signature": {}}')


class StandInRuntime:
    """The parts of a prefork worker's ``CeleryRuntime`` its ``SlotMonitor`` uses."""

    def __init__(self, store: LeaseStore, directory: Path) -> None:
        self.store = store
        self.dir = directory
        self.name = "w1"
        self.heartbeat = SimpleNamespace(worker_ttl=15.0)
        self.redis_away = False

    def request_payload(self, job_id: str) -> str:
        return SPEC.payload

    def write_lease_for(self, state: SlotState, payload: str) -> int:
        if self.redis_away:
            self.redis_away = False
            raise redis.ConnectionError("Redis away for one try")
        return write_lease(self.store, state, payload, adapter=ADAPTER, worker=self.name, policy=POLICY)


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
    return SlotMonitor(StandInRuntime(store, tmp_path)), slot  # type: ignore[arg-type]


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
    attempt.tag = execution_tag(slot.nonce, generation)
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
    assert POLICY.lease_delay is not None
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
    attempt.tag = execution_tag(slot.nonce, generation)
    attempt.acquire_now()
    assert attempt.lost is None
    slot.clear()
    watcher.act_on(slot)
    record = store.record(SPEC.job_id)
    assert record is not None
    assert (record.state, record.token) == ("running", attempt.token)


def test_two_slots_of_one_process_never_name_two_executions_alike() -> None:
    # Threads: every slot of a worker has its pid, and each new slot starts at the same generation.
    first, second = JobSlot(), JobSlot()
    assert _announce(first, 0.0) == _announce(second, 0.0)
    assert first.read().tag != second.read().tag


def test_the_main_process_tries_again_a_second_later_when_redis_did_not_answer(
    store: LeaseStore, tmp_path: Path
) -> None:
    monitor, slot = _monitor(store, tmp_path)
    monitor.runtime.redis_away = True  # type: ignore[attr-defined]
    _announce(slot, 0.5)
    now = time.monotonic()
    monitor.check(now)
    monitor.check(now + 0.5)
    assert store.record(SPEC.job_id) is None
    monitor.check(now + 1.1)
    assert store.record(SPEC.job_id) is not None


def test_the_leases_written_for_tasks_that_ended_are_released_at_the_last_look(
    store: LeaseStore, tmp_path: Path
) -> None:
    # Prefork: the main process stopping; threads and solo: the watchdog process ending.
    monitor, slot = _monitor(store, tmp_path)
    _announce(slot, 0.5)
    monitor.check(time.monotonic())
    slot.clear()
    monitor.stop()
    assert store.record(SPEC.job_id) is None
    watcher, slot = _watcher(store, tmp_path), JobSlot()
    _announce(slot, 0.5)
    watcher.act_on(slot)
    assert store.record(SPEC.job_id) is not None
    slot.clear()
    watcher.settle()
    assert store.record(SPEC.job_id) is None
