"""What the end-to-end harnesses of both frameworks share: worker processes in their own process
groups, a notes directory the jobs write to, and cleanup of the test's keys."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import redis

from tests.support.waiting import wait_until
from zombieguard.demo.embedded import EmbeddedRedis
from zombieguard.leases import text

REPO = Path(__file__).resolve().parents[2]
ZOMBIEGUARD = str(Path(sys.executable).with_name("zombieguard"))
"""The ``zombieguard`` command of the environment running the tests."""


class WorkerHarness:
    """Worker processes and notes of one test; subclasses start the workers."""

    def __init__(self, redis_url: str, key_prefix: str, workdir: Path) -> None:
        self.redis_url = redis_url
        self.client = redis.Redis.from_url(redis_url)
        self.key_prefix = key_prefix
        self.workdir = workdir
        self.notes = str(workdir / "notes")
        Path(self.notes).mkdir(exist_ok=True)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.worker_names: list[str] = []

    def notes_of(self, name: str) -> list[str]:
        """Lines a job wrote to one of its notes files."""
        path = Path(self.notes) / name
        return path.read_text().splitlines() if path.exists() else []

    def children(self, index: int = 0) -> list[int]:
        """Child processes of a worker (a horse, pool processes, a watchdog process)."""
        return children(self.workers[index].pid)

    def log(self, index: int = 0) -> str:
        """A worker's output so far."""
        return (self.workdir / f"{self.worker_names[index]}.log").read_text(errors="replace")

    def worker_of(self, pid: int) -> subprocess.Popen[bytes]:
        """The worker that is process ``pid`` or its parent (a horse, a pool process)."""
        return next(w for i, w in enumerate(self.workers) if w.pid == pid or pid in self.children(i))

    def wait_present(self, worker: subprocess.Popen[bytes], adapter: str) -> None:
        """Wait until ``worker``'s presence connection is subscribed and announced."""
        name = self.worker_names[self.workers.index(worker)]
        key = "{" + self.key_prefix + "}:presence:" + adapter
        wait_until(lambda: self.client.sismember(key, name), 10, what=f"{name}'s presence connection")

    def restart_redis(self, server: EmbeddedRedis, adapter: str, times: int) -> None:
        """Restart the test's own Redis ``times`` times; after each, wait until every worker's
        presence connection has subscribed and announced itself anew."""
        presence = "{" + self.key_prefix + "}:presence:" + adapter
        for _ in range(times):
            server.stop()
            server.start()
            self.client.srem(presence, *self.worker_names)
            for worker in self.workers:
                self.wait_present(worker, adapter)
        # Past the restart grace (5 s), the watch decides again.
        wait_until(
            lambda: self.client.info("server")["uptime_in_seconds"] >= 7, 15, what="restart grace over"
        )

    def kill_connections(self, kind: str, adapter: str, times: int) -> None:
        """``CLIENT KILL TYPE kind`` (``pubsub``: the presence connections; ``normal``: the others)
        ``times`` times, then long enough for the watch to have taken a worker for dead (several
        looks past ``presence_grace``) had it been going to. Every worker is watched again at the end."""
        presence = "{" + self.key_prefix + "}:presence:" + adapter
        for _ in range(times):
            if kind == "pubsub":  # each worker subscribes and announces itself again
                self.client.srem(presence, *self.worker_names)
            assert self.client.client_kill_filter(_type=kind, skipme=True) >= 1
            if kind == "pubsub":
                for worker in self.workers:
                    self.wait_present(worker, adapter)
            else:
                time.sleep(0.3)
        time.sleep(2)
        assert self.client.scard(presence) == len(self.workers)

    def assert_ran_once(self) -> None:
        """Every worker is alive and the job's body started once (with the workers' logs if not)."""
        logs = "\n".join(self.log(i)[-3000:] for i in range(len(self.workers)))
        assert all(worker.poll() is None for worker in self.workers), logs
        assert len(self.notes_of("started")) == 1, logs

    def wait_for_state(
        self, job_id: str, current: Callable[[], str], wanted: Iterable[str], timeout: float
    ) -> str:
        """Wait until ``current()`` is one of ``wanted``; fail saying what it is, with the diagnosis."""
        wanted = {str(w) for w in wanted}
        try:
            return str(wait_until(lambda: (s := current()) in wanted and s, timeout))
        except AssertionError:
            raise AssertionError(
                f"not within {timeout} s: {job_id} in {wanted} (it is {current()})\n" + self.diagnosis(job_id)
            ) from None

    def lease_state(self, job_id: str) -> str:
        """The state of the job's lease ("" when none is written)."""
        key = "{" + self.key_prefix + "}:lease:" + job_id
        return text(self.client.hget(key, "state") or b"")

    def wait_leased(self, job_id: str, timeout: float = 15) -> None:
        """Wait until the job's lease is written and running (a Celery first delivery writes it
        within its ``lease_delay``; a kill before that is the broker's to handle)."""
        self.wait_for_state(job_id, lambda: self.lease_state(job_id), {"running"}, timeout)

    def diagnosis(self, job_id: str) -> str:
        """What the job's lease and the workers' logs say: for the message of a wait that failed."""
        lease = {
            text(k): text(v)[:200]
            for k, v in self.client.hgetall("{" + self.key_prefix + "}:lease:" + job_id).items()
            if k not in (b"payload", b"history")
        }
        logs = [f"--- {name}, end of log:\n{self.log(i)[-2000:]}" for i, name in enumerate(self.worker_names)]
        return "\n".join([f"lease: {lease}", *logs])

    def kill_workers(self) -> None:
        """SIGKILL every worker's whole process group (woken first, if frozen)."""
        for process in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGCONT)
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)

    def delete_keys(self, *patterns: str) -> None:
        """Delete the keys matching ``patterns`` (the test's own), and the zombieguard keys."""
        keys = [k for p in patterns for k in self.client.scan_iter(match=p, count=1000)]
        keys += list(self.client.scan_iter(match="{" + self.key_prefix + "}*", count=1000))
        for start in range(0, len(keys), 500):
            self.client.delete(*keys[start : start + 500])


def children(pid: int) -> list[int]:
    """Child pids of ``pid`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def unconfigured(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the zombieguard command with no Redis named in the environment."""
    return subprocess.run(
        [ZOMBIEGUARD, *args],
        env={k: v for k, v in os.environ.items() if k != "ZOMBIEGUARD_REDIS_URL"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def thaw(groups: Iterable[int]) -> None:
    """SIGCONT each process group still there: the first group woken (a worker) may have stopped
    another (its horse's) before it is woken in turn."""
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGCONT)
