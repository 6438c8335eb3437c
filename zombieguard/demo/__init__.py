"""``zombieguard demo``: the seed incident, live, in under a minute per framework.

Two workers serve a stream of normal jobs while four zombies arrive: a job hung on a socket that
never answers, one stuck in C code holding the GIL, one whose worker is SIGKILLed mid-job, and a
poison pill that kills every process that runs it. Guarded, zombieguard stops, recovers and
dead-letters them; ``--unguarded`` runs the same with plain workers, and the zombies stay
"started". It runs with RQ, then with Celery, each that is installed (``--only`` picks one), on a
throwaway Redis unless one is named (``--redis-url`` or ``ZOMBIEGUARD_REDIS_URL``), and then keeps
to keys of its own.

The job functions below are what the demo's workers run (``zombieguard.demo.celery`` makes them
Celery tasks).
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
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
from zombieguard.demo.embedded import EmbeddedRedis
from zombieguard.errors import IntegrationNotAvailable
from zombieguard.leases import LeaseState, LeaseStore
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


class Framework:
    """One framework's side of the demo: its workers, how a job is sent, and how it is seen."""

    title = ""
    plain = ""
    """Its workers, unguarded."""
    guarded = ""
    """Its workers, guarded."""

    def __init__(self, client: redis.Redis, url: str, store: LeaseStore, tag: str, unguarded: bool) -> None:
        self.client = client
        self.url = url
        self.store = store
        self.unguarded = unguarded
        self.queue = f"zgdemo-{tag}"

    def worker_command(self, name: str) -> list[str]:
        """The command that starts the worker called ``name``."""
        raise NotImplementedError

    def submit(self, function: str, *args: Any) -> str:
        """Send one of this module's job functions; return the job's id."""
        raise NotImplementedError

    def status(self, job_id: str) -> str:
        """queued, started, finished or failed (or what else the framework says)."""
        raise NotImplementedError

    def running_on(self, job_id: str) -> str | None:
        """The name of the worker the framework says runs ``job_id``."""
        raise NotImplementedError

    def verdict(self, job_id: str) -> str:
        """Why a failed job failed, in one line."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Forget what the framework keeps outside the demo's keys."""


class RQDemo(Framework):
    """The demo on RQ: two ``rq worker`` processes."""

    title = "RQ"
    plain = "plain rq.Worker"
    guarded = "zombieguard GuardedWorker"

    def __init__(self, client: redis.Redis, url: str, store: LeaseStore, tag: str, unguarded: bool) -> None:
        from rq import Queue  # noqa: PLC0415 - the demo needs the rq extra; the CLI does not

        super().__init__(client, url, store, tag, unguarded)
        self.rq_queue = Queue(self.queue, connection=client)
        self.jobs: dict[str, Any] = {}

    def worker_command(self, name: str) -> list[str]:
        worker_class = "rq.Worker" if self.unguarded else "zombieguard.integrations.rq.GuardedWorker"
        rq_bin = str(Path(sys.executable).with_name("rq"))
        return [rq_bin, "worker", "-w", worker_class, "--url", self.url, "--name", name, self.queue]

    def submit(self, function: str, *args: Any) -> str:
        job = self.rq_queue.enqueue(f"zombieguard.demo.{function}", *args)
        self.jobs[job.id] = job
        return str(job.id)

    def status(self, job_id: str) -> str:
        try:
            status = self.jobs[job_id].get_status(refresh=True)
        except Exception:
            return "gone"
        return str(getattr(status, "value", status))

    def running_on(self, job_id: str) -> str | None:
        from rq import Worker  # noqa: PLC0415 - see __init__

        for rq_worker in Worker.all(queue=self.rq_queue):
            if rq_worker.get_current_job_id() == job_id:
                return str(rq_worker.name)
        return None

    def verdict(self, job_id: str) -> str:
        result = None
        with contextlib.suppress(Exception):
            result = self.jobs[job_id].latest_result()
        if result is None or not getattr(result, "exc_string", None):
            return ""
        lines = result.exc_string.strip().splitlines()
        return str(next((line for line in lines if line.startswith("zombieguard.")), lines[-1]))

    def cleanup(self) -> None:
        self.client.srem(self.rq_queue.redis_queues_keys, self.rq_queue.key)


FRAMEWORKS: dict[str, tuple[str, str]] = {
    "rq": ("rq", "zombieguard.demo:RQDemo"),
    "celery": ("celery", "zombieguard.demo.celery:CeleryDemo"),
}
"""Each framework the demo shows: the module it needs, and its side of the demo."""


def _frameworks(only: str | None) -> list[type[Framework]]:
    chosen = []
    for name, (needs, where) in FRAMEWORKS.items():
        if only not in (None, name):
            continue
        if importlib.util.find_spec(needs) is None:
            if only is not None:
                raise IntegrationNotAvailable(
                    f"the {name} demo needs {name}: pip install 'zombieguard[{name}]'"
                )
            continue
        module, attribute = where.split(":")
        chosen.append(getattr(importlib.import_module(module), attribute))
    if not chosen:
        raise IntegrationNotAvailable("the demo needs RQ or Celery: pip install 'zombieguard[rq]'")
    return chosen


def run_demo(unguarded: bool = False, redis_url: str | None = None, only: str | None = None) -> int:
    """Run the demo, with each framework installed (or ``only`` one); return the exit code."""
    frameworks = _frameworks(only)
    named = redis_url or os.environ.get("ZOMBIEGUARD_REDIS_URL")
    with _redis(named) as url:
        for n, framework in enumerate(frameworks):
            if n:
                _say("")
            _run(framework, url, f"your Redis {url}" if named else "a throwaway Redis", unguarded)
    return 0


def _run(kind: type[Framework], url: str, where: str, unguarded: bool) -> None:
    client = redis.Redis.from_url(url)
    tag = uuid.uuid4().hex[:8]
    prefix = f"zgdemo-{tag}"
    store = LeaseStore(client, Settings(key_prefix=prefix))
    framework = kind(client, url, store, tag, unguarded)
    mode = f"{framework.plain} (unguarded)" if unguarded else framework.guarded
    _say(f"zombieguard demo, {framework.title}: two workers ({mode}) on {where}")
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
        # Celery: every task leased before its body starts. The demo kills a worker the moment its
        # 'worker SIGKILLed' task is seen started, when the other task that worker runs may have
        # started within the default 0.05 s: a task its whole worker takes down that young is left to
        # the broker (docs/celery.md, lease_delay), and the demo's outcome would depend on the moment.
        "ZOMBIEGUARD_LEASE_DELAY": "none",
        "ZGDEMO_UNGUARDED": "1" if unguarded else "0",
    }
    workers = {
        name: subprocess.Popen(
            framework.worker_command(name),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for name in (f"demo-{tag}-1", f"demo-{tag}-2")
    }
    try:
        _show(framework, workers, port=hole.port)
    finally:
        for worker in workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(5)
        hole.close()
        keys = list(client.scan_iter(match=f"*{tag}*", count=1000))
        if keys:
            client.delete(*keys)
        framework.cleanup()
        client.close()


def _show(framework: Framework, workers: dict[str, subprocess.Popen[bytes]], *, port: int) -> None:
    store = framework.store
    deadline_wait = UNGUARDED_WAIT if framework.unguarded else GUARDED_WAIT
    t0 = time.monotonic()
    specials = {
        "worker SIGKILLed": framework.submit("long_export", 3.0),
        "hung on a socket": framework.submit("fetch_report", port),
        "stuck in C code": framework.submit("crunch"),
        "poison pill": framework.submit("poison"),
    }
    normals = [framework.submit("normal", i) for i in range(NORMAL_JOBS)]
    killed_at: float | None = None
    seen: dict[str, str] = {}
    started_at: dict[str, float] = {}
    ended_at: dict[str, float] = {}
    last_view = 0.0
    while time.monotonic() - t0 < deadline_wait:
        now = time.monotonic() - t0
        statuses = {name: framework.status(job_id) for name, job_id in specials.items()}
        for name, status in statuses.items():
            if status == "started":
                started_at.setdefault(name, now)
            else:
                started_at.pop(name, None)
        if now - last_view >= 1.0:
            last_view = now
            running = [_view(store, name, specials[name], now - since) for name, since in started_at.items()]
            if running:
                _say(f"[{now:5.1f}s]   running: " + "; ".join(running))
        if killed_at is None and statuses["worker SIGKILLed"] == "started" and now > 1.0:
            victim = workers.get(framework.running_on(specials["worker SIGKILLed"]) or "")
            if victim is not None:
                os.killpg(victim.pid, signal.SIGKILL)
                killed_at = now
                _say(f"[{now:5.1f}s] SIGKILLed the worker running 'worker SIGKILLed' (pid {victim.pid})")
        for name, status in statuses.items():
            shown = status + (_attempt(store, specials[name]) if status == "started" else "")
            if seen.get(name) != shown:
                seen[name] = shown
                _say(f"[{now:5.1f}s] {name:<18} {shown}")
                if status in ("finished", "failed"):
                    ended_at[name] = now
        done = sum(1 for job_id in normals if framework.status(job_id) == "finished")
        if done == len(normals) and len(ended_at) == len(specials):
            break
        time.sleep(0.25)
    _summary(framework, specials, normals, ended_at, killed_at=killed_at, elapsed=time.monotonic() - t0)


def _summary(
    framework: Framework,
    specials: dict[str, str],
    normals: list[str],
    ended_at: dict[str, float],
    *,
    killed_at: float | None,
    elapsed: float,
) -> None:
    _say("")
    mode = "unguarded" if framework.unguarded else "guarded"
    _say(f"summary after {elapsed:.1f}s ({framework.title}, {mode}):")
    finished = sum(1 for job_id in normals if framework.status(job_id) == "finished")
    _say(f"  normal jobs finished: {finished}/{len(normals)}")
    for name, job_id in specials.items():
        status = framework.status(job_id)
        when = f" at {ended_at[name]:.1f}s" if name in ended_at else f" for all {elapsed:.0f}s"
        how = _how(framework, job_id, name, killed_at) if status in ("finished", "failed") else " <- a zombie"
        _say(f"  {name:<18} {status}{when}{how}")


def _view(store: LeaseStore, name: str, job_id: str, seen_for: float) -> str:
    """``name``: its age and last progress, from its lease (unguarded: how long it was seen running)."""
    with contextlib.suppress(Exception):
        record = store.record(job_id)
        if record is not None and record.state is LeaseState.RUNNING:
            now = store.server_time()
            progress = f"{now - record.last_progress:.1f}s ago" if record.last_progress else "never"
            return f"{name} age {now - record.started:.1f}s, last progress {progress}"
    return f"{name} age {seen_for:.1f}s, last progress unknown"


def _attempt(store: LeaseStore, job_id: str) -> str:
    with contextlib.suppress(Exception):
        record = store.record(job_id)
        if record is not None and record.state is LeaseState.RUNNING:
            return f" (attempt {record.attempt} on {record.worker})"
    return ""


def _how(framework: Framework, job_id: str, name: str, killed_at: float | None) -> str:
    record = None
    with contextlib.suppress(Exception):
        record = framework.store.record(job_id)
    attempts = f", {record.attempt} attempt(s)" if record is not None else ""
    verdict = framework.verdict(job_id) if framework.status(job_id) == "failed" else ""
    reason = f" — {verdict[:100]}" if verdict else ""
    if name == "worker SIGKILLed" and killed_at is not None:
        reason += f" (worker killed at {killed_at:.1f}s)"
    return attempts + reason
