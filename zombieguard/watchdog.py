"""Enforcement inside a worker: deadline bookkeeping, interrupting a thread, capturing stacks.

The integrations assemble these per execution model (docs/guarantees.md says what holds where):

- :func:`interrupt_thread` raises an exception in another thread. Like a signal handler, it runs only
  between bytecodes: it cannot cancel a blocking system call in that thread, nor C code that holds
  the GIL. Then only killing the process stops the job, from another process.
- :func:`thread_stack` captures where a thread of this process is. :class:`StackDumper` makes a
  child process dump all its threads' stacks on a signal,
  through :mod:`faulthandler`, whose handler is C: it works even while the child is stuck in C code.
- :class:`Watchdog` runs the clocks of the attempts in one process and calls the integration's
  stop function when a limit passes, escalating when the job does not end.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from zombieguard.containment import contained
from zombieguard.limits import Limit, LimitClock

# Signals that raise zombieguard's interrupts in the process running a job (an RQ horse or simple
# worker, a Celery prefork pool process or solo worker), and the one it dumps its stacks on.
# Real-time signals: RQ, Celery and billiard use none of them. Not SIGUSR2: billiard < 4.2.1 makes it
# a signal that ends a pool process (installed after worker_process_init, over faulthandler's).
STACK_DUMP_SIGNAL = signal.SIGRTMIN + 5
SOFT_SIGNAL = signal.SIGRTMIN + 1
HARD_SIGNAL = signal.SIGRTMIN + 2
HUNG_SIGNAL = signal.SIGRTMIN + 3
LOST_SIGNAL = signal.SIGRTMIN + 4


def process_exited(pid: int) -> bool:
    """Whether process ``pid`` has exited (one its parent has not reaped yet counts as exited)."""
    try:
        # A child of this process (a prefork pool process), without reaping it: one system call.
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except OSError:
        pass  # not a child of this process (or reaped already, or no such pid): ask the system
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no /proc here, or it went just now: the next look says
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


FROZEN_AFTER = 2.0
"""A watchdog that did not look for longer than this (and than the attempt's ``lease_ttl``) was
frozen: it looks at least once a second while it runs."""


def interrupt_thread(ident: int, exc_type: type[BaseException]) -> bool:
    """Raise ``exc_type`` in the thread ``ident`` at its next bytecode; False if no such thread.

    Cannot interrupt a blocking system call or C code in that thread (see the module docstring).
    """
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))
    if done > 1:  # more than one thread state touched: undo, as the C API documentation asks
        clear_interrupt(ident)
        return False
    return bool(done)


def clear_interrupt(ident: int) -> None:
    """Withdraw an exception :func:`interrupt_thread` set for ``ident`` that was not raised yet."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)


def thread_stack(ident: int) -> str | None:
    """The current stack of thread ``ident`` of this process, formatted; None if it is gone."""
    frame = sys._current_frames().get(ident)
    if frame is None:
        return None
    name = next((t.name for t in threading.enumerate() if t.ident == ident), str(ident))
    return f"Thread {name!r} (most recent call last):\n{''.join(traceback.format_stack(frame))}"


class StackDumper:
    """Lets another process ask this one for the stacks of all its threads.

    The child calls :meth:`install` once; the parent calls :meth:`request` with the child's pid.
    faulthandler writes from a C signal handler, so the dump arrives even when the child is stuck in
    C code holding the GIL, where no Python code of the child can run.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def install(self) -> None:
        """In the process to be dumped: register the signal handler (replaces an earlier one)."""
        self._file = self.path.open("a")
        faulthandler.register(STACK_DUMP_SIGNAL, file=self._file, all_threads=True, chain=False)

    def request(self, pid: int, timeout: float = 0.5) -> str | None:
        """In another process: signal ``pid`` and return what it dumped, None if nothing came."""
        try:
            offset = self.path.stat().st_size
        except FileNotFoundError:
            return None
        try:
            os.kill(pid, STACK_DUMP_SIGNAL)
        except ProcessLookupError:
            return None
        deadline = time.monotonic() + timeout
        previous = -1
        while time.monotonic() < deadline:
            size = self.path.stat().st_size
            # Done when something arrived and the size held still for one poll.
            if size > offset and size == previous:
                break
            previous = size
            time.sleep(0.02)
        with self.path.open() as f:
            f.seek(offset)
            text = f.read()
        return text or None

    def close(self) -> None:
        """Unregister and close (in the dumped process)."""
        if self._file is not None:
            faulthandler.unregister(STACK_DUMP_SIGNAL)
            self._file.close()
            self._file = None


StopFunction = Callable[["Watched", Limit, "str | None"], None]


@dataclass(eq=False)
class Watched:
    """One attempt under a watchdog."""

    clock: LimitClock
    stop: StopFunction
    """Called once when the hard or progress limit passes (and for soft), with the captured stack."""
    capture: Callable[[], str | None]
    """Captures the job's stack before it is stopped."""
    escalate: Callable[[Watched], None] | None = None
    """Called when the job is still watched ``escalate_after`` seconds after ``stop``."""
    escalate_after: float = 1.0
    stopped_at: float | None = None
    stopped_by: Limit | None = None
    escalated: bool = False
    label: str = field(default="")
    stalled: Callable[[Watched], None] | None = None
    """Called instead of ``stop`` when the hard or progress limit is found passed on a look that
    came longer than the attempt's ``lease_ttl`` after the one before (the process was frozen: a
    paused VM): its lease lapsed before the limit passed, a stall, as a sweeper judges it. None:
    ``stop``, as for any limit."""


class Watchdog:
    """A thread that enforces the limits of the attempts of one process."""

    def __init__(self, name: str = "zombieguard-watchdog") -> None:
        self._watched: list[Watched] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._name = name
        self._next_look = 0.0
        self._looked = time.monotonic()

    def watch(self, watched: Watched) -> Watched:
        """Start enforcing ``watched``'s limits.

        The thread is woken only when this attempt's first limit comes before its next planned look:
        waking a thread for every job costs the worker more than the job's own bookkeeping.
        """
        first = watched.clock.due(time.monotonic())[1]
        with self._lock:
            self._watched.append(watched)
            wake = first < self._next_look
        if wake:
            self._wake.set()
        return watched

    def unwatch(self, watched: Watched) -> None:
        """Stop enforcing (the attempt ended)."""
        with self._lock:
            if watched in self._watched:
                self._watched.remove(watched)

    def check(self, now: float | None = None) -> float:
        """Act on every limit that passed; return when to look next (monotonic)."""
        now = time.monotonic() if now is None else now
        next_at = now + 1.0
        with self._lock:
            watched = list(self._watched)
            since, self._looked = now - self._looked, now
        for entry in watched:
            with contained(f"watchdog {entry.label}"):
                next_at = min(next_at, self._check_one(entry, now, since))
        return next_at

    def _check_one(self, entry: Watched, now: float, since: float) -> float:
        if entry.stopped_at is not None:
            return self._escalate_if_due(entry, now)
        limit, at = entry.clock.due(now)
        if limit is None:
            return at
        if limit is Limit.SOFT:
            entry.clock.soft_fired = True
            entry.stop(entry, limit, None)
            return now
        entry.stopped_at = now
        if entry.stalled is not None and since > max(entry.clock.policy.lease_ttl, FROZEN_AFTER):
            entry.escalated = True
            entry.stalled(entry)
            return now + 1.0
        stack = entry.capture() if entry.clock.policy.capture_stack else None
        entry.stopped_by = limit
        entry.stop(entry, limit, stack)
        return now + min(entry.escalate_after, 1.0)

    @staticmethod
    def _escalate_if_due(entry: Watched, now: float) -> float:
        """A stopped attempt still watched: escalate once ``escalate_after`` passed."""
        escalate_at = entry.stopped_at + entry.escalate_after if entry.stopped_at is not None else now
        if entry.escalate is None or entry.escalated:
            return now + 1.0
        if now < escalate_at:
            return escalate_at
        entry.escalated = True
        entry.escalate(entry)
        return now + 1.0

    def _run(self) -> None:
        while not self._stop.is_set():
            next_at = self.check()
            with self._lock:
                self._next_look = min(next_at, time.monotonic() + 1.0)
            self._wake.wait(max(0.0, self._next_look - time.monotonic()))
            self._wake.clear()

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
