"""Watchdog building blocks: limit bookkeeping, thread interrupts, stack capture."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.support.waiting import wait_until
from zombieguard import HardTimeLimitExceeded, Policy, SoftTimeLimitExceeded
from zombieguard.enforcement.interrupts import (
    HARD_SIGNAL,
    HUNG_SIGNAL,
    LOST_SIGNAL,
    SOFT_SIGNAL,
    interrupt_thread,
)
from zombieguard.enforcement.limits import Limit, LimitClock
from zombieguard.enforcement.stacks import STACK_DUMP_SIGNAL, StackDumper, thread_stack
from zombieguard.enforcement.watchdog import Watchdog, Watched, process_exited


def test_an_interrupt_reaches_a_thread_running_python_code() -> None:
    caught: list[BaseException] = []
    running = threading.Event()

    def loop() -> None:
        try:
            running.set()
            while True:
                sum(range(100))
        except HardTimeLimitExceeded as exc:
            caught.append(exc)

    thread = threading.Thread(target=loop)
    thread.start()
    running.wait(5)
    assert thread.ident is not None
    assert interrupt_thread(thread.ident, HardTimeLimitExceeded)
    thread.join(5)
    assert not thread.is_alive()
    assert len(caught) == 1


def test_the_stack_of_another_thread_names_the_function_it_is_in() -> None:
    stop = threading.Event()

    def waiting_for_the_socket() -> None:
        stop.wait(10)

    thread = threading.Thread(target=waiting_for_the_socket, name="job-thread")
    thread.start()
    try:
        assert thread.ident is not None
        deadline = time.monotonic() + 5
        stack = thread_stack(thread.ident) or ""
        while "waiting_for_the_socket" not in stack and time.monotonic() < deadline:
            stack = thread_stack(thread.ident) or ""
        assert "waiting_for_the_socket" in stack
        assert "'job-thread'" in stack
    finally:
        stop.set()
        thread.join()


def test_a_child_stuck_in_c_code_holding_the_gil_still_dumps_its_stack(tmp_path: Path) -> None:
    dump = tmp_path / "stacks.txt"
    child_code = textwrap.dedent(
        f"""
        import collections, itertools, sys
        from pathlib import Path
        from zombieguard.enforcement.stacks import StackDumper

        def stuck_in_c_code():
            collections.deque(itertools.repeat(None, 10**12), maxlen=0)

        StackDumper(Path({str(dump)!r})).install()
        print("ready", flush=True)
        stuck_in_c_code()
        """
    )
    child = subprocess.Popen([sys.executable, "-c", child_code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.2)  # let it enter the C loop: the point is that it is there when asked
        stack = StackDumper(dump).request(child.pid, timeout=3)
        assert stack is not None
        assert "stuck_in_c_code" in stack
    finally:
        child.kill()
        child.wait()


def _run_watched(policy: Policy, body_seconds: float) -> tuple[list[str], list[tuple[Limit, str | None]]]:
    outcome: list[str] = []
    stops: list[tuple[Limit, str | None]] = []
    started = threading.Event()
    ident: list[int] = []

    def job() -> None:
        ident.append(threading.get_ident())
        started.set()
        end = time.monotonic() + body_seconds
        try:
            while time.monotonic() < end:
                try:  # the whole loop inside: the interrupt lands wherever the thread is
                    while time.monotonic() < end:
                        sum(range(1000))
                except SoftTimeLimitExceeded:
                    outcome.append(f"soft at {time.monotonic() - t0:.2f}")
            outcome.append("finished")
        except HardTimeLimitExceeded:
            outcome.append(f"hard at {time.monotonic() - t0:.2f}")

    def stop(watched: Watched, limit: Limit, stack: str | None) -> None:
        stops.append((limit, stack))
        interrupt_thread(
            ident[0], HardTimeLimitExceeded if limit is not Limit.SOFT else SoftTimeLimitExceeded
        )

    dog = Watchdog()
    dog.start()
    t0 = time.monotonic()
    thread = threading.Thread(target=job)
    thread.start()
    started.wait(5)
    watched = dog.watch(
        Watched(LimitClock(policy, t0, lambda: t0), stop, capture=lambda: thread_stack(ident[0]))
    )
    thread.join(10)
    dog.unwatch(watched)
    dog.stop()
    return outcome, stops


def test_the_watchdog_raises_soft_then_stops_a_python_job_within_a_second_of_hard_timeout() -> None:
    outcome, stops = _run_watched(Policy(soft_timeout=0.3, hard_timeout=0.8), body_seconds=5)
    assert [limit for limit, _ in stops] == [Limit.SOFT, Limit.HARD]
    soft_at = float(outcome[0].split()[-1])
    hard_at = float(outcome[1].split()[-1])
    assert 0.3 <= soft_at < 0.6
    assert 0.8 <= hard_at < 1.8
    assert stops[1][1] is not None
    assert "in job" in stops[1][1]


def test_the_watchdog_leaves_a_job_within_its_limits_alone() -> None:
    outcome, stops = _run_watched(Policy(hard_timeout=3), body_seconds=0.3)
    assert outcome == ["finished"]
    assert stops == []


def test_the_watchdog_escalates_when_a_stopped_job_does_not_end() -> None:
    escalated = threading.Event()
    dog = Watchdog()
    t0 = time.monotonic()
    watched = Watched(
        LimitClock(Policy(hard_timeout=0.2), t0, lambda: t0),
        stop=lambda w, limit, stack: None,  # the job ignores it, like a thread stuck in C code
        capture=lambda: None,
        escalate=lambda w: escalated.set(),
        escalate_after=0.3,
    )
    dog.watch(watched)
    dog.start()
    try:
        assert escalated.wait(3)
        assert time.monotonic() - t0 >= 0.5
    finally:
        dog.stop()


@pytest.mark.parametrize("policy", [Policy(hard_timeout=1), Policy(progress_timeout=1)])
def test_a_stop_reports_the_limit_that_fired(policy: Policy) -> None:
    fired: list[Limit] = []
    t0 = time.monotonic() - 2
    dog = Watchdog()
    dog.watch(Watched(LimitClock(policy, t0, lambda: t0), lambda w, lim, s: fired.append(lim), lambda: None))
    dog.check()
    assert fired == [Limit.HARD if policy.hard_timeout else Limit.PROGRESS]


def test_a_child_counts_as_exited_once_it_ends_and_is_left_for_its_owner_to_reap() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert not process_exited(child.pid)
        assert not process_exited(os.getpid())  # not a child of this process: alive
        child.kill()
        wait_until(lambda: process_exited(child.pid), 5, what="the killed child counted as exited")
        assert child.poll() == -9  # its exit status was still there for its owner
        assert process_exited(child.pid)  # reaped: gone from the system
    finally:
        child.kill()
        child.wait()


def test_no_signal_of_zombieguard_s_is_one_that_ends_a_celery_pool_process() -> None:
    # billiard makes these end its pool processes (billiard < 4.2.1: SIGUSR2 too), over any handler
    # installed before, worker_process_init's included.
    common = pytest.importorskip("billiard.common")
    ours = {STACK_DUMP_SIGNAL, SOFT_SIGNAL, HARD_SIGNAL, HUNG_SIGNAL, LOST_SIGNAL}
    names = common.TERMSIGS_DEFAULT | common.TERMSIGS_FULL
    theirs = {getattr(signal, name) for name in names if hasattr(signal, name)}
    assert not ours & theirs
    assert len(ours) == 5
