"""``zombieguard demo``: the seed incident, live, plain and guarded side by side.

Two workers serve a stream of normal jobs while four zombies arrive: a job hung on a socket that
never answers, one stuck in C code holding the GIL, one whose worker is SIGKILLed mid-job, and a
poison pill that kills every process that runs it. On each framework the demo runs the same jobs
twice, on plain workers (watched for a fixed time) and then on guarded ones (until every job has
ended), and prints a table: each zombie, what the plain workers made of it and what zombieguard
did, every cell measured in that run; then what each zombie was, and a summary (``--unguarded``:
the plain run only). It runs with RQ, then with Celery, each that is installed (``--only`` picks
one), on a throwaway Redis unless one is named (``--redis-url`` or ``ZOMBIEGUARD_REDIS_URL``), and
then keeps to keys of its own.

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
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

import zombieguard
from zombieguard.demo import table
from zombieguard.demo.embedded import EmbeddedRedis
from zombieguard.demo.story import JobSeen, RunSeen, legend, side_by_side, summary
from zombieguard.errors import IntegrationNotAvailable
from zombieguard.leases import LeaseStore
from zombieguard.policy import Settings

HARD_TIMEOUT = 4.0
LEASE_TTL = 3.0
MAX_STALLS = 2
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
        """Why a failed job failed, in one line: the exception's class name (without its module),
        then its message."""
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
        line = str(next((line for line in lines if line.startswith("zombieguard.")), lines[-1]))
        name, _, message = line.partition(": ")
        return f"{name.rsplit('.', 1)[-1]}: {message}" if message else name.rsplit(".", 1)[-1]

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
    """Run the demo with each framework installed (or ``only`` one): its plain run, then (unless
    ``unguarded``) its guarded run, then a table of both; return the exit code."""
    frameworks = _frameworks(only)
    named = redis_url or os.environ.get("ZOMBIEGUARD_REDIS_URL")
    guards = (False,) if unguarded else (False, True)
    with _redis(named) as url:
        where = f"your Redis {url}" if named else "a throwaway Redis"
        which = (
            "plain workers only"
            if unguarded
            else f"first plain workers, then guarded by zombieguard (hard_timeout {HARD_TIMEOUT:g} s, "
            f"lease_ttl {LEASE_TTL:g} s, max_stalls {MAX_STALLS})"
        )
        intro = (
            f"zombieguard demo on {where}. On each framework, two workers run {NORMAL_JOBS} normal jobs "
            f"while four zombies arrive: {which}. Times are in seconds since the jobs were sent."
        )
        for line in textwrap.wrap(intro, table.WIDTH - 10):
            _say(line)
        every: list[RunSeen] = []
        for framework in frameworks:
            _say("")
            runs = [_run(framework, url, not guarded) for guarded in guards]
            every += runs
            _say("")
            for line in side_by_side(runs):
                _say(line)
        _say("")
        for line in legend(every[0].zombies):
            _say(line)
        _say("")
        for line in summary(every):
            _say(line)
    return 0


def _run(kind: type[Framework], url: str, unguarded: bool) -> RunSeen:
    client = redis.Redis.from_url(url)
    tag = uuid.uuid4().hex[:8]
    prefix = f"zgdemo-{tag}"
    store = LeaseStore(client, Settings(key_prefix=prefix))
    framework = kind(client, url, store, tag, unguarded)
    if unguarded:
        _say(f"{framework.plain}: two workers, watched for {UNGUARDED_WAIT:g} s ...")
    else:
        _say(
            f"{framework.guarded}: two workers, watched until every job has ended "
            f"(at most {GUARDED_WAIT:g} s) ..."
        )
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
        "ZOMBIEGUARD_MAX_STALLS": str(MAX_STALLS),
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
        return _watch(framework, workers, port=hole.port)
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


def _watch(framework: Framework, workers: dict[str, subprocess.Popen[bytes]], *, port: int) -> RunSeen:
    """Send the jobs, kill the worker running 'worker SIGKILLed' once it runs, and look at every job
    four times a second until all have ended (guarded) or the plain run's time is up."""
    t0 = time.monotonic()
    zombies = {
        "worker SIGKILLed": framework.submit("long_export", 3.0),
        "hung on a socket": framework.submit("fetch_report", port),
        "stuck in C code": framework.submit("crunch"),
        "poison pill": framework.submit("poison"),
    }
    normals = [framework.submit("normal", i) for i in range(NORMAL_JOBS)]
    run = RunSeen(
        framework=framework.title,
        guarded=not framework.unguarded,
        elapsed=0.0,
        normal_total=len(normals),
        zombies={name: JobSeen() for name in zombies},
    )
    wait = UNGUARDED_WAIT if framework.unguarded else GUARDED_WAIT
    killed = run.zombies["worker SIGKILLed"]
    while True:
        now = run.elapsed = time.monotonic() - t0
        for name, job_id in zombies.items():
            job = run.zombies[name]
            job.status = framework.status(job_id)
            if job.status == "started" and job.started is None:
                job.started = now
            if job.status in ("finished", "failed") and job.ended is None:
                job.ended = now
        if killed.worker_killed is None and killed.status == "started" and now > 1.0:
            victim = workers.get(framework.running_on(zombies["worker SIGKILLed"]) or "")
            if victim is not None:
                os.killpg(victim.pid, signal.SIGKILL)
                killed.worker_killed = now
        normal = [framework.status(job_id) for job_id in normals]
        run.normal_finished = normal.count("finished")
        run.normal_queued = normal.count("queued")
        if run.normal_finished == len(normals) and run.normal_done is None:
            run.normal_done = now
        ended = all(job.ended is not None for job in run.zombies.values())
        if (run.normal_done is not None and ended) or now >= wait:
            break
        time.sleep(0.25)
    for name, job_id in zombies.items():
        _explain(framework, job_id, run.zombies[name])
    return run


def _explain(framework: Framework, job_id: str, job: JobSeen) -> None:
    """Add to an ended job its exception, and (guarded) its attempt and how long that attempt ran."""
    if job.status == "failed":
        job.error = framework.verdict(job_id)
    if job.ended is None:
        return
    record = None
    with contextlib.suppress(Exception):
        record = framework.store.record(job_id)
    if record is None:
        if job.started is not None:
            job.ran = job.ended - job.started
        return
    job.attempt = record.attempt
    last = next((entry for entry in record.history if entry.attempt == record.attempt), None)
    if last is not None and last.started is not None and last.ended is not None:
        job.ran = last.ended - last.started
