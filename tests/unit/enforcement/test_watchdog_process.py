"""The watchdog process beside a worker: when it looks at the worker's slots."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from zombieguard.enforcement.slot import JobSlot
from zombieguard.enforcement.stacks import StackDumper
from zombieguard.enforcement.watchdog_process import POLL_SECONDS, THAWED_AFTER, next_look, watch


def test_a_job_can_first_be_overdue_at_its_earliest_limit_plus_grace() -> None:
    slot = JobSlot()
    assert next_look(slot.read(), 0.5) == float("inf")  # no job
    slot.start("j1", 0, 100.0, hard_deadline=110.0, progress_timeout=None)
    assert next_look(slot.read(), 0.5) == 110.5
    slot.start("j2", 0, 100.0, hard_deadline=110.0, progress_timeout=3.0)
    assert next_look(slot.read(), 0.5) == 103.5  # its last progress is its start
    slot.progress(108.0)
    assert next_look(slot.read(), 0.5) == 110.5
    slot.clear()
    assert next_look(slot.read(), 0.5) == float("inf")


def test_the_watchdog_process_looks_a_few_times_a_second_not_every_poll(tmp_path: Path) -> None:
    # A job far from its limits: looks every `grace` seconds (a job started after a look cannot be
    # overdue sooner), not every POLL_SECONDS.
    slot = JobSlot()
    slot.start("j1", 0, time.monotonic(), hard_deadline=time.monotonic() + 60, progress_timeout=None)
    looks: list[float] = []

    def slots() -> list[JobSlot]:
        looks.append(time.monotonic())
        return [slot]

    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.2)"])
    watching = threading.Thread(
        target=watch,
        args=(worker.pid, slots, StackDumper(tmp_path / "stacks.txt"), None),
        kwargs={"adapter_spec": "celery", "grace": 0.4},
    )
    watching.start()
    worker.wait()
    watching.join(5)
    assert not watching.is_alive()  # it ends with the worker
    assert len(looks) >= 2, looks  # the worker lived 1.2 s at least
    gaps = [b - a for a, b in itertools.pairwise(looks)]
    # Every `grace` (0.4 s), however long the worker took to start and end; every POLL_SECONDS would
    # be every 0.05 s.
    assert all(gap >= 0.4 - 0.01 for gap in gaps), gaps


def test_after_a_freeze_of_its_own_the_watchdog_process_gives_the_worker_its_grace_again(
    tmp_path: Path,
) -> None:
    # Frozen with its worker (SIGSTOP of the whole group, a paused VM), it wakes to find a job past
    # its limit; the worker's own threads, which woke too, get `grace` to stop it before any kill.
    grace = 0.4
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    slot = JobSlot()
    now = time.monotonic()
    slot.start("j1", 7, now, hard_deadline=now + 1.0, progress_timeout=None)
    thawed: list[float] = []

    def slots() -> list[JobSlot]:
        if not thawed and time.monotonic() > now + 0.2:
            time.sleep(1.2 + grace + THAWED_AFTER)  # frozen: the job's limit passes meanwhile
            thawed.append(time.monotonic())
        return [slot]

    watching = threading.Thread(
        target=watch,
        args=(worker.pid, slots, StackDumper(tmp_path / "stacks.txt"), None),
        kwargs={"adapter_spec": "celery", "grace": grace},
    )
    watching.start()
    try:
        worker.wait(10)
        killed_at = time.monotonic()
    finally:
        worker.kill()
        watching.join(5)
    assert thawed
    assert killed_at - thawed[0] >= grace - POLL_SECONDS  # not at once
    assert killed_at - thawed[0] < grace + 0.5  # but once the worker had its grace


@pytest.mark.parametrize(("lease_ttl", "verdict"), [(1.0, "stalled"), (30.0, "timed_out")])
def test_a_job_past_its_limit_on_waking_from_a_freeze_longer_than_its_lease_is_a_stall(
    tmp_path: Path, lease_ttl: float, verdict: str
) -> None:
    # Frozen with its worker, its lease lapsed before the limit passed: a sweeper would recover it,
    # so the watchdog process, waking, must not fail it as timed out. Within its lease: timed out.
    grace = 0.4
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    slot = JobSlot()
    now = time.monotonic()
    slot.start(
        "j1", 7, now, hard_deadline=now + 1.0, progress_timeout=None, lease_ttl=lease_ttl, overdue_grace=0.2
    )
    frozen: list[bool] = []

    def slots() -> list[JobSlot]:
        if not frozen and time.monotonic() > now + 0.2:
            time.sleep(1.2 + grace + THAWED_AFTER)  # the job's limit passes meanwhile
            frozen.append(True)
        return [slot]

    reasons: list[str | None] = []
    watching = threading.Thread(
        target=lambda: reasons.append(
            watch(
                worker.pid,
                slots,
                StackDumper(tmp_path / "stacks.txt"),
                None,  # type: ignore[arg-type]  # no store: the worker, woken in time, is not killed
                adapter_spec="rq",
                grace=grace,
            )
        )
    )
    watching.start()
    try:
        worker.wait(10)
    finally:
        worker.kill()
        watching.join(5)
    assert reasons == [verdict]
