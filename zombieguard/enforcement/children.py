"""The processes a job started: found when zombieguard ends the job, and ended with it.

A job's processes are the descendants of the process that runs it which were started while it ran
(:class:`JobProcesses`): an RQ horse's, a Celery prefork pool process's or a solo worker's since the
job began; on the threads pool, those of the job's own thread (Linux keeps, for each thread, the
children it started: ``/proc/<pid>/task/<tid>/children``, which psutil does not read). They are
sent SIGTERM, and SIGKILL after the policy's ``kill_children_grace`` (:meth:`Found.end`).

Processes whose parent died first are no one's descendants any more. To find those, every guarded
worker sets :data:`OWNER_VARIABLE` in its environment, and a process that runs one job at a time
adds the job's id while it runs (:func:`marked`); the processes a job starts inherit it (unless
started with an environment of their own), through a double fork or ``setsid`` too. A job's stop
ends those of its mark as well, and the reaper process beside the worker
(:mod:`zombieguard.enforcement.reaper`) ends every process that carries the worker's once the worker
is gone (:func:`owned_by`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import psutil

OWNER_VARIABLE = "_ZOMBIEGUARD_OWNER"
"""The environment variable naming the guarded worker whose jobs started a process."""
CREATED_TOLERANCE = 0.05
"""Seconds by which a process may seem to start before its job did: the kernel counts a process's
start in clock ticks (10 ms), rounded down."""
POLL_SECONDS = 0.02
"""How often processes being ended are looked at, until they are gone or the grace has passed."""


def describe(process: psutil.Process) -> str:
    """The process as events and records name it: "pid command" (its name when the command line is
    unreadable)."""
    command = ""
    with contextlib.suppress(psutil.Error):
        command = " ".join(process.cmdline())
        if not command:
            command = process.name()
    return f"{process.pid} {command[:200] or '?'}"


def started_clock(monotonic: float) -> float:
    """A ``time.monotonic()`` value in psutil's ``create_time()`` terms. On Linux both count from
    the boot (psutil adds the boot time, in whole seconds, to a process's start in clock ticks), so
    the two agree to a tick whatever the wall clock does."""
    ago = time.monotonic() - monotonic
    if sys.platform.startswith("linux"):
        return psutil.boot_time() + time.clock_gettime(time.CLOCK_BOOTTIME) - ago
    return time.time() - ago


@dataclass(frozen=True)
class JobProcesses:
    """Where the processes of one running job are: under ``pid`` (the process that runs it),
    started since ``since`` (``time.monotonic()``), by the thread ``thread`` (native id; None: by
    any thread of ``pid``), never one of ``exclude`` (zombieguard's own processes)."""

    pid: int
    since: float
    thread: int | None = None
    exclude: frozenset[int] = frozenset()
    owner: str = ""
    """The worker's value of :data:`OWNER_VARIABLE`."""
    job: str = ""
    """The job's id: where it runs alone in its process, what it started carries it (:func:`marked`)."""

    def find(self) -> Found:
        """The job's processes alive now: each subtree below a child of its process (or thread)
        started since the job began, and, where the job runs alone in its process, every process
        that inherited the job's :func:`marked` environment (one that daemonized: no tree leads to
        it). Not those being ended already (an escalation finds them again)."""
        found = self._under(ProcessTree.now())
        if self.owner and self.job and self.thread is None:
            known = {p.pid for p in found}
            known |= {self.pid, *self.exclude}  # the job's own process carries its mark too
            found += [p for p in owned_by(self.owner, self.job).processes if p.pid not in known]
        return Found([p for p in found if p not in Ending.underway()])

    def count(self, tree: ProcessTree) -> int:
        """How many processes run under the job (as :meth:`find` finds them; zombies not counted)."""
        return sum(1 for p in self._under(tree) if p.info.get("status") != psutil.STATUS_ZOMBIE)

    def _under(self, tree: ProcessTree) -> list[psutil.Process]:
        since = started_clock(self.since) - CREATED_TOLERANCE
        found: list[psutil.Process] = []
        for top in self._tops(tree):
            if top.pid not in self.exclude and top.info.get("create_time", 0.0) >= since:
                found.append(top)
                found.extend(tree.below(top.pid))
        return found

    def _tops(self, tree: ProcessTree) -> list[psutil.Process]:
        if self.thread is None:
            return tree.children(self.pid)
        try:
            with open(f"/proc/{self.pid}/task/{self.thread}/children") as f:
                pids = {int(word) for word in f.read().split()}
        except OSError:  # not Linux, or the thread ended: its children are no longer its own
            return []
        return [p for p in tree.children(self.pid) if p.pid in pids]


class ProcessTree:
    """One reading of every process's parent, start and state (one pass over the system's
    processes, however many jobs are looked at)."""

    def __init__(self, processes: Iterable[psutil.Process]) -> None:
        self._children: dict[int, list[psutil.Process]] = {}
        for process in processes:
            self._children.setdefault(process.info.get("ppid") or 0, []).append(process)

    @classmethod
    def now(cls) -> ProcessTree:
        """The processes as they are now."""
        return cls(psutil.process_iter(["ppid", "create_time", "status"]))

    def children(self, pid: int) -> list[psutil.Process]:
        """The children of ``pid``."""
        return list(self._children.get(pid, ()))

    def below(self, pid: int) -> list[psutil.Process]:
        """Every descendant of ``pid``."""
        out: list[psutil.Process] = []
        todo = [pid]
        while todo:
            for child in self._children.get(todo.pop(), ()):
                out.append(child)
                todo.append(child.pid)
        return out


class Found:
    """Processes found to end (described now: once ended, their command lines are gone)."""

    def __init__(self, processes: Sequence[psutil.Process]) -> None:
        self.processes = list(processes)
        self.described = tuple(describe(p) for p in processes)
        """Each as "pid command", for events and records."""

    def __bool__(self) -> bool:
        return bool(self.processes)

    def end(self, grace: float) -> Ending:
        """Send them SIGTERM now, and SIGKILL to those still alive ``grace`` seconds later."""
        return Ending(self.processes, grace)


class Ending:
    """Processes being ended: SIGTERM sent, SIGKILL to follow after the grace (in a thread)."""

    _underway: set[psutil.Process] = set()  # noqa: RUF012 - this process's, shared on purpose
    _lock = threading.Lock()

    def __init__(self, processes: Sequence[psutil.Process], grace: float) -> None:
        self._targets = list(processes)
        self._grace = grace
        self._done = threading.Event()
        with Ending._lock:
            Ending._underway.update(self._targets)
        for process in self._targets:
            with contextlib.suppress(psutil.Error):
                process.terminate()
        if self._targets:
            threading.Thread(target=self._finish, name="zombieguard-end-children", daemon=True).start()
        else:
            self._done.set()

    @classmethod
    def underway(cls) -> set[psutil.Process]:
        """The processes being ended in this process now (psutil's processes compare by pid and
        start: a pid used again is another process)."""
        with cls._lock:
            return set(cls._underway)

    def _finish(self) -> None:
        try:
            alive = _wait_gone(self._targets, self._grace)
            for process in alive:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            _wait_gone(alive, 1.0)
        finally:
            with Ending._lock:
                Ending._underway.difference_update(self._targets)
            self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until each process is gone or was sent SIGKILL; False if ``timeout`` passed first."""
        return self._done.wait(timeout)


def _wait_gone(processes: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Poll until every process exited (or is a zombie, waiting for its parent); the others.

    Never ``wait()``: for a child of this process that would reap it under the job's own
    ``Popen.wait()``."""
    deadline = time.monotonic() + timeout
    alive = list(processes)
    while alive:
        alive = [p for p in alive if _running(p)]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(POLL_SECONDS)
    return alive


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def owned_by(owner: str, job: str = "") -> Found:
    """Every process whose environment says it was started by the jobs of worker ``owner`` (see
    :data:`OWNER_VARIABLE`); with ``job``, by that job only. Processes of other users are not
    readable, and skipped."""
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error, OSError):
            value = process.environ().get(OWNER_VARIABLE, "")
            of, _, of_job = value.partition("/")
            if of == owner and (not job or of_job == job):
                found.append(process)
    return Found(found)


def job_of(process: psutil.Process) -> str:
    """The job whose run started ``process``, as its environment says (empty when it does not)."""
    with contextlib.suppress(psutil.Error, OSError):
        return str(process.environ().get(OWNER_VARIABLE, "")).partition("/")[2]
    return ""


def marked(owner: str, job: str) -> str:
    """The value of :data:`OWNER_VARIABLE` while job ``job`` of worker ``owner`` runs, in a process
    that runs one job at a time: what the job starts can be told from what other jobs started."""
    return f"{owner}/{job}"


def new_owner() -> str:
    """A value for :data:`OWNER_VARIABLE` no other worker has."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:16]}"


def without_owner(environment: Mapping[str, str]) -> dict[str, str]:
    """``environment`` without :data:`OWNER_VARIABLE`: for zombieguard's own processes."""
    return {k: v for k, v in environment.items() if k != OWNER_VARIABLE}
