"""Finding and ending the processes a job started, with real processes."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

from zombieguard.enforcement.children import (
    OWNER_VARIABLE,
    JobProcesses,
    ProcessTree,
    job_of,
    marked,
    owned_by,
)


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Programs the test starts; each is killed and reaped at its end."""
    programs: list[subprocess.Popen[bytes]] = []
    yield programs
    for program in programs:
        program.kill()
        program.wait()


def _start(
    programs: list[subprocess.Popen[bytes]], *argv: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    program = subprocess.Popen(list(argv), env=env)
    programs.append(program)
    return program


def _pids(job: JobProcesses) -> set[int]:
    return {p.pid for p in job.find().processes}


def test_a_job_s_processes_are_those_its_process_started_since_it_began_with_their_children(
    started: list[subprocess.Popen[bytes]],
) -> None:
    before = _start(started, "sleep", "60")
    time.sleep(0.1)  # a tick and more: the kernel counts starts in 10 ms ticks
    since = time.monotonic()
    shell = _start(started, "sh", "-c", "sleep 61 & wait")
    grandchild = next(iter(psutil.Process(shell.pid).children()), None) or _wait_child(shell.pid)
    found = _pids(JobProcesses(os.getpid(), since))
    assert found == {shell.pid, grandchild.pid}
    assert before.pid not in found


def _wait_child(pid: int) -> psutil.Process:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        children = psutil.Process(pid).children()
        if children:
            return children[0]
        time.sleep(0.01)
    raise AssertionError(f"{pid} started no child")


def test_on_a_shared_process_a_job_s_processes_are_those_its_own_thread_started(
    started: list[subprocess.Popen[bytes]],
) -> None:
    since = time.monotonic()
    threads: dict[str, int] = {}
    programs: dict[str, int] = {}

    def job(name: str) -> None:
        threads[name] = threading.get_native_id()
        programs[name] = _start(started, "sleep", "60").pid

    for name in ("a", "b"):
        thread = threading.Thread(target=job, args=(name,))
        thread.start()
        thread.join()  # ended: Linux hands its children to another thread of the process
    keeper = threading.Event()
    done = threading.Event()

    def long_job() -> None:
        threads["c"] = threading.get_native_id()
        programs["c"] = _start(started, "sleep", "60").pid
        keeper.set()
        done.wait(10)

    thread = threading.Thread(target=long_job)
    thread.start()
    keeper.wait(5)
    try:
        assert _pids(JobProcesses(os.getpid(), since, thread=threads["c"])) == {programs["c"]}
        assert programs["c"] not in _pids(JobProcesses(os.getpid(), since, thread=threading.get_native_id()))
    finally:
        done.set()
        thread.join()


def test_zombieguard_s_own_processes_are_never_a_job_s(started: list[subprocess.Popen[bytes]]) -> None:
    since = time.monotonic()
    own = _start(started, "sleep", "60")
    job = _start(started, "sleep", "61")
    assert _pids(JobProcesses(os.getpid(), since, exclude=frozenset({own.pid}))) == {job.pid}


def test_a_program_that_daemonized_is_found_by_the_job_mark_it_inherited(
    started: list[subprocess.Popen[bytes]],
) -> None:
    owner = f"test-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, OWNER_VARIABLE: marked(owner, "job-1")}
    out = subprocess.run(
        ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    daemon = psutil.Process(int(out.stdout))
    other = _start(started, "sleep", "61", env={**os.environ, OWNER_VARIABLE: marked(owner, "job-2")})
    time.sleep(0.1)  # the job "began" after both: no tree finds either
    try:
        assert daemon.ppid() != os.getpid()  # no tree leads to it
        assert _pids(JobProcesses(os.getpid(), time.monotonic(), owner=owner, job="job-1")) == {daemon.pid}
        assert {p.pid for p in owned_by(owner).processes} == {daemon.pid, other.pid}
        assert job_of(daemon) == "job-1"
    finally:
        daemon.kill()


def test_ending_sends_sigterm_then_sigkill_to_what_ignores_it_after_the_grace(
    started: list[subprocess.Popen[bytes]],
) -> None:
    since = time.monotonic()
    polite = _start(started, "sleep", "60")
    stubborn = _start(started, "sh", "-c", "trap '' TERM; sleep 60 & wait")
    _wait_child(stubborn.pid)
    found = JobProcesses(os.getpid(), since).find()
    assert any(str(polite.pid) in d and "sleep 60" in d for d in found.described)
    began = time.monotonic()
    ending = found.end(0.5)
    polite.wait(2)
    assert time.monotonic() - began < 0.3
    assert ending.wait(5)
    assert stubborn.wait(2) == -9
    assert time.monotonic() - began >= 0.5


def test_the_count_of_a_job_s_processes_leaves_out_those_that_exited(
    started: list[subprocess.Popen[bytes]],
) -> None:
    since = time.monotonic()
    running = _start(started, "sleep", "60")
    exited = _start(started, "true")
    deadline = time.monotonic() + 5
    while psutil.Process(exited.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    job = JobProcesses(os.getpid(), since)
    assert job.count(ProcessTree.now()) == 1
    assert running.pid in _pids(job)


def test_processes_being_ended_are_not_found_again_by_a_later_stop(
    started: list[subprocess.Popen[bytes]],
) -> None:
    since = time.monotonic()
    stubborn = _start(started, "sh", "-c", "trap '' TERM; sleep 60 & wait")
    _wait_child(stubborn.pid)
    job = JobProcesses(os.getpid(), since)
    first = job.find()
    assert stubborn.pid in {p.pid for p in first.processes}
    ending = first.end(1.0)
    assert job.find().processes == []  # an escalation would find them again: they are underway
    assert ending.wait(5)
    assert stubborn.wait(2) == -9
