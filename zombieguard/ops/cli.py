"""The ``zombieguard`` command: what an operator touches at 3 a.m.

Every command speaks to people by default and prints JSON with ``--json``. Exit codes: 0 done,
1 something asked for was not found (or a check failed), 2 bad input or Redis unreachable: one clear
line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import redis

from zombieguard.adapter import JobAdapter
from zombieguard.errors import ConfigurationError, IntegrationNotAvailable, ZombieGuardError
from zombieguard.leases import LeaseState, LeaseStore, text
from zombieguard.leases.connection import RedisTarget
from zombieguard.ops.integrations import REGISTRY, load
from zombieguard.ops.stats import EventCounter
from zombieguard.ops.status import Status, duration, table
from zombieguard.policy import Config, current_config
from zombieguard.recovery.deadletter import DeadLetterEntry, DeadLetterFilter, DeadLetterStore
from zombieguard.recovery.sweeper import Sweeper

# Where each integration's adapter factory lives: imported only when an operation needs it, so the
# CLI works without the frameworks installed for everything else.


class UsageError(ZombieGuardError):
    """Bad input on the command line: reported as one line, exit code 2."""


def _store(args: argparse.Namespace) -> LeaseStore:
    config: Config = current_config()
    if args.redis_url:
        target = RedisTarget.from_url(args.redis_url, "--redis-url")
    elif config.settings.redis_url:
        target = RedisTarget.from_url(config.settings.redis_url)
    else:
        raise UsageError("no Redis named: pass --redis-url or set ZOMBIEGUARD_REDIS_URL")
    store = LeaseStore.from_target(target, config.settings)
    store.client.ping()
    return store


def _adapters(
    store: LeaseStore, names: set[str], args: argparse.Namespace, celery_app: str | None = None
) -> dict[str, JobAdapter]:
    """The adapters of the integrations ``names`` (those not installed here are left out);
    ``celery_app``: the Celery app (``module:app``) Celery's adapter acts through; RQ's acts on
    the Redis ``--rq-url`` or ``RQ_REDIS_URL`` names, the leases' by default."""
    rq_url = getattr(args, "rq_url", None) or os.environ.get("RQ_REDIS_URL")
    adapters: dict[str, JobAdapter] = {}
    for name, integration in REGISTRY.items():
        if name not in names:
            continue
        try:
            given = {"celery": celery_app, "rq": rq_url}.get(name)
            adapters[name] = load(integration.adapter)(store.client, given)
        except IntegrationNotAvailable:
            continue
    return adapters


def _celery_app(args: argparse.Namespace) -> str | None:
    """The Celery app named by ``--celery-app``, or else by ``ZOMBIEGUARD_CELERY_APP``."""
    return getattr(args, "celery_app", None) or os.environ.get("ZOMBIEGUARD_CELERY_APP") or None


def _integrations(celery_app: str | None) -> set[str]:
    """The integrations an operation on every queue acts for: RQ, and Celery when its app is named."""
    return {"rq"} | ({"celery"} if celery_app else set())


def _print(args: argparse.Namespace, data: Any, text: Callable[[], str]) -> None:
    sys.stdout.write((json.dumps(data, indent=2) if args.json else text()) + "\n")


def _status(args: argparse.Namespace, store: LeaseStore) -> tuple[dict[str, Any], Callable[[], str]]:
    celery_app = _celery_app(args)
    queues = {text(a) for a in store.client.hvals(store.queues_key)}
    status = Status.read(
        store, args.queue, _adapters(store, _integrations(celery_app) & queues, args, celery_app)
    )
    return status.as_dict(), status.text


def cmd_status(args: argparse.Namespace) -> int:
    """Every active guarded job, across integrations, and a line per queue; ``--watch`` refreshes."""
    store = _store(args)
    if not args.watch:
        data, view = _status(args, store)
        _print(args, data, view)
        return 0
    stop = _stopped_by_signal()
    while not stop.is_set():
        data, view = _status(args, store)
        if args.json:
            sys.stdout.write(json.dumps(data) + "\n")
        else:
            sys.stdout.write("\x1b[H\x1b[2J" + view() + "\n")  # clear the screen, then draw
        sys.stdout.flush()
        stop.wait(args.interval)
    return 0


def _stopped_by_signal() -> threading.Event:
    """An event set by Ctrl-C (SIGINT) or SIGTERM, which then end a loop between two of its steps: a
    KeyboardInterrupt raised anywhere could leave a lock of the Redis client held, and the process
    hung at exit. A second Ctrl-C interrupts at once."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


def _filter(args: argparse.Namespace) -> DeadLetterFilter:
    return DeadLetterFilter(
        task=args.task,
        queue=args.queue,
        reason=args.reason,
        older_than=args.older_than,
        newer_than=args.newer_than,
    )


def _selected(args: argparse.Namespace, dlq: DeadLetterStore) -> list[DeadLetterEntry]:
    if args.job_ids and args.all:
        raise UsageError("name job ids or use --all with filters, not both")
    if args.all:
        return dlq.entries(_filter(args))[0]
    if not args.job_ids:
        raise UsageError("name the job ids to act on, or use --all (with --task, --queue, ... to narrow it)")
    entries = []
    for job_id in args.job_ids:
        entry = dlq.get(job_id)
        if entry is None:
            raise LookupError(f"no dead-letter entry for job {job_id!r}")
        entries.append(entry)
    return entries


def cmd_dlq_list(args: argparse.Namespace) -> int:
    """Dead-lettered jobs, oldest first."""
    store = _store(args)
    entries, corrupt = DeadLetterStore(store).entries(_filter(args))
    now = store.server_time()

    def text() -> str:
        if not entries:
            return "the dead-letter queue is empty" + (
                " (for these filters)" if _filter(args) != DeadLetterFilter() else ""
            )
        rows = [
            [e.job_id, e.task, e.queue, str(len(e.attempts)), duration(now - e.dead_lettered_at), e.reason]
            for e in entries
        ]
        return table(["JOB", "TASK", "QUEUE", "ATTEMPTS", "AGE", "REASON"], rows) + "".join(
            f"\ncorrupt entry {j}: {why}" for j, why in corrupt
        )

    _print(args, {"entries": [e.as_dict() for e in entries], "corrupt": [list(c) for c in corrupt]}, text)
    return 0


def cmd_dlq_show(args: argparse.Namespace) -> int:
    """One dead-lettered job and its whole story."""
    entry = DeadLetterStore(_store(args)).get(args.job_id)
    if entry is None:
        raise LookupError(f"no dead-letter entry for job {args.job_id!r}")

    def text() -> str:
        lines = [
            f"job        {entry.job_id}",
            f"task       {entry.task}",
            f"queue      {entry.queue} ({entry.adapter})",
            f"reason     {entry.reason}",
            f"payload    {entry.payload}",
            f"checkpoint {json.dumps(entry.checkpoint)}",
            "attempts:",
        ]
        for a in entry.attempts:
            ran = None if a.started is None or a.ended is None else a.ended - a.started
            lines.append(f"  #{a.attempt} on {a.worker}: {a.outcome} after {duration(ran)} ({a.reason})")
            if a.processes:
                lines.append("    processes it started, ended with it: " + "; ".join(a.processes))
            if a.stack:
                lines += ["    " + line for line in a.stack.splitlines()]
        return "\n".join(lines)

    _print(args, entry.as_dict(), text)
    return 0


def cmd_dlq_requeue(args: argparse.Namespace) -> int:
    """Enqueue dead-lettered jobs again, through their framework."""
    store = _store(args)
    dlq = DeadLetterStore(store)
    entries = _selected(args, dlq)
    done = dlq.requeue(
        entries, _adapters(store, {entry.adapter for entry in entries}, args, _celery_app(args))
    )
    _print(
        args, {"requeued": done}, lambda: f"requeued {len(done)} job(s)" + "".join(f"\n  {j}" for j in done)
    )
    return 0


def cmd_dlq_purge(args: argparse.Namespace) -> int:
    """Delete dead-letter entries (and their checkpoints)."""
    store = _store(args)
    dlq = DeadLetterStore(store)
    entries = _selected(args, dlq)
    if args.all and not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"purging {len(entries)} entries needs --yes when not asked at a terminal")
        answer = input(f"purge {len(entries)} dead-letter entries? [y/N] ")
        if answer.strip().lower() not in {"y", "yes"}:
            sys.stdout.write("nothing purged\n")
            return 0
    count = dlq.purge([e.job_id for e in entries])
    _print(args, {"purged": count}, lambda: f"purged {count} entr{'y' if count == 1 else 'ies'}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """A sweeper outside the workers: recovers (or fails, or dead-letters) the jobs of dead and frozen
    workers. Safe to run several, and beside the workers' own sweepers: claims are atomic."""
    store = _store(args)
    celery_app = _celery_app(args)
    adapters = _adapters(store, _integrations(celery_app), args, celery_app)
    if not adapters:
        raise UsageError("no integration to sweep for: install RQ, or name the Celery app with --celery-app")
    sweeper = Sweeper(store, adapters, name=f"cli:{socket.gethostname()}:{os.getpid()}", sender="sweeper")
    counter = EventCounter(store)
    try:
        if args.once:
            report = sweeper.sweep_once()
            done = {
                "recovered": report.recovered,
                "failed": report.failed,
                "dead_lettered": report.dead_lettered,
                "republished": report.republished,
                "dead_workers": report.dead_workers,
                "corrupt": [job_id for job_id, _ in report.corrupt],
            }
            _print(args, done, lambda: ", ".join(f"{k}: {len(v)}" for k, v in done.items()))
            return 0
        sys.stdout.write(
            f"sweeping for {', '.join(sorted(adapters))} every {store.settings.sweep_interval:g} s\n"
        )
        sys.stdout.flush()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        sweeper.start()
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
        sweeper.stop()
        return 0
    finally:
        counter.close()


def cmd_kill(args: argparse.Namespace) -> int:
    """Stop a running job from outside: it ends failed (stopped), not recovered."""
    store = _store(args)
    record = store.record(args.job_id)
    if record is None or record.state is not LeaseState.RUNNING:
        raise LookupError(f"job {args.job_id} is not running under a lease")
    adapters = _adapters(store, {record.adapter}, args, _celery_app(args))
    user = "someone"
    with contextlib.suppress(Exception):  # no user name where the environment and passwd have none
        user = getpass.getuser()
    who = f"{user}@{socket.gethostname()}" + (f": {args.reason}" if args.reason else "")
    sweeper = Sweeper(store, adapters, name=f"cli-kill:{socket.gethostname()}:{os.getpid()}", sender="cli")
    if not sweeper.kill(args.job_id, who):
        raise LookupError(f"job {args.job_id} was not running any more")
    _print(args, {"stopped": args.job_id, "by": who}, lambda: f"stopped {args.job_id} (by {who})")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check the deployment and its configuration; exit 1 naming each problem and its fix."""
    from zombieguard.ops import doctor  # noqa: PLC0415

    config = current_config()
    target = RedisTarget.from_url(args.redis_url, "--redis-url") if args.redis_url else None
    if args.celery_app:
        config, app_target = load(REGISTRY["celery"].configuration or "")(args.celery_app)
        target = target or app_target
    if target is None and config.settings.redis_url:
        target = RedisTarget.from_url(config.settings.redis_url)
    if target is None:
        raise UsageError("no Redis named: pass --redis-url or set ZOMBIEGUARD_REDIS_URL")
    findings = doctor.check_policies(config)
    store, unreachable = doctor.check_redis(target, lambda t: LeaseStore.from_target(t, config.settings))
    findings += unreachable + doctor.check_tls(target)
    refused = doctor.check_access(store, target) if store is not None else []
    findings += refused
    if store is not None and not refused:  # else the checks below are refused as well
        findings += doctor.check_clock(store)
        findings += doctor.check_eviction(store, target.describe())
        findings += doctor.check_replicas(store, target)
    else:
        store = None
    for name, integration in REGISTRY.items():
        try:
            check = load(integration.checks)
        except IntegrationNotAvailable:
            continue
        findings += check(store, {"celery": args.celery_app}.get(name))

    def report() -> str:
        if not findings:
            return "no problems found"
        lines = [f"problem ({f.check}): {f.problem}\n  fix: {f.fix}" for f in findings]
        return "\n".join([*lines, f"{len(findings)} problem(s)"])

    _print(args, {"problems": [f.as_dict() for f in findings]}, report)
    return 1 if findings else 0


def _demo(args: argparse.Namespace) -> int:
    from zombieguard.demo import run_demo  # noqa: PLC0415 - the demo uses the integrations

    return run_demo(unguarded=args.unguarded, redis_url=args.redis_url, only=args.only)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", help="a glob on the task name")
    parser.add_argument("--queue")
    parser.add_argument("--reason")
    parser.add_argument("--older-than", type=float, metavar="SECONDS")
    parser.add_argument("--newer-than", type=float, metavar="SECONDS")


def cmd_metrics(args: argparse.Namespace) -> int:
    """Serve the deployment's metrics for Prometheus until interrupted."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415 - optional extra

        from zombieguard.ops.metrics import ClusterCollector  # noqa: PLC0415 - needs the extra
    except ImportError as exc:
        raise IntegrationNotAvailable(
            f"metrics need prometheus_client: pip install 'zombieguard[prometheus]' ({exc})"
        ) from None
    store = _store(args)
    store.server_time()  # fail now, with a clear message, if Redis is not there
    registry = CollectorRegistry()
    registry.register(ClusterCollector(store))
    server, thread = start_http_server(args.port, addr=args.addr, registry=registry)
    sys.stdout.write(f"serving zombieguard metrics on http://{args.addr}:{server.server_port}/metrics\n")
    sys.stdout.flush()
    try:
        thread.join()
    except KeyboardInterrupt:
        server.shutdown()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    # Global options work before or after the command: the command's copies default to "not given"
    # so that they never overwrite a value given before it.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--redis-url", help="the Redis holding the leases (default: ZOMBIEGUARD_REDIS_URL)")
    common.add_argument(
        "--rq-url", help="RQ's Redis, where it is not the leases' (default: RQ_REDIS_URL, else the leases')"
    )
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser = argparse.ArgumentParser(
        prog="zombieguard", description="Zombie-job protection for Celery and RQ."
    )
    parser.add_argument("--redis-url", default=None, help="the Redis holding the leases")
    parser.add_argument("--rq-url", default=None, help="RQ's Redis, where it is not the leases'")
    parser.add_argument("--json", action="store_true", default=False, help="print JSON for scripts")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", parents=[common], help="run the seed incident live: plain and guarded workers side by side"
    )
    demo.add_argument("--unguarded", action="store_true", help="the plain workers' run only")
    demo.add_argument(
        "--only", choices=sorted(REGISTRY), help="one framework (default: each that is installed)"
    )
    demo.set_defaults(run=_demo)

    status = commands.add_parser(
        "status", parents=[common], help="active guarded jobs, their age and progress"
    )
    status.add_argument("--queue")
    status.add_argument("--watch", action="store_true", help="refresh until interrupted (JSON: a line each)")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes with --watch")
    status.set_defaults(run=cmd_status)

    kill = commands.add_parser("kill", parents=[common], help="stop a running job: it ends failed (stopped)")
    kill.add_argument("job_id")
    kill.add_argument("--reason", help="why, recorded with who stopped it")
    kill.add_argument("--celery-app", help="module:app of the Celery app (to kill a Celery task)")
    kill.set_defaults(run=cmd_kill)

    sweep = commands.add_parser("sweep", parents=[common], help="a sweeper outside the workers")
    sweep.add_argument("--once", action="store_true", help="one sweep, then exit (for cron)")
    sweep.add_argument("--celery-app", help="module:app of the Celery app, to sweep Celery tasks too")
    sweep.set_defaults(run=cmd_sweep)

    doctor = commands.add_parser(
        "doctor", parents=[common], help="check the deployment and its configuration (exit 1 on problems)"
    )
    doctor.add_argument("--celery-app", help="module:app of the Celery app, to check its tasks too")
    doctor.set_defaults(run=cmd_doctor)

    metrics = commands.add_parser("metrics", parents=[common], help="serve metrics for Prometheus")
    metrics.add_argument("--port", type=int, default=9808, help="port to listen on (0: any free one)")
    metrics.add_argument("--addr", default="127.0.0.1", help="address to listen on (0.0.0.0: every one)")
    metrics.set_defaults(run=cmd_metrics)

    dlq = commands.add_parser("dlq", help="the dead-letter queue").add_subparsers(
        dest="dlq_command", required=True
    )
    listing = dlq.add_parser("list", parents=[common], help="dead-lettered jobs")
    _add_filters(listing)
    listing.set_defaults(run=cmd_dlq_list)
    show = dlq.add_parser("show", parents=[common], help="one job's whole story")
    show.add_argument("job_id")
    show.set_defaults(run=cmd_dlq_show)
    for name, run, helptext in (
        ("requeue", cmd_dlq_requeue, "enqueue jobs again"),
        ("purge", cmd_dlq_purge, "delete entries"),
    ):
        sub = dlq.add_parser(name, parents=[common], help=helptext)
        sub.add_argument("job_ids", nargs="*")
        sub.add_argument("--all", action="store_true", help="every entry matching the filters")
        sub.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        if name == "requeue":
            sub.add_argument(
                "--celery-app",
                help="module:app of the Celery app that re-publishes Celery tasks (ZOMBIEGUARD_CELERY_APP)",
            )
        _add_filters(sub)
        sub.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zombieguard`` command."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except LookupError as exc:
        sys.stderr.write(f"zombieguard: {exc.args[0] if exc.args else exc}\n")
        return 1
    except (UsageError, ConfigurationError, IntegrationNotAvailable, ValueError) as exc:
        sys.stderr.write(f"zombieguard: {exc}\n")
        return 2
    except redis.RedisError as exc:
        sys.stderr.write(f"zombieguard: Redis unreachable ({exc})\n")
        return 2
    except ZombieGuardError as exc:
        sys.stderr.write(f"zombieguard: {exc}\n")
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
