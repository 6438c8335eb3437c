"""In the process that runs a job (a ``GuardedWorker``'s horse, or a ``GuardedSimpleWorker``
itself): the horse tied to its worker, zombieguard's interrupts as exceptions, and RQ's own writes
kept going while Redis is briefly away."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import redis

from zombieguard.containment import log
from zombieguard.enforcement.interrupts import Interrupt, interrupt_error
from zombieguard.integrations.rq.failure import hard_limit_error
from zombieguard.policy import Policy


def die_with_parent(parent_pid: int) -> None:
    """In a horse: be killed by the kernel when the worker that forked it dies (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os._exit(1)


def limit_error(kind: Interrupt, policy: Policy, job_timeout: Any) -> BaseException:
    """What a job raises for a limit's interrupt: past its hard limit, RQ's own
    ``JobTimeoutException`` type when that limit is RQ's ``job_timeout``."""
    if kind is Interrupt.HARD:
        return hard_limit_error(policy, job_timeout, killed=False)
    return interrupt_error(kind, policy, "job")


def while_redis_away(what: str, deadline: float, call: Callable[[], object]) -> None:
    """``call``, tried again (backing off) while Redis does not answer, until ``deadline``
    (monotonic); then its error is raised."""
    delay = 0.1
    while True:
        try:
            call()
            return
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s (%s); trying again", what, exc)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
