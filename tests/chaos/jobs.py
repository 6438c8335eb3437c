"""The chaos workload's job bodies, shared by RQ (enqueued by name) and Celery (registered as tasks by
``tests.chaos.celery_app`` under the same names), and the history they write.

Each body appends JSON lines to a file of its own process in the run's directory (``ZG_CHAOS_DIR``):
``start`` right after its first beat, ``commit`` as the very last thing it does. The files are local
and written with ``O_APPEND``, one ``write`` per line, so they survive Redis restarts and the SIGKILL
of the process that wrote them, and lines from the threads of one process never interleave.

Each kind carries its own policy (``@zombieguard.guard``, the highest-precedence source); the same
limits are given to the plain frameworks as their own timeouts by the runner.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import zombieguard
from zombieguard.errors import NotInGuardedJob
from zombieguard.worker.attempt import require_attempt

HISTORY_DIR_ENV = "ZG_CHAOS_DIR"
"""Where the bodies write their history (set by the runner on every worker)."""

BEAT_EVERY = 0.2
"""Seconds between two beats of a working body."""

HARD_TIMEOUT = 5.0
LONG_HARD_TIMEOUT = 15.0
"""A long job runs 2-3 lease_ttl: it needs a hard limit above that."""
PROGRESS_TIMEOUT = 2.0
"""Only the hung kind has one: it must end failed as hung, well before its hard limit."""
HUNG_SLEEP = 120.0
"""How long a hung body sits without beating: past every limit and the run's whole drain."""

KIND_LIMITS: dict[str, float] = {
    "normal": HARD_TIMEOUT,
    "long": LONG_HARD_TIMEOUT,
    "hung": HARD_TIMEOUT,
    "poison": HARD_TIMEOUT,
}
"""The hard limit of each kind, in seconds: the frameworks' own timeouts in plain runs."""


def history_path(directory: str | Path, pid: int) -> Path:
    """The history file of one process."""
    return Path(directory) / f"history-{pid}.jsonl"


def record(event: str, job_id: str, run: str, **fields: Any) -> None:
    """Append one history line for this process (a single ``write`` with ``O_APPEND``)."""
    directory = os.environ.get(HISTORY_DIR_ENV)
    if not directory:
        return
    pid = os.getpid()
    attempt, token = current_attempt()
    line = json.dumps(
        {
            "event": event,
            "job": job_id,
            "run": run,
            "attempt": attempt,
            "token": token,
            "pid": pid,
            "time": time.time(),
            **fields,
        },
        separators=(",", ":"),
    )
    # Opened per line: a horse forked from a worker must write to its own pid's file, not inherit one.
    fd = os.open(history_path(directory, pid), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def current_attempt() -> tuple[int, int]:
    """(attempt number, fencing token) of the running attempt; (0, 0) outside a guarded job.

    The token is 0 too while a Celery first delivery's lease is still pending (not written yet, or
    Redis unreachable when it was to be written).
    """
    try:
        attempt = require_attempt("the chaos history")
    except NotInGuardedJob:
        return 0, 0
    return attempt.number, attempt.token


def _begin(job_id: str, kind: str) -> str:
    # A beat with a message always reaches Redis: on Celery it writes a first delivery's lease now,
    # so that the start line carries the attempt's token (and a refused delivery stops here).
    zombieguard.beat(message="start")
    run = uuid.uuid4().hex[:12]
    record("start", job_id, run, kind=kind)
    return run


def _work(seconds: float) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(BEAT_EVERY, left))
        zombieguard.beat()


def _commit(job_id: str, run: str) -> str:
    # The fenced write: a superseded attempt gets LeaseLost here (a round trip, since a message is
    # given), before its commit line can be written.
    zombieguard.beat(message="commit")
    record("commit", job_id, run)
    return job_id


@zombieguard.guard(hard_timeout=HARD_TIMEOUT)
def normal(job_id: str, seconds: float) -> str:
    """Works for ``seconds`` (0.3-2 s), beating, then commits."""
    run = _begin(job_id, "normal")
    _work(seconds)
    return _commit(job_id, run)


@zombieguard.guard(hard_timeout=LONG_HARD_TIMEOUT)
def long(job_id: str, seconds: float) -> str:
    """Works for ``seconds`` (2-3 lease_ttl), beating, then commits."""
    run = _begin(job_id, "long")
    _work(seconds)
    return _commit(job_id, run)


@zombieguard.guard(hard_timeout=HARD_TIMEOUT, progress_timeout=PROGRESS_TIMEOUT)
def hung(job_id: str, seconds: float) -> str:
    """Beats a few times, then stays alive without beating (short sleeps, so that an interrupt can
    reach it between them on every pool). Commits only if nothing stopped it, which is wrong."""
    run = _begin(job_id, "hung")
    _work(seconds)
    end = time.monotonic() + HUNG_SLEEP
    while time.monotonic() < end:
        time.sleep(0.05)
    return _commit(job_id, run)


@zombieguard.guard(hard_timeout=HARD_TIMEOUT)
def poison(job_id: str, seconds: float) -> str:
    """A poison pill: the process that runs it dies (SIGKILL), every time."""
    _begin(job_id, "poison")
    os.kill(os.getpid(), signal.SIGKILL)
    return job_id  # never reached


BODIES = {"normal": normal, "long": long, "hung": hung, "poison": poison}
"""The body of each kind; the task or function name is ``tests.chaos.jobs.<kind>``."""
