"""The chaos run's worker processes: started each in a session of its own, logged to a file, and
restarted by a supervisor when they die (as systemd's ``Restart=always`` would)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.history import Death
from tests.support.harness import REPO, children

CELERY_BIN = str(Path(sys.executable).with_name("celery"))

RQ_CLASSES = {
    "GuardedWorker": ("zombieguard.integrations.rq.GuardedWorker", "rq.Worker"),
    "GuardedSimpleWorker": ("zombieguard.integrations.rq.GuardedSimpleWorker", "rq.SimpleWorker"),
    "Worker": ("zombieguard.integrations.rq.GuardedWorker", "rq.Worker"),
    "SimpleWorker": ("zombieguard.integrations.rq.GuardedSimpleWorker", "rq.SimpleWorker"),
}
"""A ``--workers`` entry -> (the guarded class, the plain class it stands for): a plain run runs
the plain class of the same entry, so that both runs have the same kinds of workers."""

CELERY_POOLS = ("prefork", "threads", "solo")
SUPERVISE_EVERY = 0.2
"""How often the supervisor looks for dead workers (seconds)."""


class EventLog:
    """Timestamped lines of what the run did (faults, restarts), printed as they happen."""

    def __init__(self, t0: float, echo: bool = True) -> None:
        self.t0 = t0
        self.echo = echo
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def elapsed(self) -> float:
        """Seconds since the run's clock started."""
        return time.monotonic() - self.t0

    def add(self, what: str) -> None:
        """Record (and print) one line, stamped with the run's clock and the wall clock."""
        line = f"[{self.elapsed():7.2f}s {time.strftime('%H:%M:%S')}] {what}"
        with self._lock:
            self.lines.append(line)
        if self.echo:
            print(line, flush=True)


@dataclass
class WorkerProcess:
    """One worker process (one generation of one slot)."""

    slot: int
    spec: str
    """The RQ worker class or Celery pool."""
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    pids_frozen: list[int] = field(default_factory=list)
    """The processes a freeze stopped, for the thaw."""

    @property
    def pid(self) -> int:
        """The worker's main process (its process group too)."""
        return self.process.pid

    def alive(self) -> bool:
        """Whether the main process has not exited."""
        return self.process.poll() is None


def cmdline(pid: int) -> str:
    """A process's command line ('' when it is gone)."""
    with contextlib.suppress(OSError):
        return (
            (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    return ""


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc), parents before their children."""
    out: list[int] = []
    frontier = [pid]
    while frontier:
        below = [c for p in frontier for c in children(p)]
        out += below
        frontier = below
    return out


def job_children(worker: WorkerProcess) -> list[int]:
    """The worker's children that run jobs: an RQ horse, Celery prefork pool processes (not the
    watchdog process zombieguard starts beside a worker whose jobs run in its main thread)."""
    return [c for c in children(worker.pid) if "zombieguard.enforcement.watchdog_process" not in cmdline(c)]


def signal_tree(worker: WorkerProcess, signum: int) -> list[int]:
    """Send ``signum`` to the worker's whole process tree; return the pids it reached.

    The process group first (the main process, Celery's pool processes, a watchdog process), so that
    a stopped main process forks nothing more; then every descendant, because an RQ horse runs in a
    process group of its own.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(worker.pid, signum)
    reached = [worker.pid]
    for pid in descendants(worker.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
            reached.append(pid)
    return reached


class WorkerPool:
    """The run's workers, one per slot, and the supervisor that restarts them."""

    def __init__(
        self,
        specs: Sequence[str],
        *,
        command: Callable[[str, str], list[str]],
        env: dict[str, str],
        logs: Path,
        events: EventLog,
        ready: Callable[[WorkerProcess], bool],
    ) -> None:
        self.specs = list(specs)
        self.command = command
        """(spec, name) -> the worker's command line."""
        self.env = env
        self.logs = logs
        self.events = events
        self.ready = ready
        self.current: list[WorkerProcess | None] = [None] * len(self.specs)
        self.every: list[WorkerProcess] = []
        """Every worker process started, in order."""
        self.deaths: list[Death] = []
        """The workers the supervisor found killed (SIGKILL), in run time."""
        self.lock = threading.Lock()
        """Held while a slot's worker is replaced (the fault injector reads the slots)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, slot: int) -> WorkerProcess:
        """Start the slot's worker (a new generation)."""
        spec = self.specs[slot]
        name = f"w{slot}-{spec.rsplit('.', 1)[-1]}-{uuid.uuid4().hex[:6]}"
        log = self.logs / f"{name}.log"
        process = subprocess.Popen(
            self.command(spec, name),
            env=self.env,
            cwd=REPO,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a fault can freeze or kill it whole
        )
        worker = WorkerProcess(slot, spec, name, process, log)
        self.current[slot] = worker
        self.every.append(worker)
        return worker

    def start_all(self, timeout: float) -> None:
        """Start every slot's worker and wait until all are ready; RuntimeError naming a worker that
        exited or was not ready in time."""
        for slot in range(len(self.specs)):
            self.start(slot)
        deadline = time.monotonic() + timeout
        for worker in self.live():
            while not self.ready(worker):
                if not worker.alive():
                    raise RuntimeError(
                        f"worker {worker.name} exited at start:\n{worker.log.read_text()[-3000:]}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker {worker.name} not ready within {timeout} s")
                time.sleep(0.1)

    def live(self) -> list[WorkerProcess]:
        """The workers whose main process runs (frozen ones included)."""
        return [w for w in self.current if w is not None and w.alive()]

    def _supervise(self) -> None:
        while not self._stop.wait(SUPERVISE_EVERY):
            for slot, worker in enumerate(self.current):
                if worker is None or worker.alive():
                    continue
                if worker.process.returncode == -signal.SIGKILL:
                    self.deaths.append(Death(worker.name, self.events.elapsed()))
                with self.lock:
                    # Its surviving processes (a watchdog process, an orphaned horse) go with it, as
                    # a service manager stops a unit's whole control group.
                    signal_tree(worker, signal.SIGKILL)
                    new = self.start(slot)
                self.events.add(
                    f"supervisor: {worker.name} exited ({worker.process.returncode}); started {new.name}"
                )

    def supervise(self) -> None:
        """Restart dead workers from now on (a background thread)."""
        self._thread = threading.Thread(target=self._supervise, name="chaos-supervisor", daemon=True)
        self._thread.start()

    def stop_supervising(self) -> None:
        """No more restarts."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def kill_all(self) -> None:
        """SIGKILL every worker's whole tree, and reap them. Every tree is stopped first, so that no
        worker takes up what another one's death hands back to the broker."""
        self.stop_supervising()
        # A reaped worker's pid may be another process's now: only its group is signalled (the
        # group lives on, and keeps the pid, while anything it left there runs).
        live = [worker for worker in self.every if worker.process.poll() is None]
        reaped = [worker for worker in self.every if worker.process.returncode is not None]
        stopped = [(worker, signal_tree(worker, signal.SIGSTOP)) for worker in live]
        for worker, pids in stopped:  # a stopped process forks nothing: these are all there is
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            signal_tree(worker, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(5)
        for worker in reaped:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(worker.pid, signal.SIGKILL)


def rq_command(plain: bool, redis_url: str, queue: str) -> Callable[[str, str], list[str]]:
    """How an RQ worker of a ``--workers`` entry is started."""

    def command(spec: str, name: str) -> list[str]:
        guarded, unguarded = RQ_CLASSES[spec]
        cls = unguarded if plain else guarded
        return [
            sys.executable,
            "-m",
            "tests.chaos.rq_worker",
            "-w",
            cls,
            "--url",
            redis_url,
            "--name",
            name,
            queue,
        ]

    return command


def celery_command(queue: str) -> Callable[[str, str], list[str]]:
    """How a Celery worker of a ``--pools`` entry is started (concurrency 2, solo 1)."""

    def command(pool: str, name: str) -> list[str]:
        return [
            CELERY_BIN,
            "-A",
            "tests.chaos.celery_app",
            "worker",
            "-P",
            pool,
            "-c",
            "1" if pool == "solo" else "2",
            "-Q",
            queue,
            "-n",
            f"{name}@chaos",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "info",
        ]

    return command
