"""A Redis that may evict the leases is flagged at a worker's start and by ``doctor``; a lease that
vanishes under a running job is reported and written again by its live worker."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from tests.support.harness import ZOMBIEGUARD, WorkerHarness, children
from tests.support.leases import ended
from tests.support.rq_harness import RQHarness, wait_until
from zombieguard.demo.embedded import EmbeddedRedis
from zombieguard.enforcement.slot import JobSlot
from zombieguard.integrations.rq.runtime import DIR_PREFIX
from zombieguard.leases import LeaseStore, Outcome, text
from zombieguard.ops.stats import counts
from zombieguard.policy import Settings
from zombieguard.worker.runtime import LEFT_BY

if TYPE_CHECKING:
    from tests.support.celery_harness import CeleryHarness

pytestmark = pytest.mark.slow


@pytest.fixture
def evicting_redis() -> Iterator[EmbeddedRedis]:
    """A private Redis with a memory limit and a policy that evicts any key."""
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        client.config_set("maxmemory", 512 * 1024 * 1024)
        client.config_set("maxmemory-policy", "allkeys-lru")
        client.close()
        yield server


def _doctor(server: EmbeddedRedis) -> subprocess.CompletedProcess[str]:
    command = [ZOMBIEGUARD, "--redis-url", server.url, "doctor"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_doctor_exits_1_naming_noeviction_when_redis_may_evict_the_leases(
    evicting_redis: EmbeddedRedis,
) -> None:
    result = _doctor(evicting_redis)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "maxmemory-policy allkeys-lru: it may evict leases" in result.stdout
    assert "set maxmemory-policy noeviction" in result.stdout
    redis.Redis.from_url(evicting_redis.url).config_set("maxmemory-policy", "noeviction")
    again = _doctor(evicting_redis)
    assert "eviction" not in again.stdout, again.stdout


def test_an_rq_worker_warns_at_start_when_its_lease_redis_may_evict_the_leases(
    redis_url: str, key_prefix: str, tmp_path: Path, evicting_redis: EmbeddedRedis
) -> None:
    harness = RQHarness(redis_url, key_prefix, tmp_path, env={"ZOMBIEGUARD_REDIS_URL": evicting_redis.url})
    try:
        harness.start_worker("GuardedWorker")
        line = wait_until(
            lambda: [s for s in harness.log().splitlines() if "may evict leases" in s], 10, what="the warning"
        )
        assert "maxmemory-policy allkeys-lru" in line[0]
        assert "Fix: set maxmemory-policy noeviction" in line[0]
    finally:
        harness.close()


def _vanish_and_come_back(store: LeaseStore, job_id: str) -> None:
    """Delete the running job's lease, as an eviction would; its worker writes it again."""
    key = f"{store.prefix}:lease:{job_id}"
    token = text(store.client.hget(key, "token") or b"")
    assert token, "the lease was written"
    store.client.delete(key)
    wait_until(lambda: store.client.exists(key), 10, what="the lease written again")
    assert text(store.client.hget(key, "token") or b"") == token  # the same attempt, same fencing token


def test_a_lease_that_vanishes_under_a_running_rq_job_is_reported_and_written_again(
    rq_harness: RQHarness,
) -> None:
    rq_harness.start_worker("GuardedWorker")
    job = rq_harness.enqueue("sleep_then_return", rq_harness.notes, 3)
    wait_until(lambda: rq_harness.notes_of("started"), 15, what="the job started")
    rq_harness.wait_leased(job.id)
    store = LeaseStore(rq_harness.client, Settings(key_prefix=rq_harness.key_prefix))
    _vanish_and_come_back(store, job.id)
    rq_harness.wait_status(job, ["finished"], 15)
    assert len(rq_harness.notes_of("started")) == 1  # never recovered: its worker was alive
    assert (
        counts(store)[
            ("lease_vanished", "rq", rq_harness.queue_name, "tests.support.rq_jobs.sleep_then_return")
        ]
        == 1
    )
    assert "its lease was missing from Redis while this worker renewed it" in rq_harness.log()


def _recovered_once_with_its_lease_written_again(
    harness: WorkerHarness, job_id: str, where: tuple[str, str, str]
) -> None:
    """The job ran twice: its first attempt stalled (given up with its lease written again, and
    reported so, once), its second completed."""
    assert len(harness.notes_of("started")) == 2
    store = LeaseStore(harness.client, Settings(key_prefix=harness.key_prefix))
    history = [(a.attempt, a.outcome) for a in ended(store, job_id).history]
    assert history == [(1, Outcome.STALLED), (2, Outcome.COMPLETED)]
    assert counts(store)[("lease_vanished", where[0], where[1], where[2])] == 1


@pytest.mark.parametrize("worker", ["GuardedWorker", "GuardedSimpleWorker"])
def test_the_job_of_an_rq_worker_that_died_just_after_its_lease_vanished_is_recovered_once(
    rq_harness: RQHarness, worker: str
) -> None:
    # GuardedWorker: its horse dies, the worker gives the job up. GuardedSimpleWorker: the worker
    # itself dies, its watchdog process gives the job up. Either writes the lease again first.
    rq_harness.start_worker(worker)
    rq_harness.start_worker(worker)  # runs the job again if the first worker died with it
    job = rq_harness.enqueue(
        "loses_its_lease_then_dies", rq_harness.notes, rq_harness.redis_url, rq_harness.key_prefix
    )
    rq_harness.wait_status(job, ["finished"], 30)
    _recovered_once_with_its_lease_written_again(
        rq_harness, job.id, ("rq", rq_harness.queue_name, "tests.support.rq_jobs.loses_its_lease_then_dies")
    )


@pytest.mark.parametrize("worker", ["GuardedWorker", "GuardedSimpleWorker"])
def test_the_job_of_an_rq_worker_killed_whole_just_after_its_lease_vanished_is_recovered_by_the_next_one(
    rq_harness: RQHarness, worker: str
) -> None:
    # The worker and everything it started (its watchdog process too) die at once, as a service
    # manager stops a control group: the next worker started on the machine gives the job up.
    env = {"ZOMBIEGUARD_LEASE_TTL": "30", "ZOMBIEGUARD_HEARTBEAT_INTERVAL": "10"}  # no renewal meanwhile
    rq_harness.start_worker(worker, env=env)
    job = rq_harness.enqueue(
        "loses_its_lease_then_hangs", rq_harness.notes, rq_harness.redis_url, rq_harness.key_prefix
    )
    wait_until(lambda: rq_harness.notes_of("lease-lost"), 15, what="the lease deleted")
    doomed = rq_harness.workers[0]
    left = children(doomed.pid)
    os.killpg(doomed.pid, signal.SIGKILL)
    for pid in left:  # a horse runs in a process group of its own
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    doomed.wait(5)
    rq_harness.start_worker(worker, env=env)
    rq_harness.wait_status(job, ["finished"], 30)
    assert len(rq_harness.notes_of("started")) == 2
    store = LeaseStore(rq_harness.client, Settings(key_prefix=rq_harness.key_prefix))
    history = [(a.attempt, a.outcome) for a in ended(store, job.id).history]
    assert history == [(1, Outcome.STALLED), (2, Outcome.COMPLETED)]
    assert f"died with job {job.id} running" in rq_harness.log(1)


def test_the_task_of_a_celery_pool_process_that_died_just_after_its_lease_vanished_is_recovered_once(
    celery_harness: CeleryHarness,
) -> None:
    celery_harness.start_worker("prefork")
    result = celery_harness.send(
        "loses_its_lease_then_dies", celery_harness.notes, celery_harness.redis_url, celery_harness.key_prefix
    )
    assert result.get(timeout=30) == "survived"
    _recovered_once_with_its_lease_written_again(
        celery_harness,
        result.id,
        ("celery", celery_harness.queue, "tests.support.celery_app.loses_its_lease_then_dies"),
    )


def test_a_lease_that_vanishes_under_a_running_celery_task_is_reported_and_written_again(
    celery_harness: CeleryHarness,
) -> None:
    celery_harness.start_worker("prefork")
    result = celery_harness.send("long_task", celery_harness.notes, 3.0)
    wait_until(lambda: celery_harness.notes_of("started"), 15, what="the task started")
    celery_harness.wait_leased(result.id)
    store = LeaseStore(celery_harness.client, Settings(key_prefix=celery_harness.key_prefix))
    _vanish_and_come_back(store, result.id)
    assert result.get(timeout=15) == "done"
    assert len(celery_harness.notes_of("started")) == 1
    task = "tests.support.celery_app.long_task"
    assert counts(store)[("lease_vanished", "celery", celery_harness.queue, task)] == 1
    assert "its lease was missing from Redis while this worker renewed it" in celery_harness.log()


def test_a_worker_leaves_alone_what_a_dead_worker_of_another_deployment_left_on_the_machine(
    rq_harness: RQHarness,
) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    workdir = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{gone.pid}-"))
    other = {"worker": "zgw-other", "leases": "redis://elsewhere:6379/0", "key_prefix": rq_harness.key_prefix}
    (workdir / LEFT_BY).write_text(json.dumps(other))
    slot = JobSlot(workdir / "slot")
    slot.start("not-ours", 7, time.monotonic(), hard_deadline=None, progress_timeout=None, lease_ttl=5)
    slot.close()
    rq_harness.start_worker("GuardedWorker")
    wait_until(lambda: not workdir.exists(), 15, what="the dead worker's directory removed")
    store = LeaseStore(rq_harness.client, Settings(key_prefix=rq_harness.key_prefix))
    assert store.record("not-ours") is None  # not given up, nor written, in this deployment's Redis
    assert "not-ours" not in rq_harness.log()
