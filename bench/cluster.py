"""The load a fleet of idle guarded workers puts on the Redis Cluster node that serves zombieguard's
slot (python -m bench.cluster).

Every key of one prefix is in one slot, so one node carries all of it. This starts a local 3-primary
cluster and has ``--workers`` simulated workers do, for ``--seconds``, what each guarded worker does
at the default settings with no job running: renew its presence (``heartbeat_interval``, a third of
``lease_ttl``), sweep (``sweep_interval``), ask which node serves the slot (once a second), announce
its presence connection (every 5 s), keep that connection subscribed, and stand by for a presence
watcher's seat or, seated (two of them), look at every worker's connection (``presence_interval``).
It prints the commands per second the slot's node ran and the CPU time it used per second of wall
time (its ``INFO cpu``), beside the same node idle for the same time: the ratio is the load.
"""

from __future__ import annotations

import argparse
import heapq
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.core import NoopAdapter
from tests.support.cluster import ClusterDeployment
from zombieguard.leases import LeaseStore
from zombieguard.policy import Policy, Settings
from zombieguard.recovery.presence import SEATS
from zombieguard.recovery.sweeper import Sweeper

ADAPTER = "bench"
ANNOUNCE_EVERY = 5.0


def _usage(node: Any) -> tuple[float, int]:
    """The node's CPU seconds (user and system) and commands processed so far."""
    cpu: Any = node.info("cpu")
    stats: Any = node.info("stats")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), int(stats["total_commands_processed"])


def _measure(node: Any, seconds: float) -> tuple[float, float]:
    """CPU seconds per second and commands per second of ``node`` over ``seconds``."""
    cpu0, commands0 = _usage(node)
    time.sleep(seconds)
    cpu1, commands1 = _usage(node)
    return (cpu1 - cpu0) / seconds, (commands1 - commands0) / seconds


def _fleet(
    store: LeaseStore, workers: int, stop: threading.Event, threads: int, made: list[int]
) -> list[threading.Thread]:
    """Threads that run the periodic calls of ``workers`` idle workers until ``stop``."""
    settings, policy = store.settings, Policy()
    names = [f"bench-worker-{i}" for i in range(workers)]
    for name in names:
        store.register_worker(name, {"adapter": ADAPTER}, policy.lease_ttl)
        store.announce_presence(ADAPTER, name)
    sweepers = {name: Sweeper(store, {ADAPTER: NoopAdapter()}, name=name) for name in names}

    def seat(name: str) -> None:
        store.look_at_presence(
            ADAPTER,
            name,
            seats=SEATS,
            watcher_ttl=max(1.0, 5 * settings.presence_interval),
            grace=settings.presence_grace or 0.4,
            restart_grace=settings.presence_restart_grace,
        )

    periodic: list[tuple[float, Callable[[str], object]]] = [
        (policy.renew_every, lambda name: store.renew(ADAPTER, name, policy.lease_ttl, [])),
        (settings.sweep_interval, lambda name: sweepers[name].sweep_once()),
        (1.0, lambda _name: store.serving()),
        (ANNOUNCE_EVERY, lambda name: store.announce_presence(ADAPTER, name)),
        (settings.sweep_interval, seat),
    ]
    watchers = [(settings.presence_interval, seat)]

    def run(share: list[str]) -> None:
        now = time.monotonic()
        queue: list[tuple[float, int, str, float, Callable[[str], object]]] = []
        for i, name in enumerate(share):
            calls = periodic + (watchers if name in names[:SEATS] else [])
            for j, (every, call) in enumerate(calls):
                # Spread: workers do not start in step.
                heapq.heappush(queue, (now + every * ((i * 7 + j) % 97) / 97, len(queue), name, every, call))
        while not stop.is_set():
            due, order, name, every, call = heapq.heappop(queue)
            delay = due - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
            call(name)
            made.append(1)
            heapq.heappush(queue, (due + every, order, name, every, call))

    shares = [names[i::threads] for i in range(threads)]
    return [threading.Thread(target=run, args=(share,), daemon=True) for share in shares]


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    with ClusterDeployment() as cluster:
        store = LeaseStore.from_url(cluster.url, Settings(key_prefix="zgbench"))
        node = store.node_client()
        slot_node = store.serving()
        idle_cpu, idle_commands = _measure(node, args.seconds)
        # One connection holds every worker's presence subscription (Redis counts them the same).
        pubsub = node.pubsub()
        pubsub.subscribe(*(store.presence_channel(f"bench-worker-{i}") for i in range(args.workers)))
        stop = threading.Event()
        made: list[int] = []
        threads = _fleet(store, args.workers, stop, args.threads, made)
        for thread in threads:
            thread.start()
        time.sleep(min(5.0, args.seconds / 4))  # every periodic call under way
        before = len(made)
        cpu, commands = _measure(node, args.seconds)
        calls = (len(made) - before) / args.seconds
        stop.set()
        for thread in threads:
            thread.join(5)
        pubsub.close()
    where = f"{slot_node[0]}:{slot_node[1]}" if slot_node else "?"
    print(f"slot's node {where}, {args.workers} idle guarded workers, {args.seconds:.0f} s")
    print(f"  calls made by the fleet: {calls:.0f}/s (commands below count those run inside scripts)")
    print(f"  idle node:      {idle_cpu * 100:6.2f} % of a core, {idle_commands:8.0f} commands/s")
    print(f"  with the fleet: {cpu * 100:6.2f} % of a core, {commands:8.0f} commands/s")
    print(f"  ratio (CPU):    {cpu / max(idle_cpu, 1e-9):.1f}x the idle node")


if __name__ == "__main__":
    main()
