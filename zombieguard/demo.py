"""``zombieguard demo``: the seed incident, live, in under a minute.

Two RQ workers serve a stream of normal jobs while four zombies arrive: a job hung on a socket that
never answers, one stuck in C code holding the GIL, one whose worker is SIGKILLed mid-job, and a
poison pill that kills every process that runs it. Guarded, zombieguard stops, recovers and
dead-letters them; ``--unguarded`` runs the same with plain RQ workers, and the zombies stay
"started". It runs on a throwaway Redis unless one is named (``--redis-url`` or
``ZOMBIEGUARD_REDIS_URL``), and then keeps to keys of its own.

The job functions below are what the demo's workers run.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

import zombieguard
from zombieguard.embedded import EmbeddedRedis
from zombieguard.lease import LeaseStore
from zombieguard.policy import Settings

HARD_TIMEOUT = 4.0
LEASE_TTL = 3.0
NORMAL_JOBS = 24
UNGUARDED_WAIT = 20.0
GUARDED_WAIT = 60.0


# -- the jobs --------------------------------------------------------------------------------------
def normal(i: int) -> int:
    """A healthy job: a little work, with progress."""
    for step in range(4):
        zombieguard.beat(progress=f"{step + 1}/4")
        time.sleep(0.1)
    return i


def fetch_report(port: int) -> None:
    """The seed incident: a read on a socket whose peer never answers."""
    conn = socket.create_connection(("127.0.0.1", port))
    conn.recv(1)


def crunch() -> None:
    """C code that holds the GIL: no signal handler, no thread of this process runs."""
    collections.deque(itertools.repeat(None, 10**12), maxlen=0)


def long_export(seconds: float) -> str:
    """A long job with progress; its worker is SIGKILLed while it runs."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        zombieguard.beat(progress=f"{seconds - (end - time.monotonic()):.1f}/{seconds:g}s")
        time.sleep(0.1)
    zombieguard.beat(progress="done")
    return "exported"


def poison() -> None:
    """A payload that kills every process that runs it."""
    os.kill(os.getpid(), signal.SIGKILL)


# -- the show --------------------------------------------------------------------------------------
class _BlackHole:
    """A TCP server on loopback that accepts and never answers."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.server.settimeout(0.2)
        self.port: int = self.server.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.conns.append(self.server.accept()[0])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        for conn in self.conns:
            conn.close()
        self.server.close()


@contextlib.contextmanager
def _redis(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run_demo(unguarded: bool = False, redis_url: str | None = None) -> int:
    """Run the demo; return the exit code."""
    from rq import Queue  # noqa: PLC0415 - the demo needs the rq extra; the CLI does not

    named = redis_url or os.environ.get("ZOMBIEGUARD_REDIS_URL")
    mode = "plain RQ (unguarded)" if unguarded else "zombieguard GuardedWorker"
    with _redis(named) as url:
        where = f"your Redis {url}" if named else "a throwaway Redis"
        _say(f"zombieguard demo: two workers ({mode}) on {where}")
        client = redis.Redis.from_url(url)
        tag = uuid.uuid4().hex[:8]
        prefix = f"zgdemo-{tag}"
        queue = Queue(f"zgdemo-{tag}", connection=client)
        hole = _BlackHole()
        env = {
            **os.environ,
            "ZOMBIEGUARD_REDIS_URL": url,
            "ZOMBIEGUARD_KEY_PREFIX": prefix,
            "ZOMBIEGUARD_HARD_TIMEOUT": str(HARD_TIMEOUT),
            "ZOMBIEGUARD_LEASE_TTL": str(LEASE_TTL),
            "ZOMBIEGUARD_HEARTBEAT_INTERVAL": "0.5",
            "ZOMBIEGUARD_SWEEP_INTERVAL": "0.25",
            "ZOMBIEGUARD_OVERDUE_GRACE": "1",
            "ZOMBIEGUARD_MAX_STALLS": "2",
        }
        worker_class = "rq.Worker" if unguarded else "zombieguard.integrations.rq.GuardedWorker"
        rq_bin = str(Path(sys.executable).with_name("rq"))
        workers = [
            subprocess.Popen(
                [rq_bin, "worker", "-w", worker_class, "--url", url, "--name", f"demo-{tag}-{n}", queue.name],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            for n in (1, 2)
        ]
        try:
            return _show(client, queue, prefix, workers, port=hole.port, unguarded=unguarded)
        finally:
            for worker in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(5)
            hole.close()
            keys = list(client.scan_iter(match=f"*{tag}*", count=1000))
            keys += list(client.scan_iter(match="{" + prefix + "}*", count=1000))
            if keys:
                client.delete(*keys)
            client.srem("rq:queues", f"rq:queue:{queue.name}")


def _show(
    client: redis.Redis,
    queue: Any,
    prefix: str,
    workers: list[subprocess.Popen[bytes]],
    *,
    port: int,
    unguarded: bool,
) -> int:
    deadline_wait = UNGUARDED_WAIT if unguarded else GUARDED_WAIT
    t0 = time.monotonic()
    specials = {
        "worker SIGKILLed": queue.enqueue("zombieguard.demo.long_export", 3.0),
        "hung on a socket": queue.enqueue("zombieguard.demo.fetch_report", port),
        "stuck in C code": queue.enqueue("zombieguard.demo.crunch"),
        "poison pill": queue.enqueue("zombieguard.demo.poison"),
    }
    normals = [queue.enqueue("zombieguard.demo.normal", i) for i in range(NORMAL_JOBS)]
    store = LeaseStore(client, Settings(key_prefix=prefix))
    killed_at: float | None = None
    seen: dict[str, str] = {}
    ended_at: dict[str, float] = {}
    last_view = 0.0
    while time.monotonic() - t0 < deadline_wait:
        now = time.monotonic() - t0
        statuses = {name: _status(job) for name, job in specials.items()}
        if now - last_view >= 1.0:
            last_view = now
            running = [
                _view(store, name, job) for name, job in specials.items() if statuses[name] == "started"
            ]
            if running:
                _say(f"[{now:5.1f}s]   running: " + "; ".join(running))
        if killed_at is None and statuses["worker SIGKILLed"] == "started" and now > 1.0:
            victim = _worker_running(client, queue, specials["worker SIGKILLed"].id, workers)
            if victim is not None:
                os.killpg(victim.pid, signal.SIGKILL)
                killed_at = now
                _say(f"[{now:5.1f}s] SIGKILLed the worker running 'worker SIGKILLed' (pid {victim.pid})")
        for name, status in statuses.items():
            if seen.get(name) != status:
                seen[name] = status
                _say(f"[{now:5.1f}s] {name:<18} {status}{_progress(store, specials[name].id)}")
                if status in ("finished", "failed"):
                    ended_at[name] = now
        done = sum(1 for job in normals if _status(job) == "finished")
        if done == len(normals) and len(ended_at) == len(specials):
            break
        time.sleep(0.25)
    elapsed = time.monotonic() - t0
    _say("")
    _say(f"summary after {elapsed:.1f}s ({'unguarded' if unguarded else 'guarded'}):")
    _say(f"  normal jobs finished: {sum(1 for j in normals if _status(j) == 'finished')}/{len(normals)}")
    for name, job in specials.items():
        status = _status(job)
        when = f" at {ended_at[name]:.1f}s" if name in ended_at else f" for all {elapsed:.0f}s"
        how = _how(job, store, name, killed_at) if status in ("finished", "failed") else " <- a zombie"
        _say(f"  {name:<18} {status}{when}{how}")
    return 0


def _status(job: Any) -> str:
    try:
        status = job.get_status(refresh=True)
    except Exception:
        return "gone"
    return str(getattr(status, "value", status))


def _view(store: LeaseStore, name: str, job: Any) -> str:
    """``name``: its age and last progress, from its lease (or from RQ when unguarded)."""
    with contextlib.suppress(Exception):
        record = store.record(job.id)
        if record is not None and record.state == "running":
            now = store.server_time()
            progress = f"{now - record.last_progress:.1f}s ago" if record.last_progress else "never"
            return f"{name} age {now - record.started:.1f}s, last progress {progress}"
    with contextlib.suppress(Exception):
        job.refresh()
        if job.started_at is not None:
            from datetime import datetime, timezone  # noqa: PLC0415 - only for the unguarded view

            age = (
                datetime.now(timezone.utc).replace(tzinfo=None) - job.started_at.replace(tzinfo=None)
            ).total_seconds()
            return f"{name} age {age:.1f}s, last progress unknown"
    return name


def _progress(store: LeaseStore, job_id: str) -> str:
    with contextlib.suppress(Exception):
        record = store.record(job_id)
        if record is not None and record.state == "running":
            return f" (attempt {record.attempt} on {record.worker})"
    return ""


def _how(job: Any, store: LeaseStore, name: str, killed_at: float | None) -> str:
    record = None
    with contextlib.suppress(Exception):
        record = store.record(job.id)
    attempts = f", {record.attempt} attempt(s)" if record is not None else ""
    result = None
    with contextlib.suppress(Exception):
        result = job.latest_result()
    reason = ""
    if result is not None and getattr(result, "exc_string", None):
        lines = result.exc_string.strip().splitlines()
        verdict = next((line for line in lines if line.startswith("zombieguard.")), lines[-1])
        reason = " — " + verdict[:100]
    if name == "worker SIGKILLed" and killed_at is not None:
        reason += f" (worker killed at {killed_at:.1f}s)"
    return attempts + reason


def _worker_running(
    client: redis.Redis, queue: Any, job_id: str, workers: list[subprocess.Popen[bytes]]
) -> Any:
    """The worker process that RQ says runs ``job_id``."""
    from rq import Worker  # noqa: PLC0415 - see run_demo

    for rq_worker in Worker.all(queue=queue):
        if rq_worker.get_current_job_id() == job_id:
            return next((w for w in workers if w.pid == rq_worker.pid), None)
    return None
