"""A sweeper on a Sentinel service acts only on claims a replica acknowledged, or once the sentinels
still name the Redis it claimed on: claims made on a primary failed over a moment before are lost
with it, and acting on them would recover a job twice."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from tests.support.leases import RecordingAdapter, job, start
from tests.support.sentinel import SentinelDeployment
from tests.support.waiting import wait_until
from zombieguard import Policy
from zombieguard.leases import LeaseStore, Outcome
from zombieguard.leases.connection import primary_of
from zombieguard.policy import Settings
from zombieguard.recovery.sweeper import Sweeper

pytestmark = pytest.mark.slow

POLICY = Policy(lease_ttl=1.0)


@pytest.fixture
def deployment() -> Iterator[SentinelDeployment]:
    with SentinelDeployment() as started:
        yield started


def test_claims_made_on_a_primary_failed_over_a_moment_before_are_left_to_the_new_one(
    deployment: SentinelDeployment, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = LeaseStore(deployment.client(), Settings(key_prefix=key_prefix))
    adapter = RecordingAdapter()
    sweeper = Sweeper(store, {"test": adapter})
    assert sweeper.sweep_once().recovered == []  # on the primary the sentinels name
    start(store, "j1", POLICY)
    time.sleep(POLICY.lease_ttl + 0.2)  # its worker died: the lease lapsed
    _, new = deployment.failover_started()
    # The replica is promoted at once; the sentinels name it about a second later.
    promoted = redis.Redis(port=new)
    wait_until(lambda: promoted.info("replication")["role"] == "master", 5, interval=0.02, what="promoted")
    promoted.close()
    report = sweeper.sweep_once()  # claims j1 on the former primary, which no replica acknowledges
    assert adapter.requeued == []
    assert report.recovered == []
    assert "no longer the primary" in caplog.text  # claimed there, not held on the new one
    # On the new primary the lapsed lease is taken once its lease_ttl has passed since the failover.
    wait_until(lambda: sweeper.sweep_once().recovered, 10, what="j1 recovered on the new primary")
    assert adapter.requeued == ["j1"]


def test_claims_on_a_primary_whose_replica_is_down_are_acted_on_all_the_same(
    deployment: SentinelDeployment, key_prefix: str
) -> None:
    store = LeaseStore(deployment.client(), Settings(key_prefix=key_prefix))
    adapter = RecordingAdapter()
    sweeper = Sweeper(store, {"test": adapter})
    start(store, "j1", POLICY)
    deployment.stop_replica()
    time.sleep(POLICY.lease_ttl + 0.2)
    report = wait_until(lambda: sweeper.sweep_once().recovered, 10, what="j1 recovered")
    assert report == ["j1"]
    assert adapter.requeued == ["j1"]


def test_an_attempt_given_up_on_a_primary_failed_over_a_moment_before_is_recovered_on_the_new_one(
    deployment: SentinelDeployment, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A worker that has not heard of the failover yet acquires and gives up (its process died) on
    # the former primary; its framework lets go of the job, which is then only in that lease.
    store = LeaseStore(deployment.client(), Settings(key_prefix=key_prefix))
    adapter = RecordingAdapter()
    sweeper = Sweeper(store, {"test": adapter})
    assert sweeper.sweep_once().recovered == []  # on the primary the sentinels name
    _, new = deployment.failover_started()
    # Asked just now, as a worker does every second: the sentinels still name the former primary,
    # and the acquire does not ask them again.
    assert primary_of(store.client) == ("127.0.0.1", deployment.primary_port())
    attempt = start(store, "j1", POLICY)
    promoted = redis.Redis(port=new)
    wait_until(lambda: promoted.info("replication")["role"] == "master", 5, interval=0.02, what="promoted")
    assert store.abandon(attempt.job, attempt.token, Outcome.STALLED) == "ok"
    assert "no longer the primary; written again" in caplog.text
    assert promoted.exists(store.lease_key("j1")), "the lease is on the new primary"
    promoted.close()
    wait_until(lambda: sweeper.sweep_once().recovered, 10, what="j1 recovered on the new primary")
    assert adapter.requeued == ["j1"]


@pytest.mark.parametrize("how", ["acquire", "send_acquire"])
def test_a_process_that_slept_through_a_failover_acquires_on_the_new_primary_not_the_former(
    deployment: SentinelDeployment, key_prefix: str, how: str
) -> None:
    store = LeaseStore(deployment.client(), Settings(key_prefix=key_prefix))
    start(store, "j1", POLICY)  # its connection is on the primary of then
    old, new = deployment.primary_port(), deployment.failover()
    former, promoted = redis.Redis(port=old), redis.Redis(port=new)
    assert former.info("replication")["role"] == "master"  # it still takes writes for some seconds
    time.sleep(1.1)  # this process did not look at the primary since (frozen, or busy with a job)
    spec = job("j2")
    if how == "acquire":
        store.acquire(spec, "w1", POLICY)
    else:
        store.send_acquire(spec, "w1", POLICY).result()
    lease = store.lease_key("j2")
    assert promoted.exists(lease)
    assert not former.exists(lease) or former.info("replication")["role"] != "master"
    former.close()
    promoted.close()
