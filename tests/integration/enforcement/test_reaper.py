"""The reaper process beside a worker: once the worker dies, what its jobs started ends too, is
counted and noted on the jobs' leases; a worker that leaves cleanly leaves them running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.support.leases import start
from tests.support.waiting import wait_until
from zombieguard import Policy
from zombieguard.enforcement.children import OWNER_VARIABLE, marked
from zombieguard.enforcement.reaper import LEAVE
from zombieguard.leases import LeaseStore
from zombieguard.leases.connection import RedisTarget
from zombieguard.ops.stats import counts


@pytest.fixture
def programs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for program in started:
        program.kill()
        program.wait()


def _reaper(
    worker: subprocess.Popen[bytes], owner: str, store: LeaseStore, redis_url: str
) -> subprocess.Popen[bytes]:
    reaper = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zombieguard.enforcement.reaper",
            "--pid",
            str(worker.pid),
            "--owner",
            owner,
            "--grace",
            "0.5",
        ],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )
    assert reaper.stdin is not None
    where = {
        "redis": RedisTarget.from_url(redis_url).to_json(),
        "key_prefix": store.settings.key_prefix,
        "adapter": "test",
        "worker": "w1",
    }
    reaper.stdin.write(json.dumps(where).encode() + b"\n")
    reaper.stdin.flush()
    return reaper


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_when_a_worker_dies_the_reaper_ends_what_its_jobs_started_and_notes_it_on_their_leases(
    store: LeaseStore, redis_url: str, programs: list[subprocess.Popen[bytes]]
) -> None:
    owner = f"{os.getpid()}-reaper-test-{time.monotonic_ns()}"
    start(store, "j1", Policy(lease_ttl=30))
    worker = subprocess.Popen(["sleep", "60"])
    programs.append(worker)
    stubborn = subprocess.Popen(
        ["sh", "-c", "trap '' TERM; sleep 61"], env={**os.environ, OWNER_VARIABLE: marked(owner, "j1")}
    )
    other = subprocess.Popen(["sleep", "62"], env={**os.environ, OWNER_VARIABLE: "someone-else"})
    programs += [stubborn, other]
    reaper = _reaper(worker, owner, store, redis_url)
    time.sleep(0.5)  # the reaper is waiting
    assert _alive(stubborn.pid)
    worker.kill()
    began = time.monotonic()
    wait_until(lambda: not _alive(stubborn.pid), 5, what="the job's program ended")
    assert 0.4 <= time.monotonic() - began < 2.0  # SIGTERM ignored: SIGKILL after the grace
    assert reaper.wait(10) == 0
    assert _alive(other.pid)  # not this worker's
    record = store.record("j1")
    assert record is not None
    shell, sleep = record.ended_processes  # the shell and the program it started, which inherited the mark
    assert shell == f"{stubborn.pid} sh -c trap '' TERM; sleep 61"
    assert sleep.endswith(" sleep 61")
    assert counts(store)[("processes_ended", "test", "", "")] == 2


def test_a_worker_that_leaves_cleanly_leaves_what_its_jobs_started_running(
    store: LeaseStore, redis_url: str, programs: list[subprocess.Popen[bytes]]
) -> None:
    owner = f"{os.getpid()}-reaper-test-{time.monotonic_ns()}"
    worker = subprocess.Popen(["sleep", "60"])
    detached = subprocess.Popen(["sleep", "61"], env={**os.environ, OWNER_VARIABLE: owner})
    programs += [worker, detached]
    reaper = _reaper(worker, owner, store, redis_url)
    assert reaper.stdin is not None
    reaper.stdin.write(LEAVE)
    reaper.stdin.close()
    assert reaper.wait(5) == 0
    worker.kill()
    time.sleep(0.3)
    assert _alive(detached.pid)
