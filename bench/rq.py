"""RQ benchmarks with real workers (python -m bench.rq [--quick]).

1. No-op job throughput, guarded / plain, alternated in one run: GuardedWorker vs rq.Worker and
   GuardedSimpleWorker vs rq.SimpleWorker (one worker each, as RQ runs them).
2. Recovery latency after SIGKILL of a whole worker (parent and horse): from the kill to the job being
   back on its queue, at lease_ttl 3 s and at the default (30 s), over >= 20 runs each. Victims are
   killed together, then one surviving guarded worker starts and sweeps. Then crash recovery: the
   worker running a job is killed, one at a time, while others run: from the kill to the job's
   body started again.
3. Kill latency past hard_timeout (1 s): from the moment the limit passes to the job ending failed,
   for a job hung on a socket and one stuck in C code, per worker class.

Uses ZG_BENCH_REDIS_URL, else the local Redis (database 9, keys of its own, deleted
afterwards), else a throwaway redis-server.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path

from rq import Queue

from bench.core import redis_url
from tests.support.rq_harness import RQHarness, wait_until


def _started_since(harness: RQHarness, before: int) -> bool:
    return len(harness.notes_of("started")) > before


def _harness(url: str, workdir: Path, env: dict[str, str | None]) -> RQHarness:
    own = workdir / uuid.uuid4().hex[:8]
    own.mkdir()
    return RQHarness(url, f"zgbench-{own.name}", own, env=env)


def throughput(url: str, workdir: Path, worker_class: str, jobs: int) -> float:
    """Jobs per second for one worker of ``worker_class`` draining ``jobs`` no-op jobs."""
    # The defaults a deployment would run with, not the tests' short ones.
    names = ("ZOMBIEGUARD_LEASE_TTL", "ZOMBIEGUARD_HEARTBEAT_INTERVAL", "ZOMBIEGUARD_SWEEP_INTERVAL")
    env: dict[str, str | None] = dict.fromkeys(names)
    harness = _harness(url, workdir, env)
    try:
        harness.start_worker(worker_class)
        data = [Queue.prepare_data("bench.jobs.noop", result_ttl=60) for _ in range(jobs)]
        t0 = time.perf_counter()
        enqueued = harness.queue.enqueue_many(data)
        harness.jobs.extend(enqueued)
        last = enqueued[-1]
        wait_until(lambda: harness.status(last) == "finished", 600, interval=0.01, what="all jobs done")
        return jobs / (time.perf_counter() - t0)
    finally:
        harness.close()


def recovery(url: str, workdir: Path, lease_ttl: float | None, runs: int) -> list[float]:
    """Seconds from SIGKILL of a whole worker to its job being back on the queue, ``runs`` times."""
    env: dict[str, str | None] = {
        "ZOMBIEGUARD_LEASE_TTL": None if lease_ttl is None else str(lease_ttl),
        "ZOMBIEGUARD_SWEEP_INTERVAL": None,
        "ZOMBIEGUARD_HEARTBEAT_INTERVAL": None,
    }
    harness = _harness(url, workdir, env)
    try:
        victims = [harness.start_worker("GuardedWorker") for _ in range(runs)]
        jobs = [harness.enqueue("long_job", harness.notes, 600.0) for _ in range(runs)]
        wait_until(lambda: len(harness.notes_of("started")) == runs, 120, what="every victim busy")
        time.sleep(1.5)  # let the kills land at random points of the heartbeat cycle
        for victim in victims:
            horses = harness.children(harness.workers.index(victim))
            os.killpg(victim.pid, signal.SIGKILL)
            for horse in horses:
                os.kill(horse, signal.SIGKILL)
        killed_at = time.monotonic()
        killed = {job.id: killed_at for job in jobs}
        harness.start_worker("GuardedWorker")  # the survivor: its sweeper recovers them
        back: dict[str, float] = {}
        deadline = killed_at + (lease_ttl or 30.0) + 60
        while len(back) < runs and time.monotonic() < deadline:
            for job in jobs:
                if job.id not in back and _recovered(harness, job.id):
                    back[job.id] = time.monotonic()
            time.sleep(0.02)
        return sorted(back[j] - killed[j] for j in back)
    finally:
        harness.close()


def crash_recovery(url: str, workdir: Path, worker_class: str, runs: int) -> list[float]:
    """Seconds from SIGKILL of the whole worker running a job (default lease settings, lease_ttl 30
    s) to the job's body starting again in another guarded worker, one kill at a time, ``runs``
    times. Three workers run; whichever starts the job is killed, and replaced."""
    env: dict[str, str | None] = {
        "ZOMBIEGUARD_LEASE_TTL": None,
        "ZOMBIEGUARD_SWEEP_INTERVAL": None,
        "ZOMBIEGUARD_HEARTBEAT_INTERVAL": None,
    }
    harness = _harness(url, workdir, env)
    rng = random.Random(7)
    samples = []
    try:
        for _ in range(3):
            harness.wait_present(harness.start_worker(worker_class), "rq")
        for _ in range(runs):
            before = len(harness.notes_of("started"))
            job = harness.enqueue("long_job", harness.notes, 4.0)
            wait_until(partial(_started_since, harness, before), 30, what="started")
            pid = int(harness.notes_of("started")[-1].split()[1])
            victim = harness.worker_of(pid)
            time.sleep(rng.uniform(0.2, 1.2))  # anywhere in the heartbeat cycle
            killed_at = time.time()
            os.killpg(victim.pid, signal.SIGKILL)
            if pid != victim.pid:
                os.kill(pid, signal.SIGKILL)  # the horse: a process group of its own
            wait_until(partial(_started_since, harness, before + 1), 60, what="started again")
            samples.append(float(harness.notes_of("started")[-1].split()[0]) - killed_at)
            harness.wait_present(harness.start_worker(worker_class), "rq")
            harness.wait_status(job, ["finished"], 30)
        return sorted(samples)
    finally:
        harness.close()


def _recovered(harness: RQHarness, job_id: str) -> bool:
    """The sweeper requeued it (its lease waits for the next attempt, or that attempt runs)."""
    state, attempt = harness.client.hmget(
        "{" + harness.key_prefix + "}:lease:" + job_id, ["state", "attempt"]
    )
    return state == b"queued" or (state == b"running" and int(attempt or 0) >= 2)


def kill_latency(url: str, workdir: Path, worker_class: str, func: str, runs: int) -> list[float]:
    """Seconds past hard_timeout (1 s) until the job is failed, ``runs`` times."""
    import socket  # noqa: PLC0415 - only this benchmark needs a server

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    port = server.getsockname()[1]
    harness = _harness(url, workdir, {"ZOMBIEGUARD_HARD_TIMEOUT": "1"})
    out = []
    try:
        for _ in range(runs):
            if not harness.workers or harness.workers[-1].poll() is not None:
                harness.start_worker(worker_class)  # a SimpleWorker stuck in C code is killed each time
            before = len(harness.notes_of("started"))
            args = (harness.notes, port) if func == "hang_on_socket" else (harness.notes,)
            job = harness.enqueue(func, *args)
            wait_until(partial(_started_since, harness, before), 30, what="started")
            started = float(harness.notes_of("started")[-1].split()[0])
            harness.wait_status(job, ["failed"], 30)
            out.append(time.time() - started - 1.0)
    finally:
        harness.close()
        server.close()
    return sorted(out)


def _dist(samples: list[float]) -> str:
    if not samples:
        return "no samples"
    q = statistics.quantiles(samples, n=20) if len(samples) > 1 else samples * 19
    return (
        f"n={len(samples)} min {min(samples):.2f}s median {statistics.median(samples):.2f}s "
        f"p95 {q[18]:.2f}s max {max(samples):.2f}s"
    )


def _recoveries(url: str, workdir: Path, runs: int) -> None:
    print("Recovery latency after SIGKILL of a whole worker (kill -> job back on its queue)")
    for ttl in (3.0, None):
        label = "lease_ttl 3 s" if ttl else "lease_ttl 30 s (default)"
        print(f"  {label:<26} {_dist(recovery(url, workdir, ttl, runs))}")
    print("Crash recovery: SIGKILL of the whole worker running a job, one at a time, lease_ttl 30 s")
    print("(kill -> the job's body started again by another guarded worker)")
    for cls in ("GuardedWorker", "GuardedSimpleWorker"):
        print(f"  {cls:<26} {_dist(crash_recovery(url, workdir, cls, runs))}")


def main() -> None:
    """Run and print every RQ benchmark."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer jobs and runs (a smoke run)")
    parser.add_argument("--only", choices=["throughput", "recovery", "kill"], help="run one benchmark")
    args = parser.parse_args()
    run = {args.only} if args.only else {"throughput", "recovery", "kill"}
    rounds = 1 if args.quick else 6
    with redis_url() as url, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if "throughput" in run:
            print("RQ no-op job throughput (one worker; each class in its own run, alternated; jobs/s)")
        for guarded, plain, jobs in (
            ("GuardedWorker", "rq.Worker", 100 if args.quick else 300),
            ("GuardedSimpleWorker", "rq.SimpleWorker", 300 if args.quick else 1500),
        ):
            if "throughput" not in run:
                break
            g_rates, p_rates, ratios = [], [], []
            for n in range(rounds):
                # Pairs run back to back, the first of each pair alternating: a pair shares conditions.
                if n % 2:
                    g_rates.append(throughput(url, workdir, guarded, jobs))
                    p_rates.append(throughput(url, workdir, plain, jobs))
                else:
                    p_rates.append(throughput(url, workdir, plain, jobs))
                    g_rates.append(throughput(url, workdir, guarded, jobs))
                ratios.append(g_rates[-1] / p_rates[-1])
            g, p, ratio = statistics.median(g_rates), statistics.median(p_rates), statistics.median(ratios)
            print(
                f"  {guarded:<20} {g:7.1f}/s  vs {plain:<16} {p:7.1f}/s"
                f"  median ratio of {rounds} pairs {ratio:.3f}"
                f"  (pair ratios {[round(r, 3) for r in ratios]})"
            )
        runs = 5 if args.quick else 20
        if "recovery" in run:
            _recoveries(url, workdir, runs)
        if "kill" in run:
            print("Kill latency past hard_timeout = 1 s (limit -> job failed)")
        for cls in ("GuardedWorker", "GuardedSimpleWorker") if "kill" in run else ():
            for func in ("hang_on_socket", "stuck_in_c_code"):
                samples = kill_latency(url, workdir, cls, func, 3 if args.quick else 5)
                print(f"  {cls:<20} {func:<16} {_dist(samples)}")


if __name__ == "__main__":
    main()
