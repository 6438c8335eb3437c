"""Jobs the end-to-end tests enqueue; real RQ workers import them. Each records what happened in
files under a directory the test gives, so the test can count bodies started and completed."""

from __future__ import annotations

import collections
import itertools
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from rq import Retry

import zombieguard


def _note(directory: str, name: str, text: str = "") -> None:
    with (Path(directory) / name).open("a") as f:
        f.write(f"{time.time()!r} {text}\n")


def notes(directory: str, name: str) -> list[str]:
    """Lines of one notes file (empty when none)."""
    path = Path(directory) / name
    return path.read_text().splitlines() if path.exists() else []


def add(x: int, y: int) -> int:
    """A healthy job."""
    return x + y


def hang_on_socket(directory: str, port: int) -> None:
    """Connects to a server that never answers and waits for it: the seed incident."""
    _note(directory, "started")
    conn = socket.create_connection(("127.0.0.1", port))
    conn.recv(1)
    _note(directory, "completed")


def stuck_in_c_code(directory: str) -> None:
    """Holds the GIL in C code: no signal handler, no other thread of this process runs."""
    _note(directory, "started")
    collections.deque(itertools.repeat(None, 10**12), maxlen=0)


def sleep_then_return(directory: str, seconds: float) -> str:
    """Runs for a while, then succeeds."""
    _note(directory, "started")
    time.sleep(seconds)
    _note(directory, "completed")
    return "slept"


def cleans_up_on_soft_timeout(directory: str) -> str:
    """Catches the soft limit and finishes cleanly."""
    _note(directory, "started")
    try:
        time.sleep(30)
    except zombieguard.SoftTimeLimitExceeded:
        _note(directory, "cleaned-up")
        return "cleaned up"
    return "never"


def beats_then_stalls(directory: str, beats: int) -> None:
    """Proves progress for a while, then stays alive without progress (the seven-day zombie)."""
    _note(directory, "started")
    for i in range(beats):
        zombieguard.beat(progress=f"{i + 1}/{beats}")
        time.sleep(0.2)
    _note(directory, "stopped-beating")
    while True:
        time.sleep(0.05)


def long_job(directory: str, seconds: float) -> str:
    """Beats until done; used to kill or freeze its worker mid-job.

    Its last side effect (the "completed" note) is fenced by a beat just before it, the way a job
    guards a write that must not happen twice: a superseded attempt gets LeaseLost there instead.
    """
    _note(directory, "started", str(os.getpid()))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        zombieguard.beat()
        time.sleep(0.05)
    zombieguard.beat(progress="finishing")
    _note(directory, "completed", str(os.getpid()))
    return "done"


def kills_its_process(directory: str) -> None:
    """A poison pill: every process that runs it dies."""
    _note(directory, "started")
    os.kill(os.getpid(), signal.SIGKILL)


def checkpointed(directory: str, items: int, die_at: int) -> list[int]:
    """Processes items with a checkpoint; the first attempt dies at ``die_at``."""
    done = []
    for item in zombieguard.checkpoint().iterate(range(items)):
        if item == die_at and not notes(directory, "died"):
            _note(directory, "died")
            os.kill(os.getpid(), signal.SIGKILL)
        _note(directory, "item", str(item))
        done.append(item)
    return done


def fails(directory: str) -> None:
    """Raises an ordinary exception."""
    _note(directory, "started")
    raise ValueError("boom")


def returns_retry(directory: str) -> Any:
    """Asks RQ to retry it once, then succeeds."""
    _note(directory, "started")
    if len(notes(directory, "started")) < 2:
        return Retry(max=2)
    return "second time"


@zombieguard.guard(hard_timeout=3)
def guarded_longer_than_rq(directory: str) -> str:
    """Its policy allows 3 s; RQ's job_timeout says 1 s: the policy wins."""
    _note(directory, "started")
    time.sleep(1.5)
    return "policy wins"


def on_failure(job: Any, connection: Any, exc_type: Any, exc: Any, tb: Any) -> None:
    """RQ failure callback: records the exception type."""
    _note(job.args[0], "on_failure", exc_type.__name__)


def on_success(job: Any, connection: Any, result: Any) -> None:
    """RQ success callback."""
    _note(job.args[0], "on_success", repr(result))


def dies_the_first_times(directory: str, times: int) -> str:
    """Kills its process on its first ``times`` runs, then succeeds (a transient poison)."""
    _note(directory, "started")
    if len(notes(directory, "started")) <= times:
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"
