"""Benchmarks of the lease store against real Redis (python -m bench.core).

Prints, for each operation, the median and p95 wall time per call, and the same as a multiple of a bare
PING round trip measured in the same run (the floor any Redis call pays). Uses
ZG_BENCH_REDIS_URL, else the local Redis on 127.0.0.1:6379 (database 9, a key prefix of its
own, deleted afterwards), else a throwaway redis-server.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import redis

from zombieguard.adapter import JobAdapter
from zombieguard.demo.embedded import EmbeddedRedis
from zombieguard.leases import JobSpec, LeaseRecord, LeaseStore, Outcome
from zombieguard.policy import Policy, Settings
from zombieguard.recovery.deadletter import DeadLetterEntry
from zombieguard.recovery.sweeper import Sweeper

POLICY = Policy(lease_ttl=300, hard_timeout=3600)


class NoopAdapter:
    """Requeues into nowhere: the benchmark measures the store, not a framework."""

    name = "bench"
    republishes_unstarted = False
    reclaims = False
    requeues_from_payload = False

    def requeue(self, record: LeaseRecord) -> bool:
        """Nothing to do."""
        return True

    def fail(self, record: LeaseRecord, outcome: Outcome, reason: str) -> bool:
        """Nothing to do."""
        return True

    def stop(self, record: LeaseRecord) -> None:
        """Nothing to do."""

    def waiting(self, queue: str) -> int | None:
        """Not known."""
        return None

    def republish(self, entry: DeadLetterEntry) -> None:
        """Nothing to do."""

    def reclaim(self, queues: Sequence[str], leased: Callable[[str], bool]) -> list[str]:
        """Nothing taken apart."""
        return []

    def worker_gone(self, workdir: Path) -> None:
        """Nothing held."""


@contextmanager
def redis_url() -> Iterator[str]:
    """Where to measure."""
    explicit = os.environ.get("ZG_BENCH_REDIS_URL")
    if explicit:
        yield explicit
        return
    local = "redis://127.0.0.1:6379/9"
    try:
        redis.Redis.from_url(local, socket_connect_timeout=0.5).ping()
        yield local
    except redis.RedisError:
        with EmbeddedRedis() as server:
            yield server.url


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    """Wall times of ``repeat`` calls, in seconds."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def row(name: str, samples: list[float], ping: float) -> None:
    """One line of results."""
    med = statistics.median(samples)
    p95 = sorted(samples)[int(len(samples) * 0.95) - 1]
    print(f"{name:<52} median {med * 1000:8.3f} ms  p95 {p95 * 1000:8.3f} ms  = {med / ping:6.1f} x PING")


def fill(store: LeaseStore, count: int, prefix: str) -> list[tuple[str, int]]:
    """Acquire ``count`` leases through the acquire script, pipelined; return (job, token)."""
    acquire = store._scripts["acquire"]  # the real script, pipelined for set-up speed only
    leases: list[tuple[str, int]] = []
    for start in range(0, count, 2000):
        pipe = store.client.pipeline(transaction=False)
        ids = [f"{prefix}{i}" for i in range(start, min(count, start + 2000))]
        for job_id in ids:
            spec = JobSpec(job_id, "bench", "bench.task", "default")
            keys, args = store._acquire_call(spec, "w1", POLICY, None)
            acquire(keys=keys, args=args, client=pipe)
        for job_id, reply in zip(ids, pipe.execute(), strict=True):
            leases.append((job_id, int(reply[1])))
    return leases


def main() -> None:
    """Run every benchmark and print the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--active", type=int, default=100_000, help="active leases for the sweep benchmark")
    args = parser.parse_args()
    with redis_url() as url:
        client = redis.Redis.from_url(url)
        settings = Settings(key_prefix=f"zgbench-{uuid.uuid4().hex[:8]}", sweep_batch=1000)
        store = LeaseStore(client, settings)
        try:
            run(store, client, args.active)
        finally:
            keys = list(client.scan_iter(match="{" + settings.key_prefix + "}*", count=5000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])


def run(store: LeaseStore, client: redis.Redis, active: int) -> None:
    """The measurements."""
    print(f"redis-server {client.info('server')['redis_version']}, zombieguard core benchmarks")
    ping = statistics.median(timed(client.ping, 2000))
    row("PING round trip (the floor)", timed(client.ping, 2000), ping)

    for n in (1, 10, 100):
        leases = fill(store, n, f"hb{n}-")
        row(
            f"heartbeat: renew {n} lease(s) in one round trip",
            timed(partial(store.renew, "bench", "w1", 30, leases), 1000),
            ping,
        )

    spec_counter = iter(range(10**9))

    def pair() -> None:
        spec = JobSpec(f"pair-{next(spec_counter)}", "bench", "bench.task", "default")
        acquired = store.acquire(spec, "w1", POLICY)
        store.release(spec, acquired.token, Outcome.COMPLETED)

    row("acquire + release pair (a job's whole lease cost)", timed(pair, 2000), ping)
    presence(store, client, ping)

    t0 = time.perf_counter()
    leases = fill(store, active, "act-")
    print(f"(filled {active} active leases in {time.perf_counter() - t0:.1f} s)")
    adapter: JobAdapter = NoopAdapter()
    sweeper = Sweeper(store, {"bench": adapter})
    row(f"sweep, {active} active leases, none expired", timed(sweeper.sweep_once, 500), ping)

    def expire_1000() -> None:
        now = store.server_time()
        client.zadd(store.due_key("bench"), {job_id: now - 1 for job_id, _ in leases[:1000]})
        pipe = client.pipeline(transaction=False)
        for job_id, _ in leases[:1000]:
            pipe.hset(store.lease_key(job_id), "expires", repr(now - 1))
        pipe.execute()

    samples = []
    for i in range(5):
        expire_1000()
        # Re-arm: after a recovery the lease is queued; acquire it again for the next round.
        t0 = time.perf_counter()
        report = sweeper.sweep_once()
        samples.append(time.perf_counter() - t0)
        assert len(report.recovered) == 1000, len(report.recovered)
        leases[:1000] = fill(store, 1000, f"act{i}-")
    row(f"sweep, {active} active leases, 1,000 expired (claim + recover)", samples, ping)
    claim_only = []
    for i in range(5):
        expire_1000()
        t0 = time.perf_counter()
        claimed = store.claim("bench", "s1", limit=1000)
        claim_only.append(time.perf_counter() - t0)
        assert len(claimed.claimed) == 1000
        client.zrem(store.due_key("bench"), *[c.record.job_id for c in claimed.claimed])
        leases[:1000] = fill(store, 1000, f"claim{i}-")
    row("  of which the claim script alone (1,000 claimed)", claim_only, ping)


def _evalsha_usec(client: redis.Redis) -> tuple[int, int]:
    """Redis's own count of EVALSHA calls and the microseconds it spent in them."""
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


def _server_usec(client: redis.Redis, fn: Callable[[], object], repeat: int) -> float:
    """Microseconds Redis spends in one EVALSHA call of ``fn`` (from its command statistics)."""
    calls, usec = _evalsha_usec(client)
    for _ in range(repeat):
        fn()
    calls2, usec2 = _evalsha_usec(client)
    return (usec2 - usec) / max(1, calls2 - calls)


def presence(store: LeaseStore, client: redis.Redis, ping: float) -> None:
    """What watching the workers' presence connections costs Redis, at 10, 100 and 1,000 workers:
    their channels are subscribed on one connection (Redis counts subscribers per channel), their
    names announced, and two watchers and one standby sweeper call the presence script."""
    settings = store.settings
    print(
        f"presence (presence_interval {settings.presence_interval:g} s, sweep_interval"
        f" {settings.sweep_interval:g} s; two watchers look, the others stand by once a sweep)"
    )

    def look(sweeper: str) -> object:
        return store.look_at_presence(
            "bench", sweeper, seats=2, watcher_ttl=5, grace=settings.presence_grace or 0.4, restart_grace=0
        )

    for n in (10, 100, 1000):
        names = [f"pw{n}-{i}" for i in range(n)]
        pubsub = client.pubsub()
        pubsub.subscribe(*(store.presence_channel(name) for name in names))
        confirmed = 0
        while confirmed < n:
            message = pubsub.get_message(timeout=1.0)
            confirmed += message is not None and message["type"] == "subscribe"
        for name in names:
            store.announce_presence("bench", name)
        look("watcher-a")
        look("watcher-b")
        row(f"presence look, {n} workers (a watcher's call)", timed(partial(look, "watcher-a"), 300), ping)
        row(f"presence standby try, {n} workers", timed(partial(look, "standby"), 300), ping)
        look_us = _server_usec(client, partial(look, "watcher-a"), 300)
        standby_us = _server_usec(client, partial(look, "standby"), 300)
        looks = 2 / settings.presence_interval
        standbys = max(0, n - 2) / settings.sweep_interval
        announces = n / 5.0  # each worker's presence thread, every 5 s: MULTI, SADD, HDEL, EXEC
        busy_ms = (looks * look_us + standbys * standby_us) / 1000
        print(
            f"  {n} workers: {looks + standbys + 4 * announces:,.0f} commands/s for presence"
            f" ({looks:g} looks, {standbys:,.0f} standby tries, {announces:,.0f} announcements);"
            f" Redis busy {busy_ms:.1f} ms per second in the scripts (look {look_us:.0f} us,"
            f" standby {standby_us:.0f} us, server side)"
        )
        if n == 1000:
            # One dead worker among 1,000, with one running lease: found, buried, its lease given up.
            dead = names[0]
            pubsub.unsubscribe(store.presence_channel(dead))
            spec = JobSpec("presence-victim", "bench", "bench.task", "default")
            store.acquire(spec, dead, POLICY)
            client.hset(store.absent_key("bench"), dead, repr(store.server_time() - 10))
            t0 = time.perf_counter()
            seen = store.look_at_presence(
                "bench", "watcher-a", seats=2, watcher_ttl=5, grace=0.4, restart_grace=0
            )
            took = time.perf_counter() - t0
            assert [(d.name, d.given_up) for d in seen.dead] == [(dead, 1)], seen
            print(f"  a look that finds 1 of 1,000 workers dead and gives up its lease: {took * 1000:.2f} ms")
        pubsub.close()
        client.delete(store.presence_key("bench"), store.absent_key("bench"))


if __name__ == "__main__":
    main()
