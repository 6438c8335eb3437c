"""Leases on a Redis Sentinel service: RQ workers on RQ's Sentinel settings keep their leases on the
current primary, from every process, and follow it through a failover."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis
from rq import Queue

from tests.support.harness import REPO, ZOMBIEGUARD
from tests.support.leases import ended
from tests.support.rq_harness import RQHarness, wait_until
from tests.support.sentinel import SERVICE, SentinelDeployment
from zombieguard.leases import LeaseStore, Outcome, text
from zombieguard.ops.stats import counts
from zombieguard.policy import Settings

if TYPE_CHECKING:
    from tests.support.celery_harness import CeleryHarness

pytestmark = pytest.mark.slow


@pytest.fixture
def deployment() -> Iterator[SentinelDeployment]:
    """A deployment of the test's own: Sentinel does not fail the same service over again soon after
    a failover (a former primary, just demoted, is no candidate yet)."""
    with SentinelDeployment() as started:
        yield started


class SentinelRQHarness(RQHarness):
    """RQ workers started with RQ's own ``SENTINEL`` settings (``rq worker -c``); the test's client
    finds the primary through the sentinels too."""

    def __init__(self, deployment: SentinelDeployment, key_prefix: str, workdir: Path) -> None:
        super().__init__(f"redis://127.0.0.1:{deployment.primary_port()}/0", key_prefix, workdir)
        self.client.close()
        self.client = deployment.client()
        self.queue = Queue(self.queue_name, connection=self.client)
        settings = {"INSTANCES": deployment.instances, "MASTER_NAME": SERVICE, "DB": 0}
        (workdir / "zg_sentinel_settings.py").write_text(f"SENTINEL = {settings!r}\n")
        self.env["PYTHONPATH"] = f"{REPO}{os.pathsep}{workdir}"
        # A failover takes Sentinel about a second here: the leases outlive it.
        self.env["ZOMBIEGUARD_LEASE_TTL"] = "5"

    def close(self) -> None:
        """As :meth:`RQHarness.close`; a command that meets the former primary as Sentinel demotes
        it, or another failover, is sent again on the primary named then."""
        self.kill_workers()

        def deleted() -> bool:
            self.delete_written()
            return True

        wait_until(
            deleted,
            30,
            interval=0.5,
            what="the test's keys deleted on the primary",
            ignore=(redis.ConnectionError,),
        )
        self.client.close()

    def start_sentinel_worker(self) -> int:
        """A GuardedWorker on the Sentinel settings; returns its index."""
        self.start_worker("GuardedWorker", connection=["-c", "zg_sentinel_settings"])
        return len(self.workers) - 1


@pytest.fixture
def harness(deployment: SentinelDeployment, key_prefix: str, tmp_path: Path) -> Iterator[SentinelRQHarness]:
    started = SentinelRQHarness(deployment, key_prefix, tmp_path)
    yield started
    started.close()


def test_an_rq_worker_on_sentinel_settings_keeps_its_leases_on_the_primary_for_every_process(
    harness: SentinelRQHarness, deployment: SentinelDeployment
) -> None:
    # A GuardedSimpleWorker stuck in C code: the watchdog process beside it reaches the primary
    # through the same sentinels, from the connection settings the worker gave it.
    harness.start_worker("GuardedSimpleWorker", connection=["-c", "zg_sentinel_settings"])
    job = harness.enqueue("stuck_in_c_code", harness.notes, job_timeout=3)
    wait_until(lambda: harness.notes_of("started"), 20, what="the job running")
    store = LeaseStore(harness.client, Settings(key_prefix=harness.key_prefix))
    wait_until(lambda: store.record(job.id), 5, what="the lease on the primary")
    status = subprocess.run(
        [ZOMBIEGUARD, "status", "--json"],
        env={
            **os.environ,
            "ZOMBIEGUARD_REDIS_URL": deployment.url,
            "ZOMBIEGUARD_KEY_PREFIX": harness.key_prefix,
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert job.id in status.stdout
    harness.wait_status(job, ["failed"], 15)
    # The watchdog process gave the lease up as timed out, and its sweep failed the job in RQ and
    # recorded its end.
    assert [a.outcome for a in ended(store, job.id).history] == [Outcome.TIMED_OUT]


def test_a_live_rq_worker_follows_a_failover_and_its_running_job_is_not_recovered(
    harness: SentinelRQHarness, deployment: SentinelDeployment
) -> None:
    harness.start_sentinel_worker()
    harness.start_sentinel_worker()  # its sweeper would recover the other's job if it were taken for dead
    job = harness.enqueue("long_job", harness.notes, 18)
    wait_until(lambda: harness.notes_of("started"), 20, what="the job running")
    store = LeaseStore(harness.client, Settings(key_prefix=harness.key_prefix))
    wait_until(lambda: store.record(job.id), 5, what="the lease on the primary")
    old = deployment.primary_port()
    new = deployment.failover()
    promoted, former = redis.Redis(port=new), redis.Redis(port=old)
    channels = [store.presence_channel(name) for name in harness.worker_names]
    # The former primary is still a primary for some seconds: the presence connections leave it
    # for the new one within about a second, without waiting for Sentinel to demote it.
    wait_until(
        lambda: all(count == 1 for _, count in promoted.pubsub_numsub(*channels)),
        3,
        what="both presence connections on the new primary",
    )
    assert former.info("replication")["role"] == "master"
    harness.wait_status(job, ["finished"], 40)
    assert len(harness.notes_of("started")) == 1  # never taken for dead, never recovered
    # A first attempt that completed leaves no lease; its queue's last success is recorded, and no
    # worker was taken for a zombie while its heartbeat moved to the new primary.
    after = LeaseStore(deployment.client(), Settings(key_prefix=harness.key_prefix))
    wait_until(lambda: after.record(job.id) is None, 10, what="the job's lease released as completed")
    assert harness.queue_name in {text(q) for q in after.client.hkeys(after.completed_key)}
    assert counts(after) == {}
    promoted.close()
    former.close()


def test_the_job_of_an_rq_worker_killed_during_a_failover_is_still_recovered_once(
    harness: SentinelRQHarness, deployment: SentinelDeployment
) -> None:
    doomed = harness.start_sentinel_worker()
    job = harness.enqueue("long_job", harness.notes, 4)
    wait_until(lambda: harness.notes_of("started"), 20, what="the job running")
    harness.start_sentinel_worker()
    deployment.failover_started()
    os.killpg(harness.workers[doomed].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    harness.wait_status(job, ["finished"], 60)
    # Within the failover, the hold after it (lease_ttl 5 s) and a sweep or a presence look.
    assert time.monotonic() - killed_at < 20
    store = LeaseStore(deployment.client(), Settings(key_prefix=harness.key_prefix))
    history = [(a.attempt, a.outcome) for a in ended(store, job.id).history]
    assert history == [(1, Outcome.STALLED), (2, Outcome.COMPLETED)]
    # Recovered once, by the survivor: a recovery its sweeper or presence watcher decided on the
    # former primary in the second before the sentinels named the new one was not acted on.
    assert len(harness.notes_of("started")) == 2
    assert len(harness.notes_of("completed")) == 1


def test_a_celery_worker_on_a_sentinel_broker_keeps_its_leases_there_across_a_failover(
    celery_harness: CeleryHarness, deployment: SentinelDeployment
) -> None:
    # No redis_url: the leases follow the broker's sentinels and master_name.
    sentinels = ";".join(f"sentinel://127.0.0.1:{port}/0" for port in deployment.sentinel_ports)
    del celery_harness.env["ZOMBIEGUARD_REDIS_URL"]
    celery_harness.env.update(
        {
            "ZG_CELERY_BROKER": sentinels,
            "ZG_CELERY_BACKEND": sentinels,
            "ZG_CELERY_MASTER_NAME": SERVICE,
            "ZOMBIEGUARD_LEASE_TTL": "5",
        }
    )
    options = {"global_keyprefix": f"{celery_harness.celery_prefix}:", "master_name": SERVICE}
    celery_harness.app.conf.update(
        broker_url=sentinels,
        result_backend=sentinels,
        broker_transport_options=options,
        result_backend_transport_options=options,
    )
    celery_harness.start_worker("prefork")
    celery_harness.start_worker("threads")
    result = celery_harness.send("long_task", celery_harness.notes, 16.0)
    wait_until(lambda: celery_harness.notes_of("started"), 20, what="the task running")
    store = LeaseStore(deployment.client(), Settings(key_prefix=celery_harness.key_prefix))
    wait_until(lambda: store.record(result.id), 5, what="the lease on the Sentinel primary")
    deployment.failover()
    assert result.get(timeout=60) == "done"
    assert len(celery_harness.notes_of("started")) == 1  # never taken for dead, never recovered
    assert counts(LeaseStore(deployment.client(), Settings(key_prefix=celery_harness.key_prefix))) == {}


def test_doctor_passes_a_sentinel_service_with_a_replica_and_names_one_without(
    deployment: SentinelDeployment, key_prefix: str
) -> None:
    def doctor() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ZOMBIEGUARD, "doctor"],
            env={**os.environ, "ZOMBIEGUARD_REDIS_URL": deployment.url, "ZOMBIEGUARD_KEY_PREFIX": key_prefix},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    healthy = doctor()
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    deployment.stop_replica()
    alone = doctor()
    assert alone.returncode == 1
    assert f"the primary of Sentinel service {SERVICE!r} has no replica connected" in alone.stdout
    assert "start a replica of it" in alone.stdout
