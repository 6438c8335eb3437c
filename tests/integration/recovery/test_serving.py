"""After a restart or a failover, no lease is taken for stalled until its worker has had one whole
lease_ttl to renew it on the Redis that now serves."""

from __future__ import annotations

import contextlib
import time

import redis

from tests.support.leases import start
from tests.support.waiting import wait_until
from zombieguard import Policy
from zombieguard.demo.embedded import EmbeddedRedis
from zombieguard.leases import LeaseStore
from zombieguard.policy import Settings

POLICY = Policy(lease_ttl=1.5)


def _claimed(store: LeaseStore) -> list[str]:
    return [c.record.job_id for c in store.claim("test", "sweeper-b").claimed]


def test_a_lease_that_lapsed_during_a_failover_is_not_taken_until_lease_ttl_after_it(key_prefix: str) -> None:
    settings = Settings(key_prefix=key_prefix)
    primary, replica = EmbeddedRedis().start(), EmbeddedRedis().start()
    old, new = redis.Redis.from_url(primary.url), redis.Redis.from_url(replica.url)
    try:
        new.replicaof("127.0.0.1", primary.port)
        wait_until(lambda: new.info("replication")["master_link_status"] == "up", 10, what="replica in sync")
        store = LeaseStore(old, settings)
        assert _claimed(store) == []  # the sweepers run long before any failover
        start(store, "j1", POLICY)
        assert old.wait(1, 2000) == 1
        time.sleep(POLICY.lease_ttl + 0.2)  # its worker renewed it on the old primary only
        new.replicaof("NO", "ONE")
        promoted = LeaseStore(new, settings)
        promoted_at = time.monotonic()
        assert _claimed(promoted) == []  # lapsed, but this Redis has served for no lease_ttl yet
        claimed = wait_until(lambda: _claimed(promoted), 5, interval=0.05, what="the stall taken")
        assert claimed == ["j1"]
        assert time.monotonic() - promoted_at >= POLICY.lease_ttl - 0.1
    finally:
        old.close()
        new.close()
        primary.close()
        replica.close()


def test_a_lease_that_lapsed_while_redis_was_down_is_not_taken_until_lease_ttl_after_its_start(
    key_prefix: str,
) -> None:
    server = EmbeddedRedis(persistent=True).start()
    client = redis.Redis.from_url(server.url)
    try:
        store = LeaseStore(client, Settings(key_prefix=key_prefix))
        assert _claimed(store) == []
        start(store, "j1", POLICY)
        with contextlib.suppress(redis.ConnectionError):
            client.execute_command("SHUTDOWN")  # the append-only file keeps the lease
        time.sleep(POLICY.lease_ttl + 0.5)
        server.stop()
        started = time.monotonic()  # no later than the new server's start
        server.start()
        assert _claimed(store) == []
        claimed = wait_until(lambda: _claimed(store), 5, interval=0.05, what="the stall taken")
        assert claimed == ["j1"]
        assert time.monotonic() - started >= POLICY.lease_ttl - 0.05
    finally:
        client.close()
        server.close()


def test_a_worker_that_died_long_after_the_start_is_recovered_without_delay(store: LeaseStore) -> None:
    assert _claimed(store) == []
    start(store, "j1", POLICY)
    time.sleep(POLICY.lease_ttl + 0.1)
    assert _claimed(store) == ["j1"]


def test_a_worker_that_died_long_after_a_failover_is_recovered_without_delay(key_prefix: str) -> None:
    # The sweepers note the new primary at their first claim a second, stall or none: the first
    # stall long after the failover is not held as if the failover had just happened.
    settings = Settings(key_prefix=key_prefix)
    primary, replica = EmbeddedRedis().start(), EmbeddedRedis().start()
    old, new = redis.Redis.from_url(primary.url), redis.Redis.from_url(replica.url)
    try:
        new.replicaof("127.0.0.1", primary.port)
        wait_until(lambda: new.info("replication")["master_link_status"] == "up", 10, what="replica in sync")
        assert _claimed(LeaseStore(old, settings)) == []
        assert old.wait(1, 2000) == 1  # the replica holds what the sweepers saw
        new.replicaof("NO", "ONE")
        promoted = LeaseStore(new, settings)
        swept_until = time.monotonic() + 1.5
        while time.monotonic() < swept_until:  # the sweepers after the failover: nothing due
            assert _claimed(promoted) == []
            time.sleep(0.2)
        start(promoted, "j1", POLICY)
        time.sleep(POLICY.lease_ttl + 0.1)  # its worker died; the failover is a lease_ttl old
        assert _claimed(promoted) == ["j1"]
    finally:
        old.close()
        new.close()
        primary.close()
        replica.close()
