"""The faults a chaos run injects, from a seeded generator, at a bounded rate, in a thread of its own.

- ``worker-kill``: SIGKILL of a whole worker (its process tree: a crash, an OOM kill of the cgroup);
- ``child-kill``: SIGKILL of one process that runs jobs (an RQ horse, a Celery prefork pool process);
- ``worker-freeze``: SIGSTOP of a whole worker for 6-10 s, then SIGCONT (a paused VM, a long GC);
- ``client-kill``: ``CLIENT KILL TYPE normal`` on the run's Redis (a network blip);
- ``redis-restart``: ``SHUTDOWN`` (the append-only file keeps the data) and a start on the same port;
- ``sentinel-failover``: ``SENTINEL FAILOVER`` of the leases' Redis, in a run that keeps its leases
  on a Sentinel deployment of its own (the former primary stays up until Sentinel demotes it).

Timing depends on the machine, so a seed replays the same workload and the same sequence of fault
choices, not the same interleaving.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from tests.chaos.workers import EventLog, WorkerPool, WorkerProcess, job_children, signal_tree
from tests.support.sentinel import SentinelDeployment
from zombieguard.demo.embedded import EmbeddedRedis

FAULT_CLASSES = ("worker-kill", "child-kill", "worker-freeze", "client-kill", "redis-restart")
SENTINEL_FAILOVER = "sentinel-failover"
"""Injected only in a run whose leases live on a Sentinel deployment (``RunConfig.sentinel``)."""
WEIGHTS = {
    "worker-kill": 3,
    "child-kill": 3,
    "worker-freeze": 3,
    "client-kill": 2,
    "redis-restart": 2,
    SENTINEL_FAILOVER: 2,
}
"""Relative frequency of each class (processes are the usual victims; Redis less often)."""
GAP = (2.0, 4.0)
"""Seconds between two faults (uniform)."""
FREEZE = (6.0, 10.0)
"""Seconds a frozen worker stays frozen (uniform): always past lease_ttl."""
FIRST_FAULT_AFTER = 1.0


@dataclass(frozen=True)
class Fault:
    """One injected fault."""

    at: float
    """Seconds since the run's clock started."""
    wall: float
    cls: str
    target: str
    detail: str = ""


class PrivateRedis:
    """The run's own ``redis-server`` (append-only file on), which a fault may restart."""

    def __init__(self) -> None:
        self.server = EmbeddedRedis(persistent=True)
        self.lock = threading.Lock()
        """Held by a Redis fault, and by the runner's own writes (sending jobs): a fault never cuts
        the runner's own command in half, which would make the runner, not the product, send a job
        twice."""

    @property
    def url(self) -> str:
        """Its URL (database 0)."""
        return self.server.url

    def start(self) -> PrivateRedis:
        """Start it and wait until it answers."""
        self.server.start()
        return self

    def restart(self) -> float:
        """SHUTDOWN (writing the append-only file), start again on the same port; the seconds it was down."""
        client = redis.Redis.from_url(self.url, socket_timeout=5)
        began = time.monotonic()
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown()  # the server closes the connection as it exits
        client.close()
        self.server.stop()  # reaps the exited process (it was told to stop already)
        self.server.start()
        return time.monotonic() - began

    def close(self) -> None:
        """Stop it and delete its files."""
        self.server.close()


class FaultInjector:
    """Injects faults in a background thread until :meth:`stop`; freezes end by themselves."""

    def __init__(
        self,
        rng: random.Random,
        pool: WorkerPool,
        server: PrivateRedis,
        events: EventLog,
        *,
        until: float,
        classes: Sequence[str] = FAULT_CLASSES,
        max_faults: int | None = None,
        leases: SentinelDeployment | None = None,
    ) -> None:
        self.rng = rng
        self.pool = pool
        self.server = server
        self.events = events
        self.until = until
        """The run's clock time at which faults stop."""
        self.leases = leases
        """The leases' Sentinel deployment, which ``sentinel-failover`` fails over."""
        self.classes = [c for c in (*FAULT_CLASSES, SENTINEL_FAILOVER) if c in classes]
        self.max_faults = max_faults if max_faults is not None else int(until / GAP[0])
        self.faults: list[Fault] = []
        self.frozen: list[tuple[float, WorkerProcess]] = []
        """(thaw time on the run's clock, worker) of frozen workers."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start injecting (a background thread)."""
        self._thread = threading.Thread(target=self._run, name="chaos-faults", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Wait until the fault period is over."""
        if self._thread is not None:
            self._thread.join()

    def stop(self) -> None:
        """Stop injecting, and wake every frozen worker."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        for _, worker in self.frozen:
            self._thaw(worker)
        self.frozen.clear()

    def _run(self) -> None:
        next_at = FIRST_FAULT_AFTER
        while not self._stop.wait(0.05):
            now = self.events.elapsed()
            for thaw_at, worker in list(self.frozen):
                if now >= thaw_at:
                    self.frozen.remove((thaw_at, worker))
                    self._thaw(worker)
            if now >= self.until:
                return
            if now >= next_at and len(self.faults) < self.max_faults and self.classes:
                self._inject()
                next_at = self.events.elapsed() + self.rng.uniform(*GAP)

    def _log(self, cls: str, target: str, detail: str = "") -> None:
        fault = Fault(self.events.elapsed(), time.time(), cls, target, detail)
        self.faults.append(fault)
        self.events.add(f"FAULT {cls} {target} {detail}".rstrip())

    def _inject(self) -> None:
        # The class is drawn first, then its target: a class with no target now (no worker runs a
        # job in a child) falls back to the next class in the seeded order.
        remaining = list(self.classes)
        while remaining:
            cls = self.rng.choices(remaining, weights=[WEIGHTS[c] for c in remaining])[0]
            remaining.remove(cls)
            try:
                if getattr(self, "_" + cls.replace("-", "_"))():
                    return
            except Exception as exc:  # the runner must survive its own faults' surprises
                self.events.add(f"fault {cls} could not be injected: {exc!r}")

    def _unfrozen(self) -> list[WorkerProcess]:
        frozen = {w.name for _, w in self.frozen}
        return [w for w in self.pool.live() if w.name not in frozen]

    def _worker_kill(self) -> bool:
        with self.pool.lock:
            candidates = self.pool.live()
            if not candidates:
                return False
            worker = self.rng.choice(candidates)
            reached = signal_tree(worker, signal.SIGKILL)
        self._log("worker-kill", worker.name, f"pids {reached}")
        return True

    def _child_kill(self) -> bool:
        with self.pool.lock:
            candidates = [(w, job_children(w)) for w in self._unfrozen()]
            candidates = [(w, kids) for w, kids in candidates if kids]
            if not candidates:
                return False
            worker, kids = self.rng.choice(candidates)
            child = self.rng.choice(sorted(kids))
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        self._log("child-kill", worker.name, f"pid {child}")
        return True

    def _worker_freeze(self) -> bool:
        with self.pool.lock:
            candidates = self._unfrozen()
            # One worker is always left awake: its sweeper recovers the others' jobs, and the run
            # drains within its bound.
            if len(candidates) < 2:
                return False
            worker = self.rng.choice(candidates)
            seconds = self.rng.uniform(*FREEZE)
            worker.pids_frozen = signal_tree(worker, signal.SIGSTOP)
        self.frozen.append((self.events.elapsed() + seconds, worker))
        self._log("worker-freeze", worker.name, f"{seconds:.1f} s, pids {worker.pids_frozen}")
        return True

    def _thaw(self, worker: WorkerProcess) -> None:
        signal_tree(worker, signal.SIGCONT)
        for pid in worker.pids_frozen:  # a horse whose parent died meanwhile is no longer below it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGCONT)
        self.events.add(f"thawed {worker.name}")

    def _client_kill(self) -> bool:
        with self.server.lock:
            client = redis.Redis.from_url(self.server.url, socket_timeout=5)
            try:
                killed = client.client_kill_filter(_type="normal", skipme=True)
            finally:
                client.close()
        self._log("client-kill", "redis", f"{killed} clients")
        return True

    def _sentinel_failover(self) -> bool:
        # Sentinel fails a service over again only once the former primary is a replica in sync.
        if self.leases is None or not self.leases.ready_for_failover():
            return False
        old, new = self.leases.failover_started()
        self._log(SENTINEL_FAILOVER, "leases", f"primary {old} -> {new}")
        return True

    def _redis_restart(self) -> bool:
        with self.server.lock:
            down = self.server.restart()
        self._log("redis-restart", "redis", f"down {down:.2f} s")
        return True
