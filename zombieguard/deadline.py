"""``deadline(seconds)``: a total wall-clock allowance for any block of code.

A per-read socket timeout is not a total deadline: a server that sends one byte every 29 seconds
keeps a 30-second read timeout happy forever. ``deadline`` bounds the whole block:

    with zombieguard.deadline(10):
        response = session.get(url, timeout=5)

How it interrupts, and what it cannot:

- In the main thread it arms ``SIGALRM`` (``setitimer``). The handler raises ``DeadlineExceeded``;
  a blocking system call (``recv``, ``connect``, ``sleep``) is interrupted by the signal, so a
  half-open socket is covered. An outer timer (RQ's death penalty, an enclosing ``deadline``) is
  kept: the earlier of the two fires, and the outer one is re-armed on exit.
- In any other thread it raises the exception asynchronously, between bytecodes, from a timer
  thread. A blocking call in that thread is not interrupted (Python retries it, PEP 475); it ends
  at the call's own timeout, and the exception is raised right after. Give sockets a timeout.
- C code holding the GIL is interrupted by neither; the worker's hard limit kills the process.

If code inside the block catches the exception and carries on, leaving the block raises it again.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from zombieguard.enforcement.interrupts import clear_interrupt, interrupt_thread
from zombieguard.errors import DeadlineExceeded


def _check_seconds(seconds: float) -> None:
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or seconds <= 0
    ):
        raise ValueError(f"deadline(seconds={seconds!r}) is invalid: it must be a positive number of seconds")


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """End the block with :class:`~zombieguard.DeadlineExceeded` after ``seconds`` of wall-clock time."""
    _check_seconds(seconds)
    if threading.current_thread() is threading.main_thread():
        with _main_thread_deadline(seconds):
            yield
    else:
        with _thread_deadline(seconds):
            yield


def _exceeded(seconds: float) -> DeadlineExceeded:
    return DeadlineExceeded(f"the block did not finish within its deadline of {seconds:g} s")


@contextmanager
def _main_thread_deadline(seconds: float) -> Iterator[None]:
    start = time.monotonic()
    ours = start + seconds
    previous_handler = signal.getsignal(signal.SIGALRM)
    previous_delay, previous_interval = signal.getitimer(signal.ITIMER_REAL)
    outer = start + previous_delay if previous_delay > 0 else None

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        nonlocal outer, previous_interval
        now = time.monotonic()
        if now >= ours - 0.0005:
            raise _exceeded(seconds)
        if outer is not None and now >= outer - 0.0005:
            # The outer timer's moment came: it is spent, or (repeating) due an interval later.
            outer = outer + previous_interval if previous_interval > 0 else None
        try:
            if callable(previous_handler):
                previous_handler(signum, frame)
        finally:
            # A handler that armed the timer itself (an enclosing deadline, a timer that re-arms)
            # set the outer moment anew; then wait for whichever moment comes next.
            delay, interval = signal.getitimer(signal.ITIMER_REAL)
            now = time.monotonic()
            if delay > 0:
                outer, previous_interval = now + delay, interval
            signal.setitimer(signal.ITIMER_REAL, max(min(ours, outer or ours) - now, 0.001))

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, min(seconds, previous_delay) if outer is not None else seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if outer is not None:
            signal.setitimer(signal.ITIMER_REAL, max(outer - time.monotonic(), 0.001), previous_interval)
    # Reached only when no exception left the block: it swallowed ours, or finished just too late.
    if time.monotonic() >= ours:
        raise _exceeded(seconds)


@contextmanager
def _thread_deadline(seconds: float) -> Iterator[None]:
    ident = threading.get_ident()
    lock = threading.Lock()
    state: dict[str, Any] = {"inside": True, "fired": False}

    def fire() -> None:
        with lock:
            if state["inside"]:
                state["fired"] = interrupt_thread(ident, DeadlineExceeded)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    start = time.monotonic()
    timer.start()
    try:
        yield
    except DeadlineExceeded as exc:
        if state["fired"] and not exc.args:
            raise _exceeded(seconds) from None
        raise
    finally:
        with lock:
            state["inside"] = False
            if state["fired"]:
                # Fired as the block was ending: it may still be pending; never let it escape later.
                clear_interrupt(ident)
        timer.cancel()
    if time.monotonic() - start >= seconds:
        raise _exceeded(seconds)
