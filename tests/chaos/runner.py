"""One chaos run: a private Redis, real workers under a supervisor, a seeded workload, seeded faults,
a bounded drain, the final state of every job, and the checker's verdicts.

``run(RunConfig(framework="rq", seed=7))`` returns a :class:`Report`; ``python -m tests.chaos`` is
the command line around it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import redis

from tests.chaos import gather, history, jobs, workload
from tests.chaos.faults import FAULT_CLASSES, SENTINEL_FAILOVER, Fault, FaultInjector, PrivateRedis
from tests.chaos.history import JobFinal, Judgement, Line
from tests.chaos.workers import (
    RQ_CLASSES,
    SUPERVISE_EVERY,
    EventLog,
    WorkerPool,
    WorkerProcess,
    celery_command,
    rq_command,
)
from tests.support.harness import REPO
from tests.support.sentinel import SentinelDeployment

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
KEY_PREFIX = "zgchaos"
RUNS_DIR = Path("/tmp/chaos-runs")
READY_TIMEOUT = 60.0
"""Seconds the workers get to start (Celery on a busy two-core machine is slow to import)."""
SEND_RETRY = 15.0
"""Seconds the runner keeps trying to send a job while Redis comes back from a fault."""
POLL_EVERY = 0.5
"""Seconds between two looks at every job during the drain."""
SETTLED_FOR = 1.0
"""How long every job must stay settled before the drain ends: a copy a worker hands back as it
wakes from a freeze moves a job again."""


@dataclass(frozen=True)
class RunConfig:
    """What to run. Durations in seconds."""

    framework: str
    """``rq`` or ``celery``."""
    seed: int | None = None
    """None: a random one (always reported, so that the run can be replayed)."""
    jobs: int = 40
    duration: float = 30.0
    """How long faults are injected; jobs are sent over its first half."""
    drain: float = 60.0
    """How long to wait, after the faults, for every job to end."""
    plain: bool = False
    """The same workload and faults on plain RQ workers or plain Celery (no zombieguard)."""
    workers: tuple[str, ...] = ("GuardedWorker", "GuardedWorker", "GuardedSimpleWorker")
    """RQ: one worker per entry (GuardedWorker, GuardedSimpleWorker)."""
    pools: tuple[str, ...] = ("prefork", "threads", "solo")
    """Celery: one worker per entry (concurrency 2, solo 1)."""
    broker: str = "redis"
    """Celery's broker: ``redis`` (the private one) or ``rabbitmq`` (127.0.0.1:5672)."""
    faults: tuple[str, ...] = FAULT_CLASSES
    sentinel: bool = False
    """Keep the leases on a Sentinel deployment of the run's own (a primary, a replica and three
    sentinels), and fail it over among the faults (``sentinel-failover``); the framework's own
    Redis stays the run's private one."""
    runs_dir: Path = RUNS_DIR
    keep: bool = False
    """Keep the run's directory even when nothing broke (it is always kept when something did)."""
    echo: bool = True
    """Print the fault log as it happens."""


@dataclass
class Report:
    """What a run did and found."""

    config: RunConfig
    seed: int
    run_dir: Path
    planned: list[workload.PlannedJob]
    sent: list[workload.PlannedJob] = field(default_factory=list)
    """The planned jobs the runner managed to send: the ones judged."""
    faults: list[Fault] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    judgements: list[Judgement] = field(default_factory=list)
    finals: dict[str, JobFinal] = field(default_factory=dict)
    leases: dict[str, dict[str, str]] = field(default_factory=dict)
    """Raw lease records of the broken jobs."""
    logs: dict[str, list[str]] = field(default_factory=dict)
    """The worker log lines that name each broken job (log file: line)."""
    errors: list[str] = field(default_factory=list)
    """What the workers logged that judges no job but deserves a look (:data:`WORKER_ERRORS`)."""
    drained_in: float | None = None
    """Seconds the drain took (None: its bound passed with jobs still unsettled)."""
    workers_started: int = 0

    @property
    def guarded(self) -> bool:
        """Whether zombieguard guarded the run."""
        return not self.config.plain

    @property
    def broken(self) -> list[Judgement]:
        """Jobs that break the promise."""
        return [j for j in self.judgements if j.verdict in history.BROKEN]

    @property
    def ok(self) -> bool:
        """Whether every job ended exactly once."""
        return not self.broken

    def title(self) -> str:
        """One line naming the run."""
        c = self.config
        classes = [RQ_CLASSES[w][1 if c.plain else 0].rsplit(".", 1)[-1] for w in c.workers]
        what = (
            f"workers {','.join(classes)}"
            if c.framework == "rq"
            else f"pools {','.join(c.pools)} on {c.broker}"
        )
        mode = ("plain" if c.plain else "guarded") + (", leases on Sentinel" if c.sentinel else "")
        jobs_sent = f"{len(self.planned)} jobs, {c.duration:g} s of faults"
        if self.sent and len(self.sent) < len(self.planned):
            jobs_sent += f" ({len(self.sent)} sent)"
        return f"{mode} {c.framework}, {what}, seed {self.seed}, {jobs_sent}"

    def render(self) -> str:
        """The report as text: faults by class, the table, and each broken job's story."""
        by_class = Counter(f.cls for f in self.faults)
        out = [
            f"chaos run: {self.title()}",
            f"run directory: {self.run_dir}",
            "faults: "
            + (
                ", ".join(f"{c} {by_class[c]}" for c in (*FAULT_CLASSES, SENTINEL_FAILOVER) if by_class[c])
                or "none"
            ),
            *(f"  {f.at:6.2f} s  {f.cls:<13} {f.target} {f.detail}".rstrip() for f in self.faults),
            f"worker processes started: {self.workers_started}",
            self.activity(),
            "drain: "
            + (f"settled in {self.drained_in:.1f} s" if self.drained_in is not None else "bound passed"),
            "",
            history.table(self.judgements),
        ]
        for j in self.broken:
            out += ["", f"{j.verdict.value.upper()}: {j.job_id} ({j.kind})", *(f"  {p}" for p in j.problems)]
            out += [f"  note: {n}" for n in j.notes]
            out += [_execution_line(e) for e in j.executions]
            out += [f"  log {line}" for line in self.logs.get(j.job_id, [])]
        for j in self.judgements:
            if j.verdict is history.Verdict.LOST_IN_BROKER:
                out += ["", f"LOST IN THE BROKER (not counted): {j.job_id} ({j.kind})"]
                out += [f"  {p}" for p in j.problems]
        dups = [j for j in self.judgements if j.duplicate and j.verdict not in history.BROKEN]
        if dups:
            out += [
                "",
                "duplicates (at-least-once, not a failure): "
                + ", ".join(f"{j.job_id} x{j.commits}" for j in dups),
            ]
        if self.errors:
            out += ["", f"errors in the workers' logs (not judged; {len(self.errors)}):"]
            out += [f"  {line}" for line in self.errors[:ERROR_LINES_SHOWN]]
        out += ["", f"replay: {self.replay()}"]
        return "\n".join(out)

    def activity(self) -> str:
        """What the faults did to the jobs: executions, re-runs, stalls, dead letters."""
        runs = sum(len(j.executions) for j in self.judgements)
        again = sum(1 for j in self.judgements if len(j.executions) > 1)
        stalls = sum(history.stalls_of(f) for f in self.finals.values())
        letters = sum(1 for f in self.finals.values() if f.dead_letter is not None)
        stale = sum(len(j.notes) for j in self.judgements)
        return (
            f"body executions: {runs} for {len(self.judgements)} jobs ({again} jobs ran more than once); "
            f"stalls recorded: {stalls}; dead-lettered: {letters}; "
            f"stale copies left that a delivery would refuse: {stale}"
        )

    def replay(self) -> str:
        """The command that runs this workload and fault sequence again."""
        c = self.config
        args = [
            f"--framework {c.framework}",
            f"--seed {self.seed}",
            f"--jobs {c.jobs}",
            f"--duration {c.duration:g}",
        ]
        args.append(
            f"--workers {','.join(c.workers)}"
            if c.framework == "rq"
            else f"--pools {','.join(c.pools)} --broker {c.broker}"
        )
        if c.plain:
            args.append("--plain")
        if c.sentinel:
            args.append("--sentinel")
        if tuple(c.faults) != FAULT_CLASSES:
            args.append(f"--faults {','.join(c.faults)}")
        return "python -m tests.chaos " + " ".join(args)

    def to_json(self) -> str:
        """Everything, for the run directory."""
        return json.dumps(
            {
                "title": self.title(),
                "seed": self.seed,
                "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.config).items()},
                "planned": [asdict(p) for p in self.planned],
                "faults": [asdict(f) for f in self.faults],
                "events": self.events,
                "judgements": [
                    {**asdict(j), "verdict": j.verdict.value, "duplicate": j.duplicate}
                    for j in self.judgements
                ],
                "finals": {k: asdict(v) for k, v in self.finals.items()},
                "leases_of_broken_jobs": self.leases,
                "logs_of_broken_jobs": self.logs,
                "errors_in_worker_logs": self.errors,
            },
            indent=1,
            default=str,
        )


def _execution_line(e: history.Execution) -> str:
    started = f"{e.started:.3f}" if e.started is not None else "-"
    committed = f"{e.committed:.3f}" if e.committed is not None else "-"
    return (
        f"  run {e.run}: pid {e.pid}, attempt {e.attempt}, token {e.token}, "
        f"started {started}, committed {committed}"
    )


LOG_LINES_PER_JOB = 40
ERROR_LINES_SHOWN = 20
WORKER_ERRORS = re.compile(r"\(contained;|Unrecoverable error|zombieguard-watchdog-process .*killed")
"""Log lines worth a look whatever the verdicts: zombieguard's contained internal errors, a
watchdog process killing its worker, Celery's "Unrecoverable error" (the worker exits)."""


def worker_errors(logs: Path) -> list[str]:
    """The lines of the workers' logs that :data:`WORKER_ERRORS` matches."""
    found = []
    for path in sorted(logs.glob("*.log")):
        found += [
            f"{path.stem}: {line.strip()[:300]}"
            for line in path.read_text(errors="replace").splitlines()
            if WORKER_ERRORS.search(line)
        ]
    return found


def log_lines(logs: Path, job_ids: list[str]) -> dict[str, list[str]]:
    """The lines of the workers' logs that name each job, in time order within each log."""
    found: dict[str, list[str]] = {job_id: [] for job_id in job_ids}
    for path in sorted(logs.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            for job_id in job_ids:
                if job_id in line and len(found[job_id]) < LOG_LINES_PER_JOB:
                    found[job_id].append(f"{path.stem}: {line.strip()[:300]}")
    return found


def read_history(directory: Path) -> list[Line]:
    """Every history line the run's bodies wrote."""
    lines: list[Line] = []
    for path in sorted(directory.glob("history-*.jsonl")):
        lines += history.parse_lines(path.read_text(errors="replace"))
    return lines


class _Framework:
    """What differs between RQ and Celery in a run: workers, sending, and reading job states."""

    def __init__(self, config: RunConfig, server: PrivateRedis, queue: str, env: dict[str, str]) -> None:
        self.config = config
        self.server = server
        self.queue = queue
        self.env = env

    def specs(self) -> list[str]:
        raise NotImplementedError

    def command(self) -> Callable[[str, str], list[str]]:
        raise NotImplementedError

    def ready(self, worker: WorkerProcess) -> bool:
        raise NotImplementedError

    def send(self, job: workload.PlannedJob) -> None:
        raise NotImplementedError

    def states(self, client: redis.Redis, job_ids: list[str]) -> dict[str, history.FrameworkState]:
        raise NotImplementedError

    def waiting_in_broker(self) -> int:
        """Messages in a broker whose queue the job states do not read (RabbitMQ), waiting or held by
        a worker unacked: while any is there, a job may still run again, and the run has not settled."""
        return 0

    def close(self) -> None:
        """Release what the framework created outside the private Redis."""


class _RQ(_Framework):
    def __init__(self, config: RunConfig, server: PrivateRedis, queue: str, env: dict[str, str]) -> None:
        super().__init__(config, server, queue, env)
        from rq import Queue  # noqa: PLC0415 - only RQ runs need RQ

        self.client = redis.Redis.from_url(server.url)
        self.rq_queue = Queue(queue, connection=self.client)

    def specs(self) -> list[str]:
        # The class each slot really runs names its workers (Worker in a plain run, not GuardedWorker).
        return [RQ_CLASSES[w][1 if self.config.plain else 0].rsplit(".", 1)[-1] for w in self.config.workers]

    def command(self) -> Callable[[str, str], list[str]]:
        return rq_command(self.config.plain, self.server.url, self.queue)

    def ready(self, worker: WorkerProcess) -> bool:
        return bool(self.client.exists(f"rq:worker:{worker.name}"))

    def send(self, job: workload.PlannedJob) -> None:
        self.rq_queue.enqueue(
            f"{jobs.__name__}.{job.kind}",
            job.job_id,
            job.seconds,
            job_id=job.job_id,
            job_timeout=int(jobs.KIND_LIMITS[job.kind]),
            result_ttl=3600,
            failure_ttl=3600,
        )

    def states(self, client: redis.Redis, job_ids: list[str]) -> dict[str, history.FrameworkState]:
        return gather.rq_states(client, self.queue, job_ids)

    def close(self) -> None:
        self.client.close()


class _Celery(_Framework):
    def __init__(self, config: RunConfig, server: PrivateRedis, queue: str, env: dict[str, str]) -> None:
        super().__init__(config, server, queue, env)
        from celery import Celery  # noqa: PLC0415 - only Celery runs need Celery

        self.broker_url = RABBITMQ_URL if config.broker == "rabbitmq" else server.url
        env["ZG_CHAOS_BROKER"] = self.broker_url
        env["ZG_CHAOS_BACKEND"] = server.url
        env["ZG_CHAOS_QUEUE"] = queue
        if config.plain:
            env["ZG_CHAOS_PLAIN"] = "1"
        env["ZG_CHAOS_ZOMBIEGUARD"] = json.dumps(
            {
                "redis_url": env["ZOMBIEGUARD_REDIS_URL"],
                "key_prefix": KEY_PREFIX,
                "sweep_interval": workload.SWEEP_INTERVAL,
                "defaults": {
                    "lease_ttl": workload.LEASE_TTL,
                    "heartbeat_interval": workload.HEARTBEAT_INTERVAL,
                    "max_stalls": workload.MAX_STALLS,
                    "hard_timeout": jobs.HARD_TIMEOUT,
                },
            }
        )
        # Sends only: no result backend here, so that sending subscribes to nothing.
        self.app = Celery("zgchaos-client")
        self.app.conf.update(
            broker_url=self.broker_url, task_default_queue=queue, broker_connection_retry_on_startup=True
        )

    def specs(self) -> list[str]:
        return list(self.config.pools)

    def command(self) -> Callable[[str, str], list[str]]:
        return celery_command(self.queue)

    def ready(self, worker: WorkerProcess) -> bool:
        return " ready." in worker.log.read_text(errors="replace")

    def send(self, job: workload.PlannedJob) -> None:
        self.app.send_task(
            f"{jobs.__name__}.{job.kind}",
            args=[job.job_id, job.seconds],
            task_id=job.job_id,
            queue=self.queue,
        )

    def states(self, client: redis.Redis, job_ids: list[str]) -> dict[str, history.FrameworkState]:
        copies = gather.celery_redis_copies(client, self.queue) if self.config.broker == "redis" else []
        return gather.celery_states(gather.celery_results(client, job_ids), copies)

    def waiting_in_broker(self) -> int:
        if self.config.broker != "rabbitmq":
            return 0
        with self.app.connection_for_write() as conn:
            ready = int(conn.default_channel.queue_declare(self.queue, passive=True).message_count)
        # A message a worker holds unacked goes back to the queue if the worker dies: the run has
        # not settled while one is held (Celery's solo pool acks up to ~10 s late after a freeze).
        return ready or gather.rabbitmq_unacked(self.queue)

    def leftovers(self) -> list[tuple[str, history.Copy]]:
        """RabbitMQ: the messages left in the queue once every worker is gone."""
        if self.config.broker != "rabbitmq":
            return []
        return gather.rabbitmq_copies(self.broker_url, self.queue)

    def close(self) -> None:
        if self.config.broker == "rabbitmq":
            with contextlib.suppress(Exception), self.app.connection_for_write() as conn:
                channel = conn.default_channel
                channel.queue_delete(self.queue)
                channel.exchange_delete(self.queue)
        self.app.close()


def _worker_env(run_dir: Path, server: PrivateRedis) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZOMBIEGUARD_", "ZG_", "RQ_"))}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",  # a SIGKILLed worker's last lines are in its log
            # What killed workers leave in the temporary directory (billiard's, zombieguard's
            # runtime directories) goes with the run's directory.
            "TMPDIR": str(run_dir / "tmp"),
            jobs.HISTORY_DIR_ENV: str(run_dir / "history"),
            "ZOMBIEGUARD_REDIS_URL": server.url,
            "ZOMBIEGUARD_KEY_PREFIX": KEY_PREFIX,
            "ZOMBIEGUARD_LEASE_TTL": str(workload.LEASE_TTL),
            "ZOMBIEGUARD_HEARTBEAT_INTERVAL": str(workload.HEARTBEAT_INTERVAL),
            "ZOMBIEGUARD_MAX_STALLS": str(workload.MAX_STALLS),
            "ZOMBIEGUARD_HARD_TIMEOUT": str(jobs.HARD_TIMEOUT),
            "ZOMBIEGUARD_SWEEP_INTERVAL": str(workload.SWEEP_INTERVAL),
        }
    )
    return env


class _Sender(threading.Thread):
    """Sends the planned jobs at their times; never while a Redis fault is being injected."""

    def __init__(
        self, framework: _Framework, planned: list[workload.PlannedJob], events: EventLog, t0: float
    ) -> None:
        super().__init__(name="chaos-sender", daemon=True)
        self.framework = framework
        self.planned = planned
        self.events = events
        self.t0 = t0
        self.halt = threading.Event()
        self.sent: list[workload.PlannedJob] = []
        self.sent_at: dict[str, float] = {}
        """When each job was sent, on the run's clock (the faults' clock)."""

    def run(self) -> None:
        for job in self.planned:
            if self.halt.wait(max(0.0, self.t0 + job.submit_at - time.monotonic())):
                return
            deadline = time.monotonic() + SEND_RETRY
            while True:
                try:
                    with self.framework.server.lock:
                        self.framework.send(job)
                        self.sent_at[job.job_id] = self.events.elapsed()
                    self.sent.append(job)
                    break
                except Exception as exc:  # Redis answering again after a fault: try again, bounded
                    if time.monotonic() > deadline:
                        self.events.add(f"could not send {job.job_id}: {exc!r}")
                        break
                    time.sleep(0.2)


def _finals(
    framework: _Framework,
    client: redis.Redis,
    planned: list[workload.PlannedJob],
    extra: list[tuple[str, history.Copy]] | None = None,
    leases_client: redis.Redis | None = None,
) -> dict[str, JobFinal]:
    """Every job's end: the framework's view (``client``), zombieguard's (``leases_client``, when the
    leases live elsewhere)."""
    ids = [p.job_id for p in planned]
    states = framework.states(client, ids)
    leases = gather.lease_states(leases_client or client, KEY_PREFIX, ids)
    letters = gather.dead_letters(leases_client or client, KEY_PREFIX)
    for job_id, copy in extra or []:
        if job_id in states:
            states[job_id] = replace(states[job_id], copies=(*states[job_id].copies, copy))
    return {
        p.job_id: JobFinal(p.job_id, p.kind, states[p.job_id], leases[p.job_id], letters.get(p.job_id))
        for p in planned
    }


def _judge(report: Report, finals: dict[str, JobFinal]) -> list[Judgement]:
    lines = read_history(report.run_dir / "history")
    return history.judge_all(finals.values(), lines, guarded=report.guarded, max_stalls=workload.MAX_STALLS)


def freezes(faults: list[Fault]) -> list[history.Freeze]:
    """The freezes of a run's fault log, each with the kill that ended it, if one came first."""
    found = []
    for fault in faults:
        if fault.cls == "worker-freeze":
            end = fault.at + float(fault.detail.split()[0])
            kill = next(
                (
                    k.at
                    for k in faults
                    if k.cls == "worker-kill" and k.target == fault.target and fault.at <= k.at < end
                ),
                None,
            )
            found.append(history.Freeze(fault.target, fault.at, end, kill))
    return found


_RECEIVED = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}): INFO/MainProcess\] Task \S+?\[([^\]]+)\] received"
)


def first_received(logs: Path, wall_t0: float) -> dict[str, float]:
    """When a Celery worker first logged receiving each job, in run time (``wall_t0``: the wall
    clock at the run's time 0; Celery stamps its log lines with the local time, to the millisecond)."""
    found: dict[str, float] = {}
    for path in sorted(logs.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            match = _RECEIVED.match(line)
            if match is None:
                continue
            stamp, millis, job_id = match.groups()
            at = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000 - wall_t0
            found[job_id] = min(at, found.get(job_id, at))
    return found


def _broker_losses(
    report: Report,
    faults: list[Fault],
    sent_at: dict[str, float],
    deaths: list[history.Death],
    wall_t0: float,
) -> list[Judgement]:
    """Celery on Redis: the lost jobs that no worker ever logged receiving and that kombu's BRPOP lost
    with a worker killed frozen or killed as it popped them (see :func:`history.lost_to_a_frozen_worker`
    and :func:`history.lost_to_a_dying_worker`)."""
    if report.config.framework != "celery" or report.config.broker != "redis":
        return report.judgements
    received = first_received(report.run_dir / "logs", wall_t0)
    return history.attribute_broker_losses(
        report.judgements, sent_at, freezes(faults), received, deaths=deaths, supervise_every=SUPERVISE_EVERY
    )


def _drain(
    report: Report,
    framework: _Framework,
    client: redis.Redis,
    events: EventLog,
    leases_client: redis.Redis | None = None,
) -> None:
    """Wait, polling, until no job is stuck or lost, or the drain's bound passes."""
    began = time.monotonic()
    deadline = began + report.config.drain
    waiting: list[Judgement] = []
    settled_at: float | None = None
    while time.monotonic() < deadline:
        try:
            waiting = history.unsettled(
                _judge(report, _finals(framework, client, report.sent, leases_client=leases_client))
            )
            if not waiting and framework.waiting_in_broker():
                waiting = [
                    Judgement(
                        "?",
                        "?",
                        history.Verdict.STUCK,
                        ("a message waits in the broker, or a worker holds one unacked",),
                    )
                ]
        except redis.RedisError:
            waiting = [Judgement("?", "?", history.Verdict.LOST)]  # Redis was restarting: look again
        now = time.monotonic()
        settled_at = None if waiting else settled_at or now
        if settled_at is not None and now - settled_at >= SETTLED_FOR:
            report.drained_in = settled_at - began
            events.add(f"drain: every job settled after {report.drained_in:.1f} s")
            return
        time.sleep(POLL_EVERY)
    events.add(
        f"drain: bound of {report.config.drain:g} s passed; unsettled: {', '.join(j.job_id for j in waiting)}"
    )


def _leases_on_sentinel(
    config: RunConfig, env: dict[str, str], events: EventLog
) -> tuple[SentinelDeployment | None, redis.Redis | None]:
    """The leases' Sentinel deployment and a client of its primary, started for a run that asks
    for one (the workers' environment then names it); (None, None) for the others."""
    if not config.sentinel:
        return None, None
    sentinel = SentinelDeployment().start()
    env["ZOMBIEGUARD_REDIS_URL"] = sentinel.url
    events.add(f"leases on Sentinel: {sentinel.url}")
    return sentinel, sentinel.client()


def run(config: RunConfig) -> Report:
    """Run one chaos run; its processes and Redis are gone when it returns (or raises)."""
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(1, 10**6)
    mode = "plain" if config.plain else "guarded"
    run_dir = (
        config.runs_dir
        / f"{config.framework}-{mode}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    )
    (run_dir / "history").mkdir(parents=True)
    (run_dir / "logs").mkdir()
    (run_dir / "tmp").mkdir()
    planned = workload.plan(seed, config.jobs, config.duration, tag=f"{config.framework[0]}{seed}")
    report = Report(config, seed, run_dir, planned)
    if config.echo:
        print(f"chaos run: {report.title()}\nrun directory: {run_dir}", flush=True)

    events = EventLog(time.monotonic(), echo=config.echo)
    server = PrivateRedis()
    sentinel: SentinelDeployment | None = None
    leases_client: redis.Redis | None = None
    framework: _Framework | None = None
    client: redis.Redis | None = None
    pool: WorkerPool | None = None
    injector: FaultInjector | None = None
    sender: _Sender | None = None
    try:
        server.start()
        queue = f"zgchaos-{uuid.uuid4().hex[:8]}"
        env = _worker_env(run_dir, server)
        sentinel, leases_client = _leases_on_sentinel(config, env, events)
        framework = (_RQ if config.framework == "rq" else _Celery)(config, server, queue, env)
        client = redis.Redis.from_url(server.url, socket_timeout=10)
        pool = WorkerPool(
            framework.specs(),
            command=framework.command(),
            env=env,
            logs=run_dir / "logs",
            events=events,
            ready=framework.ready,
        )
        pool.start_all(READY_TIMEOUT)
        events.add(f"workers ready: {', '.join(w.name for w in pool.live())}")
        pool.supervise()
        t0, wall_t0 = time.monotonic(), time.time()
        events.t0 = t0
        # The faults' generator is seeded apart from the workload's: the same seed gives the same jobs
        # whichever fault classes are chosen.
        injector = FaultInjector(
            random.Random(seed * 7919 + 1),
            pool,
            server,
            events,
            until=config.duration,
            classes=(*config.faults, *((SENTINEL_FAILOVER,) if config.sentinel else ())),
            leases=sentinel,
        )
        sender = _Sender(framework, planned, events, t0)
        sender.start()
        injector.start()
        injector.wait()
        injector.stop()
        sender.halt.set()  # it has sent everything by now, unless a send is still being retried
        sender.join(SEND_RETRY + 1)
        report.sent = list(sender.sent)
        if len(report.sent) < len(planned):
            events.add(f"not sent (the runner's own failure): {len(planned) - len(report.sent)} jobs")
        events.add("faults stopped; every worker awake; draining")
        _drain(report, framework, client, events, leases_client)
        finals = _finals(framework, client, report.sent, leases_client=leases_client)
        pool.kill_all()
        if isinstance(framework, _Celery):
            leftovers = framework.leftovers()
            for job_id, copy in leftovers:
                if job_id in finals:
                    final = finals[job_id]
                    finals[job_id] = replace(
                        final, framework=replace(final.framework, copies=(*final.framework.copies, copy))
                    )
        report.finals = finals
        report.judgements = _judge(report, finals)
        report.judgements = _broker_losses(
            report, injector.faults if injector else [], sender.sent_at, pool.deaths, wall_t0
        )
        report.leases = gather.lease_hashes(
            leases_client or client, KEY_PREFIX, [j.job_id for j in report.broken]
        )
        report.logs = log_lines(run_dir / "logs", [j.job_id for j in report.broken])
        report.errors = worker_errors(run_dir / "logs")
    finally:
        if sender is not None:
            sender.halt.set()
        if injector is not None:
            injector.stop()
            report.faults = list(injector.faults)
        if pool is not None:
            pool.kill_all()
            report.workers_started = len(pool.every)
        report.events = list(events.lines)
        for closing in (client, leases_client, framework, sentinel):
            if closing is not None:
                with contextlib.suppress(Exception):
                    closing.close()
        server.close()
        (run_dir / "report.json").write_text(report.to_json())
        (run_dir / "report.txt").write_text(report.render() if report.judgements else "run did not finish\n")
        if report.judgements and not (report.broken and report.guarded) and not config.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return report


def main_report(config: RunConfig) -> int:
    """Run, print the report, and return the exit status: 1 when a guarded run broke the promise."""
    report = run(config)
    print()
    print(report.render(), flush=True)
    return 1 if report.guarded and not report.ok else 0


__all__ = ["Report", "RunConfig", "main_report", "run"]
