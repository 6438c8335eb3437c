"""The reaper process beside every guarded worker: when the worker dies, it ends the processes the
worker's jobs started.

A worker killed whole (SIGKILL, the OOM killer) leaves the programs its jobs started running,
re-parented to init, where no tree leads to them. They carry the worker's
:data:`~zombieguard.enforcement.children.OWNER_VARIABLE` in their environment: once the worker's
process is gone, this process sends each of them SIGTERM, and SIGKILL ``--grace`` seconds later,
counts them in Redis (``zombieguard_child_processes_ended_total``), then exits. A worker that leaves
cleanly writes ``leave`` to this process's standard input first: then nothing is ended (a healthy
job's detached programs go on).

Run by every guarded worker: ``python -m zombieguard.enforcement.reaper --pid ... --owner ...``.
It loads no framework.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import sys
import time
from collections.abc import Sequence

import psutil
import redis

from zombieguard.enforcement.children import Found, job_of, owned_by
from zombieguard.leases import LeaseStore
from zombieguard.leases.connection import RedisTarget
from zombieguard.ops.stats import add_ended_processes
from zombieguard.policy import Settings

log = logging.getLogger("zombieguard.enforcement.reaper")

LEAVE = b"leave\n"
"""What a worker that leaves cleanly writes to the reaper's standard input."""
POLL_SECONDS = 0.1
"""Where the worker's exit cannot be waited for (no pidfd), how often it is looked at."""


def wait_for(pid: int, leaving: int) -> bool:
    """Block until process ``pid`` exits (True) or the worker says it is leaving on the file
    descriptor ``leaving`` (False)."""
    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    pidfd = _pidfd(pid)
    watched = [leaving] if pidfd is None else [leaving, pidfd]
    heard = b""
    try:
        while True:
            timeout = None if pidfd is not None else POLL_SECONDS
            ready, _, _ = select.select(watched, [], [], timeout)
            if leaving in ready:
                chunk = os.read(leaving, 64)
                heard += chunk
                if LEAVE in heard:
                    return False
                if not chunk:  # the worker's end of the pipe closed without a word: watch its pid only
                    watched.remove(leaving)
            if pidfd is not None and pidfd in ready:
                return True
            if pidfd is None and not process.is_running():
                return True
            if not watched:
                time.sleep(POLL_SECONDS)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _pidfd(pid: int) -> int | None:
    """A file descriptor readable once ``pid`` exits (Linux 5.3+), or None."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd: int = opener(pid)
    except OSError:
        return None
    return fd


def read_line(fd: int) -> bytes:
    """The first line written to ``fd`` (empty when it closes first)."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            return b""
        line += chunk
    return line


def reap(pid: int, owner: str, grace: float, leaving: int) -> list[str]:
    """Wait for the worker ``pid`` to die, then end what its jobs started (the processes ended)
    and count them where the worker's first line on ``leaving`` says (a JSON object: ``redis``, a
    :class:`~zombieguard.leases.connection.RedisTarget` as JSON, ``key_prefix``, ``adapter``;
    through a pipe, as its password must not show in argv)."""
    try:
        where = json.loads(read_line(leaving) or b"{}")
    except ValueError:
        where = {}
    if not wait_for(pid, leaving):
        return []
    found = owned_by(owner)
    if not found:
        return []
    log.warning(
        "zombieguard: worker process %d died; ending the %d processes its jobs started: %s",
        pid,
        len(found.processes),
        "; ".join(found.described),
    )
    jobs = [job_of(p) for p in found.processes]  # read before they end
    ending = found.end(grace)
    if where.get("redis"):
        try:
            record(where, found, jobs)
        except redis.RedisError as exc:
            log.warning("zombieguard: the processes ended not counted (%s)", exc)
    ending.wait(grace + 5)
    return list(found.described)


def record(where: dict[str, str], found: Found, jobs: list[str]) -> None:
    """Count the processes ended, and note on each job's lease those its run started (``jobs``:
    the job each process says it was started by, if it does: see
    :func:`~zombieguard.enforcement.children.marked`), before any sweeper ends the job's attempt."""
    store = LeaseStore.from_target(
        RedisTarget.from_json(where["redis"]), Settings(key_prefix=where.get("key_prefix", "zombieguard"))
    )
    by_job: dict[str, list[str]] = {}
    for job, described in zip(jobs, found.described, strict=True):
        if job:
            by_job.setdefault(job, []).append(described)
    for job, processes in by_job.items():
        if not store.note_ended_processes(job, None, str(where.get("worker", "")), processes):
            log.info("zombieguard: job %s's lease has moved on; the processes ended not noted on it", job)
    add_ended_processes(store, str(where.get("adapter", "")), len(found.processes))


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (run by the integrations)."""
    parser = argparse.ArgumentParser(prog="python -m zombieguard.enforcement.reaper")
    parser.add_argument("--pid", type=int, required=True, help="the worker process to watch")
    parser.add_argument("--owner", required=True, help="the worker's value of the owner variable")
    parser.add_argument("--grace", type=float, default=1.0, help="seconds from SIGTERM to SIGKILL")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    reap(args.pid, args.owner, args.grace, sys.stdin.fileno())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
