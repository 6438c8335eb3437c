"""Leases on a Redis Cluster (``redis_url = "redis+cluster://..."``), RQ's and Celery's own Redis
where they are: every process of a worker reaches the node that serves the prefix's slot, and follows
that slot when a resharding moves it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.cluster import ClusterDeployment
from tests.support.harness import ZOMBIEGUARD
from tests.support.leases import ended
from tests.support.rq_harness import RQHarness, wait_until
from zombieguard.leases import LeaseStore, Outcome
from zombieguard.ops.stats import counts
from zombieguard.policy import Settings

if TYPE_CHECKING:
    from tests.support.celery_harness import CeleryHarness

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterDeployment]:
    with ClusterDeployment() as started:
        yield started


@pytest.fixture
def harness(
    cluster: ClusterDeployment, redis_url: str, key_prefix: str, tmp_path: Path
) -> Iterator[RQHarness]:
    started = RQHarness(redis_url, key_prefix, tmp_path)
    started.env["ZOMBIEGUARD_REDIS_URL"] = cluster.url
    yield started
    started.close()


def _store(cluster: ClusterDeployment, key_prefix: str) -> LeaseStore:
    return LeaseStore.from_url(cluster.url, Settings(key_prefix=key_prefix))


def _other_node(cluster: ClusterDeployment, store: LeaseStore) -> tuple[int, int]:
    """The slot of the store's keys and a node that does not serve it."""
    slot = cluster.slot_of(store.fence_key)
    owner = cluster.owner(slot)
    return slot, next(port for port in cluster.ports if port != owner)


def test_an_rq_worker_with_leases_on_a_cluster_is_stopped_in_c_code_by_its_watchdog_process(
    harness: RQHarness, cluster: ClusterDeployment
) -> None:
    harness.start_worker("GuardedSimpleWorker")
    job = harness.enqueue("stuck_in_c_code", harness.notes, job_timeout=3)
    wait_until(lambda: harness.notes_of("started"), 20, what="the job running")
    store = _store(cluster, harness.key_prefix)
    wait_until(lambda: store.record(job.id), 5, what="the lease on the cluster")
    status = subprocess.run(
        [ZOMBIEGUARD, "status", "--json", "--rq-url", harness.redis_url],
        env={
            **os.environ,
            "ZOMBIEGUARD_REDIS_URL": cluster.url,
            "ZOMBIEGUARD_KEY_PREFIX": harness.key_prefix,
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert job.id in status.stdout
    harness.wait_status(job, ["failed"], 15)
    assert [a.outcome for a in ended(store, job.id).history] == [Outcome.TIMED_OUT]


def test_live_rq_workers_follow_their_slot_across_a_resharding_and_no_job_runs_twice(
    harness: RQHarness, cluster: ClusterDeployment
) -> None:
    harness.env["ZOMBIEGUARD_LEASE_TTL"] = "3"
    harness.start_worker("GuardedWorker")
    harness.start_worker("GuardedWorker")  # its watchers would recover the other's job if it looked dead
    store = _store(cluster, harness.key_prefix)
    jobs = [harness.enqueue("long_job", harness.notes, 6) for _ in range(2)]
    wait_until(lambda: len(harness.notes_of("started")) == 2, 20, what="both jobs running")
    wait_until(lambda: all(store.record(job.id) for job in jobs), 5, what="the leases on the cluster")
    slot, target = _other_node(cluster, store)
    source = cluster.begin_move(slot, target)
    # Half the keys moved: the former owner answers ASK for those, the new one takes them after ASKING.
    with cluster.node(source) as node:
        half = int(node.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)) // 2
    cluster.migrate_keys(slot, source, target, limit=half)
    time.sleep(1.5)  # renewals, beats and sweeps while the slot is half moved
    cluster.migrate_keys(slot, source, target)
    cluster.finish_move(slot, target)
    channels = [store.presence_channel(name) for name in harness.worker_names]
    with cluster.node(target) as node:
        wait_until(
            lambda: all(count == 1 for _, count in node.pubsub_numsub(*channels)),
            5,
            what="both presence connections on the slot's new node",
        )
    for job in jobs:
        harness.wait_status(job, ["finished"], 30)
    assert len(harness.notes_of("started")) == 2  # never taken for dead, never recovered
    wait_until(lambda: counts(store) == {}, 10, what="the leases released as completed")


def test_the_job_of_an_rq_worker_killed_after_a_resharding_is_recovered_once(
    harness: RQHarness, cluster: ClusterDeployment
) -> None:
    doomed = harness.start_worker("GuardedWorker")
    store = _store(cluster, harness.key_prefix)
    slot, target = _other_node(cluster, store)
    cluster.move_slot(slot, target)
    job = harness.enqueue("long_job", harness.notes, 3)
    wait_until(lambda: harness.notes_of("started"), 20, what="the job running")
    wait_until(lambda: store.record(job.id), 5, what="the lease on the slot's new node")
    harness.start_worker("GuardedWorker")
    os.killpg(doomed.pid, signal.SIGKILL)
    harness.wait_status(job, ["finished"], 30)
    history = [(a.attempt, a.outcome) for a in ended(store, job.id).history]
    assert history == [(1, Outcome.STALLED), (2, Outcome.COMPLETED)]
    assert len(harness.notes_of("completed")) == 1


def test_a_celery_worker_with_leases_on_a_cluster_stops_a_hung_task_and_follows_its_slot(
    celery_harness: CeleryHarness, cluster: ClusterDeployment
) -> None:
    celery_harness.env["ZOMBIEGUARD_REDIS_URL"] = cluster.url
    celery_harness.start_worker("threads")
    store = _store(cluster, celery_harness.key_prefix)
    slot, target = _other_node(cluster, store)
    long = celery_harness.send("long_task", celery_harness.notes, 6.0)
    wait_until(lambda: celery_harness.notes_of("started"), 20, what="the task running")
    wait_until(lambda: store.record(long.id), 5, what="the lease on the cluster")
    cluster.move_slot(slot, target)
    assert long.get(timeout=40) == "done"
    assert len(celery_harness.notes_of("completed")) == 1
    # Stuck in C code, on a pool with no time limit of Celery's: the watchdog process, which reaches
    # the slot's node from the target the worker gave it, stops it.
    hung = celery_harness.send("stuck_in_c_code", celery_harness.notes, time_limit=2)
    celery_harness.wait_state(hung, {"FAILURE"}, 30)
    # Its worker, killed whole (a thread cannot be), may be counted a zombie; nothing was recovered.
    kinds = {kind for kind, *_ in counts(store)}
    assert "timed_out_hard" in kinds, counts(store)
    assert kinds <= {"timed_out_hard", "worker_zombie"}, counts(store)


def test_doctor_names_the_cluster_node_that_serves_the_slot_when_it_has_no_replica(
    cluster: ClusterDeployment, key_prefix: str
) -> None:
    result = subprocess.run(
        [ZOMBIEGUARD, "doctor"],
        env={**os.environ, "ZOMBIEGUARD_REDIS_URL": cluster.url, "ZOMBIEGUARD_KEY_PREFIX": key_prefix},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    store = _store(cluster, key_prefix)
    slot = cluster.slot_of(store.fence_key)
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"problem (cluster): the Cluster node 127.0.0.1:{cluster.owner(slot)}, which serves slot {slot}"
        in (result.stdout)
    )
    assert "--cluster-slave" in result.stdout
    assert "1 problem(s)" in result.stdout
