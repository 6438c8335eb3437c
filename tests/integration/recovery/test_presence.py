"""Presence: a worker whose process dies is found by its closed connection and its jobs given up at
once; a live worker whose connection alone closed, or whose Redis restarted, is not."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
import redis

from tests.support.leases import RecordingAdapter, start
from tests.support.waiting import wait_until
from zombieguard import Policy
from zombieguard.demo.embedded import EmbeddedRedis
from zombieguard.leases import LeaseState, LeaseStore, Outcome
from zombieguard.policy import Settings
from zombieguard.recovery.presence import SEATS, PresenceWatch
from zombieguard.recovery.sweeper import Sweeper
from zombieguard.testing import capture_events
from zombieguard.worker.presence import Presence

POLICY = Policy(lease_ttl=30)

_WORKER = textwrap.dedent(
    """
    import sys, time
    import redis
    from zombieguard import Policy
    from zombieguard.leases import JobSpec, LeaseStore
    from zombieguard.policy import Settings
    from zombieguard.worker.presence import Presence

    url, prefix, worker = sys.argv[1:4]
    store = LeaseStore(redis.Redis.from_url(url), Settings(key_prefix=prefix))
    assert Presence(store, "test", worker).start(5)
    spec = JobSpec("j1", "test", "app.tasks.work", "default", "{}")
    store.acquire(spec, worker, Policy(lease_ttl=30))
    print("ready", flush=True)
    time.sleep(60)
    """
)


def _watch(store: LeaseStore, adapter: RecordingAdapter, name: str = "sweeper-a") -> PresenceWatch:
    return PresenceWatch(store, Sweeper(store, {"test": adapter}, name=name), "test")


def _nobody_dead_for(watch: PresenceWatch, seconds: float) -> None:
    """Look every 0.05 s for ``seconds`` (Redis may be away a while): nobody is found dead."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.ConnectionError):
            assert watch.look().dead == ()
        time.sleep(0.05)


def _still_running(store: LeaseStore, adapter: RecordingAdapter, token: int) -> None:
    assert adapter.requeued == []
    record = store.record("j1")
    assert record is not None
    assert record.held_by(token)


@pytest.fixture
def dying_worker(redis_url: str, key_prefix: str) -> Iterator[subprocess.Popen[str]]:
    """A worker process with a presence connection and the running lease of job j1."""
    process = subprocess.Popen(
        [sys.executable, "-c", _WORKER, redis_url, key_prefix, "doomed"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    yield process
    process.kill()
    process.wait(5)


def test_a_killed_workers_running_job_is_recovered_within_a_second_whatever_its_lease_ttl(
    store: LeaseStore, dying_worker: subprocess.Popen[str]
) -> None:
    adapter = RecordingAdapter()
    watch = _watch(store, adapter)
    assert watch.look().watching
    os.kill(dying_worker.pid, signal.SIGKILL)
    killed = time.monotonic()
    with capture_events() as events:
        wait_until(lambda: watch.look() and adapter.requeued, 3, interval=0.05, what="j1 requeued")
    assert time.monotonic() - killed < 1.0
    assert adapter.requeued == ["j1"]
    record = store.record("j1")
    assert record is not None
    assert record.state is LeaseState.QUEUED
    assert record.history[-1].outcome is Outcome.STALLED
    assert "doomed" not in store.workers()
    assert [e.kind for e in events] == ["worker_zombie", "stalled", "recovered"]
    assert events[0].worker == "doomed"  # type: ignore[union-attr]
    assert events.of_jobs()[0].reason == "worker doomed died: its presence connection to Redis closed"


def test_a_live_worker_whose_presence_connection_was_killed_keeps_its_job(
    private_redis: EmbeddedRedis, key_prefix: str
) -> None:
    client = redis.Redis.from_url(private_redis.url)
    store = LeaseStore(client, Settings(key_prefix=key_prefix))
    presence = Presence(store, "test", "w1")
    assert presence.start()
    attempt = start(store, "j1", POLICY, worker="w1")
    adapter = RecordingAdapter()
    watch = _watch(store, adapter)
    try:
        for _ in range(3):
            assert client.client_kill_filter(_type="pubsub") >= 1
            _nobody_dead_for(watch, 1.5)
        assert presence.subscriptions == 4
        _still_running(store, adapter, attempt.token)
    finally:
        presence.stop()
        client.close()


def test_a_live_workers_job_is_kept_across_a_redis_restart(key_prefix: str) -> None:
    server = EmbeddedRedis(persistent=True).start()
    client = redis.Redis.from_url(server.url)
    settings = Settings(key_prefix=key_prefix, presence_restart_grace=2.0)
    store = LeaseStore(client, settings)
    presence = Presence(store, "test", "w1")
    try:
        assert presence.start()
        attempt = start(store, "j1", POLICY, worker="w1")
        adapter = RecordingAdapter()
        watch = _watch(store, adapter)
        assert watch.look().watching
        server.stop()
        time.sleep(0.5)
        server.start()
        _nobody_dead_for(watch, settings.presence_restart_grace + 1.5)
        wait_until(lambda: presence.subscriptions >= 2, 3, what="the presence connection open again")
        _still_running(store, adapter, attempt.token)
    finally:
        presence.stop()
        client.close()
        server.close()


def test_a_worker_that_leaves_is_never_taken_for_dead(store: LeaseStore) -> None:
    presence = Presence(store, "test", "w1")
    assert presence.start()
    adapter = RecordingAdapter()
    watch = _watch(store, adapter)
    assert watch.look().workers == 1
    presence.stop()
    with capture_events() as events:
        _nobody_dead_for(watch, 1.0)
    assert [e.kind for e in events] == []
    assert watch.look().workers == 0


def test_two_sweepers_watch_an_integrations_presence_and_the_others_stand_by(store: LeaseStore) -> None:
    adapter = RecordingAdapter()
    watches = [_watch(store, adapter, name=f"sweeper-{n}") for n in range(4)]
    assert [w.look().watching for w in watches] == [True] * SEATS + [False] * (4 - SEATS)
    # A seat is kept by its holder, and freed when it stops looking.
    assert [w.look().watching for w in watches] == [True] * SEATS + [False] * (4 - SEATS)
    wait_until(lambda: watches[3].look().watching, 3, interval=0.1, what="a free seat taken over")


def test_the_held_set_follows_a_workers_running_leases(store: LeaseStore) -> None:
    a = start(store, "j1", POLICY, worker="w1")
    start(store, "j2", POLICY, worker="w1")
    held = store.held_key("w1")
    assert store.client.smembers(held) == {b"j1", b"j2"}
    a.release(Outcome.COMPLETED, "done")
    assert store.client.smembers(held) == {b"j2"}
    store.deregister_worker("w1")
    assert not store.client.exists(held)


@pytest.mark.parametrize("looked_before", [True, False], ids=["looked-before", "never-looked-before"])
def test_after_a_failover_live_workers_have_the_restart_grace_to_reach_the_new_primary(
    key_prefix: str, looked_before: bool
) -> None:
    # A replica promoted to primary keeps its uptime; its new replication id is what says every
    # connection just moved. Without that, both workers below would be taken for dead 0.4 s in;
    # the workers' announcements note the id before any watcher has looked.
    settings = Settings(key_prefix=key_prefix, presence_restart_grace=2.0)
    primary, replica = EmbeddedRedis().start(), EmbeddedRedis().start()
    old, new = redis.Redis.from_url(primary.url), redis.Redis.from_url(replica.url)
    presences: list[Presence] = []
    try:
        new.replicaof("127.0.0.1", primary.port)
        wait_until(lambda: new.info("replication")["master_link_status"] == "up", 10, what="replica in sync")
        store = LeaseStore(old, settings)
        presences.append(Presence(store, "test", "alive"))
        assert presences[0].start()
        live = start(store, "j1", POLICY, worker="alive")
        store.announce_presence("test", "dead")  # its connection is closed for good
        start(store, "j2", POLICY, worker="dead")
        adapter = RecordingAdapter()
        if looked_before:
            assert _watch(store, adapter).look().watching  # j2's worker noted absent, not yet dead
        assert old.wait(1, 2000) == 1
        wait_until(lambda: new.info("server")["uptime_in_seconds"] >= 3, 10, what="the replica up 3 s")
        new.replicaof("NO", "ONE")
        primary.stop()
        promoted = LeaseStore(new, settings)
        watch = _watch(promoted, adapter, name="sweeper-b")
        _nobody_dead_for(watch, 1.0)
        presences.append(Presence(promoted, "test", "alive"))  # it reaches the new primary
        assert presences[1].start()
        dead = wait_until(lambda: watch.look().dead, 3, interval=0.05, what="the dead worker found")
        assert [d.name for d in dead] == ["dead"]
        assert adapter.requeued == ["j2"]
        record = promoted.record("j1")
        assert record is not None
        assert record.held_by(live.token)
    finally:
        for presence in presences:
            presence.stop()
        old.close()
        new.close()
        primary.close()
        replica.close()
