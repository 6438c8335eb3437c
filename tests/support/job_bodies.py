"""Job bodies both frameworks' end-to-end tests run (``tests.support.rq_jobs`` enqueues them for RQ,
``tests.support.celery_app`` registers them as Celery tasks). Each records what happened in files under a
directory the test gives, so the test can count bodies started and completed."""

from __future__ import annotations

import collections
import ctypes
import itertools
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

import zombieguard


def note(directory: str, name: str, text: str = "") -> None:
    with (Path(directory) / name).open("a") as f:
        f.write(f"{time.time()!r} {text}\n")


def notes(directory: str, name: str) -> list[str]:
    """Lines of one notes file (empty when none)."""
    path = Path(directory) / name
    return path.read_text().splitlines() if path.exists() else []


def hang_on_socket(directory: str, port: int) -> None:
    """Connects to a server that never answers and waits for it: the seed incident."""
    note(directory, "started")
    conn = socket.create_connection(("127.0.0.1", port))
    conn.recv(1)
    note(directory, "completed")


def stuck_in_c_code(directory: str, after: float = 0.0) -> None:
    """Holds the GIL in C code: no signal handler, no other thread of this process runs (after
    ``after`` seconds of sleep, during which the other threads do run)."""
    note(directory, "started")
    time.sleep(after)
    collections.deque(itertools.repeat(None, 10**12), maxlen=0)


_LIBC = ctypes.PyDLL(None)
"""The C library, called without releasing the GIL."""


def holds_the_gil(directory: str, first: float, then: float) -> str:
    """Holds the GIL in C code (no other thread of its process runs) for ``first`` seconds on its
    first run and ``then`` on later ones; then returns at once (nothing that lets another thread
    run first)."""
    seconds = then if notes(directory, "started") else first
    note(directory, "started", str(os.getpid()))
    _LIBC.usleep(int(seconds * 1_000_000))
    return "done"


def beats_then_stalls(directory: str, beats: int) -> None:
    """Proves progress for a while, then stays alive without progress (the seven-day zombie)."""
    note(directory, "started")
    for i in range(beats):
        zombieguard.beat(progress=f"{i + 1}/{beats}")
        time.sleep(0.2)
    note(directory, "stopped-beating")
    while True:
        time.sleep(0.05)


def reports_progress(directory: str, seconds: float) -> str:
    """Says how far it got, and what it does, then works on for ``seconds`` without saying more."""
    note(directory, "started", str(os.getpid()))
    zombieguard.beat(progress="3/10", message="fetching page 3")
    time.sleep(seconds)
    return "done"


def works_in_steps(directory: str, steps: int) -> str:
    """Works ``steps`` steps of 0.05 s, beating at each: unlike a body that waits for a moment on the
    clock, a frozen one has as much left to do when it wakes."""
    note(directory, "started", str(os.getpid()))
    for _ in range(steps):
        zombieguard.beat()
        time.sleep(0.05)
    zombieguard.beat(progress="finishing")
    note(directory, "completed", str(os.getpid()))
    return "done"


def long_job(directory: str, seconds: float) -> str:
    """Beats until done; used to kill or freeze its worker mid-job.

    Its last side effect (the "completed" note) is fenced by a beat just before it, the way a job
    guards a write that must not happen twice: a superseded attempt gets LeaseLost there instead.
    """
    note(directory, "started", str(os.getpid()))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        zombieguard.beat()
        time.sleep(0.05)
    zombieguard.beat(progress="finishing")
    note(directory, "completed", str(os.getpid()))
    return "done"


def kills_its_process(directory: str) -> None:
    """A poison pill: every process that runs it dies."""
    note(directory, "started")
    os.kill(os.getpid(), signal.SIGKILL)


def checkpointed(directory: str, items: int, die_at: int) -> list[int]:
    """Processes items with a checkpoint; the first attempt dies at ``die_at``."""
    done = []
    for item in zombieguard.checkpoint().iterate(range(items)):
        if item == die_at and not notes(directory, "died"):
            note(directory, "died")
            os.kill(os.getpid(), signal.SIGKILL)
        note(directory, "item", str(item))
        done.append(item)
    return done


def dies_the_first_times(directory: str, times: int) -> str:
    """Kills its process on its first ``times`` runs, then succeeds (a transient poison)."""
    note(directory, "started")
    if len(notes(directory, "started")) <= times:
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def loses_its_lease_then_dies(directory: str, redis_url: str, key_prefix: str) -> str:
    """On its first run, its lease vanishes from Redis (as with a primary failed over before any
    replica had it) and its process dies at once, before its worker's heartbeat can write the
    lease again; later runs succeed."""
    note(directory, "started")
    if len(notes(directory, "started")) == 1:
        _lose_lease(redis_url, key_prefix)
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def _lose_lease(redis_url: str, key_prefix: str) -> None:
    """Delete the running job's lease once it is written."""
    lease = f"{{{key_prefix}}}:lease:{_current_job_id()}"
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 5
    while not client.exists(lease) and time.monotonic() < deadline:
        time.sleep(0.01)
    client.delete(lease)
    client.close()


def loses_its_lease_then_hangs(directory: str, redis_url: str, key_prefix: str) -> str:
    """On its first run, its lease vanishes from Redis (as with a primary failed over before any
    replica had it) and it then holds the GIL in C code, the test to kill its whole worker; later
    runs succeed."""
    note(directory, "started")
    if len(notes(directory, "started")) == 1:
        _lose_lease(redis_url, key_prefix)
        note(directory, "lease-lost")
        _LIBC.usleep(60_000_000)
    return "survived"


def _current_job_id() -> str:
    """The id of the RQ job or Celery task this process runs (each venv of the version matrix has
    one of the two frameworks only)."""
    try:
        import rq  # noqa: PLC0415

        job = rq.get_current_job()
        if job is not None:
            return str(job.id)
    except ImportError:
        pass
    import celery  # noqa: PLC0415

    return str(celery.current_task.request.id)


def starts_programs(directory: str, then: str = "waits") -> str:
    """Starts three long programs: one in the job's own session, one in a session of its own (as a
    program that detaches does), and one that daemonizes (its parent shell exits at once: no
    process tree leads to it); notes their pids in ``programs``, then: ``waits`` for the first (a
    job blocked on a hung subprocess), ``holds the GIL`` in C code, or ``returns`` at once (leaving
    them running)."""
    plain = subprocess.Popen(["sleep", "600"])
    detached = subprocess.Popen(["sleep", "601"], start_new_session=True)
    shell = subprocess.run(
        ["sh", "-c", "sleep 602 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True, check=True
    )
    note(directory, "programs", f"{plain.pid} {detached.pid} {shell.stdout.strip()}")
    note(directory, "started")
    if then == "returns":
        return "left them running"
    if then == "holds the GIL":
        collections.deque(itertools.repeat(None, 10**12), maxlen=0)
    plain.wait()
    note(directory, "completed")
    return "the program ended"


def runs_a_program(directory: str) -> str:
    """Starts a short program, waits for it, and returns what it printed."""
    note(directory, "started")
    out = subprocess.run(["sh", "-c", "sleep 0.3; echo done"], capture_output=True, text=True, check=True)
    note(directory, "completed")
    return out.stdout.strip()
