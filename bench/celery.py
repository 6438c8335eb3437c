"""Celery benchmarks with real workers (python -m bench.celery [--quick]).

1. Task throughput with results (no-op tasks, or tasks waiting `--work` seconds), guarded / plain,
   prefork and threads (one worker each, concurrency 2, both running throughout): in each pair the
   same number of tasks is queued first, then drained by one worker and by the other, in alternating
   order.
2. Recovery latency after SIGKILL of a whole worker (acks_late task, its lease written), Redis and
   RabbitMQ brokers, at lease_ttl 2 s: from the kill to the task's next attempt starting on the
   surviving worker.
3. Kill latency past hard_timeout (1 s) per pool, for a task hung on a socket and one stuck in C code:
   from the moment the limit passes to the task recorded FAILURE, or, where the stuck worker itself is
   killed (C code on threads and solo), to that worker's exit.
4. The guarded path's own cost (``--only path``): microseconds per no-op task through Celery's tracer
   in one process, plain and guarded (the threads pool's path, a worker runtime running), no broker.

Uses the local Redis (database 9, keys of its own, deleted afterwards), else a throwaway redis-server.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from types import SimpleNamespace

from celery import Celery
from celery.app.trace import build_tracer, setup_worker_optimizations

from bench.core import redis_url
from tests.support.celery_harness import CeleryHarness, rabbitmq_answers
from tests.support.waiting import wait_until
from zombieguard.integrations.celery import CeleryRuntime, install

# The defaults a deployment would run with, not the tests' short ones.
_TEST_TIMINGS = (
    "ZOMBIEGUARD_LEASE_TTL",
    "ZOMBIEGUARD_HEARTBEAT_INTERVAL",
    "ZOMBIEGUARD_SWEEP_INTERVAL",
    "ZOMBIEGUARD_OVERDUE_GRACE",
)


def _harness(url: str, workdir: Path, broker: str = "redis") -> CeleryHarness:
    own = workdir / uuid.uuid4().hex[:8]
    own.mkdir()
    return CeleryHarness(url, f"zgbench-{own.name}", own, broker=broker)


def throughput_worker(
    url: str, workdir: Path, pool: str, *, guarded: bool, lease_delay: str = ""
) -> CeleryHarness:
    """A running worker (concurrency 2) for :func:`throughput`; ``lease_delay``: the policy's, when
    not the default."""
    harness = _harness(url, workdir)
    for name in _TEST_TIMINGS:
        harness.env.pop(name)
    if lease_delay:
        harness.env["ZOMBIEGUARD_LEASE_DELAY"] = lease_delay
    if not guarded:
        harness.env["ZG_CELERY_UNGUARDED"] = "1"
    harness.start_worker(pool, concurrency=2)
    return harness


def throughput(harness: CeleryHarness, tasks: int, work: float = 0.0) -> float:
    """Tasks per second for ``harness``'s worker draining ``tasks`` tasks, each waiting ``work``
    seconds (0: no-op tasks): the steady rate, from the first task's result to the last one's.

    The tasks are queued first, on a queue no worker reads, then handed to the worker all at once
    (their list moved onto its queue in one Redis ``RENAME``): publishing does not pace the worker.
    They are published by an app with no result backend and their results read from Redis twenty
    times a second: the client subscribes to no result (Celery's Redis backend would, for each).
    """
    publisher = Celery("zgbench-publisher")
    publisher.conf.update(
        broker_url=harness.app.conf.broker_url,
        broker_transport_options=harness.app.conf.broker_transport_options,
    )
    parked = f"{harness.queue}-parked"
    name, args = ("tests.support.celery_app.work", (work,)) if work else ("tests.support.celery_app.noop", ())
    with publisher.producer_or_acquire() as producer:
        ids = [publisher.send_task(name, args=args, queue=parked, producer=producer).id for _ in range(tasks)]
    publisher.close()
    keys = f"{harness.celery_prefix}:"
    harness.client.rename(keys + parked, keys + harness.queue)
    backend = harness.app.backend
    meta_keys = [backend.get_key_for_task(task_id) for task_id in ids]
    deadline = time.monotonic() + 600
    while harness.client.llen(keys + harness.queue) and time.monotonic() < deadline:
        time.sleep(0.05)
    while None in (raw := harness.client.mget(meta_keys)) and time.monotonic() < deadline:
        time.sleep(0.05)
    done = sorted(
        datetime.fromisoformat(backend.decode_result(value)["date_done"]).timestamp() for value in raw
    )
    return (len(done) - 1) / max(done[-1] - done[0], 1e-6)


PAIRS_PER_START = 10
"""Pairs measured between two starts of the workers (see :func:`throughput_pairs`)."""


def throughput_pairs(
    url: str,
    workdir: Path,
    pool: str,
    *,
    pairs: int,
    tasks: int,
    work: float,
    lease_delay: str,
    noise_floor: bool = False,
) -> list[float]:
    """Guarded / plain throughput ratios, ``pairs`` times. Two workers run side by side; each pair
    drains the same number of tasks through each, in alternating order, so that the machine's ups and
    downs fall on both alike. The workers are started again every :data:`PAIRS_PER_START` pairs, in
    alternating order: here a worker kept its own speed, a few per cent off the other's, for as long as
    it ran (the one started second was often the faster), so a figure needs many starts, not only
    many pairs. ``noise_floor``: the "guarded" worker is plain too (the ratios show the noise)."""
    ratios: list[float] = []
    for start in range(0, pairs, PAIRS_PER_START):
        workers: dict[bool, CeleryHarness] = {}
        try:
            guarded_first = (start // PAIRS_PER_START) % 2 == 1
            for guarded in (guarded_first, not guarded_first):
                workers[guarded] = throughput_worker(
                    url, workdir, pool, guarded=guarded and not noise_floor, lease_delay=lease_delay
                )
            for harness in workers.values():
                throughput(harness, tasks, work)  # warm-up: pool processes, connections
            for index in range(min(PAIRS_PER_START, pairs - start)):
                rates = {}
                for guarded in (False, True) if index % 2 == 0 else (True, False):
                    rates[guarded] = throughput(workers[guarded], tasks, work)
                ratios.append(rates[True] / rates[False])
                print(
                    f"{pool}: plain {rates[False]:.0f}/s, guarded {rates[True]:.0f}/s, ratio {ratios[-1]:.3f}"
                )
        finally:
            for harness in workers.values():
                harness.close()
    return ratios


def _second_start(harness: CeleryHarness) -> str | None:
    """The note of the task's second attempt starting, once there is one."""
    started = harness.notes_of("started")
    return started[1] if len(started) > 1 else None


def _exited(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is not None


def recovery(url: str, workdir: Path, broker: str, runs: int) -> list[float]:
    """Seconds from SIGKILL of a whole worker to its task's next attempt starting, ``runs`` times."""
    samples = []
    for _ in range(runs):
        harness = _harness(url, workdir, broker)
        try:
            victim = harness.start_worker("prefork")
            harness.start_worker("prefork")
            result = harness.send("long_task", harness.notes, 60.0)
            wait_until(partial(harness.notes_of, "started"), 15, what="first attempt")
            # Its lease written (within lease_delay): before that, a killed worker's task is the broker's.
            harness.wait_leased(result.id)
            if int(harness.notes_of("started")[0].split()[1]) not in harness.children(0):
                continue  # the survivor took it; this run measures nothing
            os.killpg(victim.pid, signal.SIGKILL)
            killed = time.time()
            second = wait_until(partial(_second_start, harness), 30, what="second attempt")
            samples.append(float(second.split()[0]) - killed)
        finally:
            harness.close()
    return samples


DEFAULT_LEASE = {
    "ZOMBIEGUARD_LEASE_TTL": "30",
    "ZOMBIEGUARD_HEARTBEAT_INTERVAL": "10",
    "ZOMBIEGUARD_SWEEP_INTERVAL": "1",
}
"""The default lease settings (the harness's are the tests' short ones)."""


def _started_more_than(harness: CeleryHarness, count: int) -> bool:
    return len(harness.notes_of("started")) > count


def crash_recovery(url: str, workdir: Path, broker: str, pool: str, runs: int) -> list[float]:
    """Seconds from SIGKILL of the whole worker running a task (default lease settings, lease_ttl 30
    s) to the task's body starting again in another guarded worker, one kill at a time, ``runs``
    times. Three workers run; whichever starts the task is killed once its lease is written, and
    replaced."""
    harness = _harness(url, workdir, broker)
    rng = random.Random(7)
    samples: list[float] = []
    try:
        for _ in range(3):
            harness.wait_present(harness.start_worker(pool, env=DEFAULT_LEASE), "celery")
        for _ in range(runs):
            before = len(harness.notes_of("started"))
            result = harness.send("long_task", harness.notes, 4.0)
            wait_until(partial(_started_more_than, harness, before), 30, what="started")
            harness.wait_leased(result.id)
            pid = int(harness.notes_of("started")[-1].split()[1])
            victim = harness.worker_of(pid)
            time.sleep(rng.uniform(0.2, 1.0))  # anywhere in the heartbeat cycle
            killed_at = time.time()
            os.killpg(victim.pid, signal.SIGKILL)
            wait_until(partial(_started_more_than, harness, before + 1), 60, what="started again")
            samples.append(float(harness.notes_of("started")[-1].split()[0]) - killed_at)
            harness.wait_present(harness.start_worker(pool, env=DEFAULT_LEASE), "celery")
            result.get(timeout=30)
        return sorted(samples)
    finally:
        harness.close()


def kill_latency(url: str, workdir: Path, pool: str, task: str, *, runs: int, port: int) -> list[float]:
    """Seconds past a 1 s hard limit until the task is stopped, ``runs`` times."""
    samples = []
    for _ in range(runs):
        harness = _harness(url, workdir)
        try:
            worker = harness.start_worker(pool, concurrency=4 if pool == "threads" else 2)
            args: tuple[object, ...] = (harness.notes, port) if task == "hang_on_socket" else (harness.notes,)
            result = harness.send(task, *args, time_limit=1)
            started = float(wait_until(partial(harness.notes_of, "started"), 15)[0].split()[0])
            if task == "stuck_in_c_code" and pool != "prefork":
                wait_until(partial(_exited, worker), 15, interval=0.005, what="worker killed")
            else:
                harness.wait_state(result, {"FAILURE"}, 15)
            samples.append(time.time() - started - 1.0)
        finally:
            harness.close()
    return samples


def _black_hole() -> socket.socket:
    """A loopback server that accepts connections and never answers (the kernel's backlog accepts)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    return server


def _tracer(app: Celery) -> Callable[[], object]:
    """One no-op task of ``app`` run the way a worker runs it (Celery's tracer, the worker's
    optimizations on), its result not stored: what the worker does per task, minus the broker."""
    task = app.task(name="zgbench.noop", ignore_result=True, shared=False)(_noop)
    setup_worker_optimizations(app)
    trace = build_tracer(task.name, task, app=app, eager=False)
    delivery = {"exchange": "", "routing_key": "zgbench", "priority": 0, "redelivered": False}

    def run() -> object:
        task_id = uuid.uuid4().hex
        request = {"id": task_id, "delivery_info": delivery, "headers": {}, "is_eager": False}
        return trace(task_id, (), {}, request)

    return run


def _noop() -> None:
    """The body of the in-process benchmark's task."""


def task_path(url: str, calls: int, rounds: int) -> tuple[float, float]:
    """Microseconds per no-op task through Celery's tracer, plain and guarded (threads pool: a
    worker runtime started in this process, its watchdog process beside it), alternating rounds of
    ``calls``; the best round of each."""
    plain = Celery("zgbench-plain", set_as_current=False)
    guarded = install(Celery("zgbench-guarded", set_as_current=False))
    prefix = f"zgbench-{uuid.uuid4().hex[:8]}"
    guarded.conf.zombieguard = {"redis_url": url, "key_prefix": prefix}
    worker = SimpleNamespace(
        app=guarded, hostname="zgbench@path", pool_cls="celery.concurrency.thread:TaskPool", concurrency=2
    )
    runtime = CeleryRuntime(worker)
    runtime.start()
    try:
        runs = {"plain": _tracer(plain), "guarded": _tracer(guarded)}
        best = {name: float("inf") for name in runs}
        for _ in range(rounds):
            for name, run in runs.items():
                started = time.perf_counter()
                for _ in range(calls):
                    run()
                best[name] = min(best[name], (time.perf_counter() - started) / calls * 1e6)
    finally:
        runtime.stop()
        client = runtime.store.client
        for key in client.scan_iter(match=f"{{{prefix}}}:*"):
            client.delete(key)
    return best["plain"], best["guarded"]


def _dist(samples: list[float]) -> str:
    if not samples:
        return "no samples"
    return f"median {statistics.median(samples):.2f} s, max {max(samples):.2f} s (n={len(samples)})"


def main() -> None:
    """Print every figure."""
    parser = argparse.ArgumentParser(prog="python -m bench.celery")
    parser.add_argument("--quick", action="store_true", help="fewer tasks and runs")
    parser.add_argument("--only", choices=["throughput", "recovery", "kill", "path"])
    parser.add_argument("--pool", choices=["prefork", "threads"], help="throughput of one pool only")
    parser.add_argument("--tasks", type=int, help="tasks per throughput run")
    parser.add_argument("--work", type=float, default=0.0, help="seconds each throughput task waits")
    parser.add_argument("--lease-delay", default="", help="the guarded worker's lease_delay (e.g. none)")
    parser.add_argument("--pairs", type=int, help="guarded/plain pairs per throughput figure")
    parser.add_argument(
        "--noise-floor", action="store_true", help="throughput of plain against plain: the noise"
    )
    args = parser.parse_args()
    tasks, pairs, runs = (400, 10, 3) if args.quick else (400, 160, 10)
    tasks, pairs = args.tasks or tasks, args.pairs or pairs
    with redis_url() as url, tempfile.TemporaryDirectory(prefix="zgbench-") as tmp:
        workdir = Path(tmp)
        if args.only in (None, "throughput"):
            for pool in [args.pool] if args.pool else ["prefork", "threads"]:
                ratios = throughput_pairs(
                    url,
                    workdir,
                    pool,
                    pairs=pairs,
                    tasks=tasks,
                    work=args.work,
                    lease_delay=args.lease_delay,
                    noise_floor=args.noise_floor,
                )
                low, median, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
                print(
                    f"{pool}: guarded/plain median of {pairs} pairs = {median:.3f} "
                    f"(quartiles {low:.3f}, {high:.3f})"
                )
        if args.only in (None, "path"):
            plain, guarded = task_path(url, calls=2000 if args.quick else 10000, rounds=5)
            print(
                f"no-op task through Celery's tracer, in one process: plain {plain:.1f} us, guarded "
                f"(threads) {guarded:.1f} us, {guarded - plain:.1f} us more"
            )
        if args.only in (None, "recovery"):
            for broker in ("redis", "rabbitmq"):
                if broker == "rabbitmq" and not rabbitmq_answers():
                    print("rabbitmq: skipped, no broker answers")
                    continue
                samples = recovery(url, workdir, broker, runs)
                print(f"recovery after SIGKILL, {broker} broker, lease_ttl 2 s: {_dist(samples)}")
                for pool in ("prefork", "threads", "solo"):
                    samples = crash_recovery(
                        url, workdir, broker, pool, max(runs, 20) if not args.quick else runs
                    )
                    print(
                        f"crash recovery, {broker} broker, {pool}, lease_ttl 30 s (kill -> started again,"
                        f" one at a time): {_dist(samples)}"
                    )
        if args.only in (None, "kill"):
            server = _black_hole()
            port = server.getsockname()[1]
            for pool in ("prefork", "threads", "solo"):
                for task in ("hang_on_socket", "stuck_in_c_code"):
                    samples = kill_latency(url, workdir, pool, task, runs=max(3, runs // 2), port=port)
                    print(f"kill latency past hard_timeout, {pool}, {task}: {_dist(samples)}")
            server.close()


if __name__ == "__main__":
    main()
