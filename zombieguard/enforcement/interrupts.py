"""Interrupts: how the watching side of a worker makes a job raise.

A signal carries each :class:`Interrupt` to the process that runs the job (an RQ horse or simple
worker, a Celery prefork pool process or solo worker), whose handler raises it there;
:func:`interrupt_thread` raises one in another thread of the same process (the threads pool). Like a
signal handler, it runs only between bytecodes: it cannot cancel a blocking system call in that
thread, nor C code that holds the GIL. Then only killing the process stops the job, from another
process.
"""

from __future__ import annotations

import ctypes
import enum
import signal
from collections.abc import Callable
from types import FrameType

from zombieguard.enforcement.limits import Limit
from zombieguard.errors import HardTimeLimitExceeded, JobHung, SoftTimeLimitExceeded
from zombieguard.leases import Outcome
from zombieguard.policy import Policy

# Real-time signals: RQ, Celery and billiard use none of them. Not SIGUSR2: billiard < 4.2.1 makes it
# a signal that ends a pool process (installed after worker_process_init, over faulthandler's).
SOFT_SIGNAL = signal.SIGRTMIN + 1
HARD_SIGNAL = signal.SIGRTMIN + 2
HUNG_SIGNAL = signal.SIGRTMIN + 3
LOST_SIGNAL = signal.SIGRTMIN + 4


class Interrupt(str, enum.Enum):
    """What a signal from the worker's watching side tells the job's process to raise."""

    SOFT = "soft"
    """Past its ``soft_timeout``: the job may catch it and clean up."""
    HARD = "hard"
    """Past its ``hard_timeout``."""
    HUNG = "hung"
    """No progress within its ``progress_timeout``."""
    LOST = "lost"
    """A renewal was refused: another attempt, a sweeper or a stop holds the job now."""

    def __str__(self) -> str:
        return self.value

    @property
    def signal(self) -> int:
        """The real-time signal that carries it."""
        return _SIGNALS[self]

    @property
    def outcome(self) -> Outcome:
        """How an attempt that ends raising it ends: timed out, hung, superseded; failed when it is
        the soft limit's (the job let the catchable warning escape)."""
        return {
            Interrupt.SOFT: Outcome.FAILED,
            Interrupt.HARD: Outcome.TIMED_OUT,
            Interrupt.HUNG: Outcome.HUNG,
            Interrupt.LOST: Outcome.LEASE_LOST,
        }[self]

    @classmethod
    def at(cls, limit: Limit) -> Interrupt:
        """The interrupt for a job that passed ``limit``."""
        return {Limit.SOFT: cls.SOFT, Limit.HARD: cls.HARD, Limit.PROGRESS: cls.HUNG}[limit]


_SIGNALS = {
    Interrupt.SOFT: SOFT_SIGNAL,
    Interrupt.HARD: HARD_SIGNAL,
    Interrupt.HUNG: HUNG_SIGNAL,
    Interrupt.LOST: LOST_SIGNAL,
}


def interrupt_error(
    kind: Interrupt, policy: Policy, noun: str, soft: type[Exception] = SoftTimeLimitExceeded
) -> BaseException:
    """The exception a job raises for a limit's interrupt ``kind`` (not :attr:`Interrupt.LOST`: the
    attempt's own :class:`LeaseLost` is raised for that), saying which limit of ``policy`` it passed;
    ``noun`` names the job as its framework does ("job", "task"), ``soft`` is the framework's
    catchable soft-limit type."""
    if kind is Interrupt.SOFT:
        return soft(f"{noun} passed its soft_timeout of {policy.soft_timeout:g} s")
    if kind is Interrupt.HARD:
        return HardTimeLimitExceeded(f"{noun} passed its hard_timeout of {policy.hard_timeout:g} s")
    if kind is Interrupt.HUNG:
        return JobHung(
            f"{noun} made no progress within its progress_timeout of {policy.progress_timeout:g} s"
        )
    raise ValueError(f"{kind} is not a limit's interrupt")


def install_interrupt_handlers(on_interrupt: Callable[[Interrupt], None]) -> None:
    """In the process that runs jobs, from its main thread: call ``on_interrupt(kind)`` when the
    signal of an interrupt comes (it raises the interrupt in the job, or decides it is not for it)."""

    def handler_of(kind: Interrupt) -> Callable[[int, FrameType | None], None]:
        def handler(signum: int, frame: FrameType | None) -> None:
            on_interrupt(kind)

        return handler

    for kind in Interrupt:
        signal.signal(kind.signal, handler_of(kind))


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
