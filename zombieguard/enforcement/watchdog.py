"""The watchdog thread: runs the limit clocks of the attempts in one process and calls the
integration's stop function when a limit passes, escalating when the job does not end.

The integrations assemble it per execution model (docs/guarantees.md says what holds where), with
:mod:`zombieguard.enforcement.interrupts` to make a job raise and
:mod:`zombieguard.enforcement.stacks` to say where it was.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from zombieguard.containment import contained
from zombieguard.enforcement.limits import Limit, LimitClock


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
