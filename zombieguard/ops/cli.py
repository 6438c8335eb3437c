"""The ``zombieguard`` command: what an operator touches at 3 a.m.

Every command speaks to people by default (tables, and colour on a terminal) and prints JSON with
``--json``, errors included. Redis is found the way ``rq`` finds it: ``--url``/``-u``, else the
configured ``redis_url`` (``ZOMBIEGUARD_REDIS_URL``), else the Celery app's (``-A``), else
``RQ_REDIS_URL``, else ``redis://localhost:6379/0``. Exit codes: 0 done, 1 something asked for was
not found (or a check failed), 2 bad input or Redis unreachable: one clear line, never a traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import getpass
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import click
import redis

from zombieguard import __version__
from zombieguard.adapter import JobAdapter
from zombieguard.errors import ConfigurationError, IntegrationNotAvailable, ZombieGuardError
from zombieguard.leases import LeaseState, LeaseStore, text
from zombieguard.leases.connection import RedisTarget
from zombieguard.ops.integrations import REGISTRY, load
from zombieguard.ops.stats import EventCounter
from zombieguard.ops.status import Status
from zombieguard.ops.terminal import duration, parse_duration, table
from zombieguard.policy import Config, current_config
from zombieguard.recovery.deadletter import DeadLetterEntry, DeadLetterFilter, DeadLetterStore
from zombieguard.recovery.sweeper import Sweeper

DEFAULT_URL = "redis://localhost:6379/0"


class UsageError(ZombieGuardError):
    """Bad input on the command line: reported as one line, exit code 2."""


class Duration(click.ParamType):  # type: ignore[type-arg] # generic from click 8.2 on only; 8.1 is supported
    """A duration in seconds, written ``90``, ``90s``, ``1.5m``, ``1h30m`` or ``2d``."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        """Seconds, or a usage error naming the option."""
        if isinstance(value, float):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()


@dataclass
class Options:
    """What the options before (or after) the command said."""

    url: str | None = None
    rq_url: str | None = None
    celery_app: str | None = None
    as_json: bool = False


def _options() -> Options:
    options: Options = click.get_current_context().find_object(Options) or Options()
    return options


def _common(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command takes, after its name too (``zombieguard status --json``)."""

    def keep(field: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
        def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
            if value not in (None, False):
                setattr(ctx.ensure_object(Options), field, value)
            return value

        return callback

    for decorator in (
        click.option(
            "--json",
            "as_json",
            is_flag=True,
            expose_value=False,
            callback=keep("as_json"),
            help="Print JSON (errors too), for scripts.",
        ),
        click.option(
            "-A",
            "--app",
            "--celery-app",
            "celery_app",
            expose_value=False,
            callback=keep("celery_app"),
            envvar="ZOMBIEGUARD_CELERY_APP",
            metavar="APP",
            help="The Celery app, as celery -A takes it (proj, proj.celery, proj:app; default:"
            " ZOMBIEGUARD_CELERY_APP).",
        ),
        click.option(
            "--rq-url",
            expose_value=False,
            callback=keep("rq_url"),
            metavar="URL",
            help="RQ's Redis, where it is not the leases' (default: RQ_REDIS_URL, else the leases').",
        ),
        click.option(
            "-u",
            "--url",
            "--redis-url",
            "url",
            expose_value=False,
            callback=keep("url"),
            metavar="URL",
            help=f"The Redis holding the leases (default: ZOMBIEGUARD_REDIS_URL, the Celery app's, "
            f"RQ_REDIS_URL, else {DEFAULT_URL}).",
        ),
    ):
        command = decorator(command)
    return command


def _target() -> tuple[RedisTarget, Config]:
    """Where the leases live, and the configuration to act with."""
    options = _options()
    config = current_config()
    app_target = None
    if options.celery_app:
        config, app_target = load(REGISTRY["celery"].configuration or "")(options.celery_app)
    if options.url:
        return RedisTarget.from_url(options.url, "--url"), config
    if config.settings.redis_url:
        return RedisTarget.from_url(config.settings.redis_url), config
    if app_target is not None:
        return app_target, config
    return RedisTarget.from_url(os.environ.get("RQ_REDIS_URL") or DEFAULT_URL, "RQ_REDIS_URL"), config


def _store() -> LeaseStore:
    target, config = _target()
    store = LeaseStore.from_target(target, config.settings)
    try:
        store.client.ping()
    except redis.RedisError as exc:
        raise redis.ConnectionError(f"{target.describe()}: {exc}") from None
    return store


def _adapters(store: LeaseStore, names: set[str]) -> dict[str, JobAdapter]:
    """The adapters of the integrations ``names`` (those not installed here are left out): Celery's
    acts through the app ``-A`` names; RQ's on the Redis ``--rq-url`` or ``RQ_REDIS_URL`` names,
    the leases' by default."""
    options = _options()
    given = {"celery": options.celery_app, "rq": options.rq_url or os.environ.get("RQ_REDIS_URL")}
    adapters: dict[str, JobAdapter] = {}
    for name, integration in REGISTRY.items():
        if name in names:
            with contextlib.suppress(IntegrationNotAvailable):
                adapters[name] = load(integration.adapter)(store.client, given.get(name))
    return adapters


def _integrations() -> set[str]:
    """The integrations an operation on every queue acts for: RQ, and Celery when its app is named."""
    return {"rq"} | ({"celery"} if _options().celery_app else set())


def _print(data: Any, view: Callable[[], str], *, line: bool = False) -> None:
    """``data`` as JSON with ``--json`` (on one ``line`` for a command that goes on running), else
    ``view()`` for people."""
    if _options().as_json:
        click.echo(json.dumps(data) if line else json.dumps(data, indent=2))
    else:
        click.echo(view())


def _confirm(question: str) -> bool:
    """Ask ``question`` at a terminal; refuse (a usage error) when there is none to ask at."""
    if not sys.stdin.isatty():
        raise UsageError(f"{question} Pass --yes to confirm when not asked at a terminal")
    return click.confirm(question, default=False)


class _Group(click.Group):
    """Suggests the nearest command for a mistyped one."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """Click's, with "did you mean" for a name it does not know."""
        name = args[0] if args else ""
        if args and self.get_command(ctx, name) is None and not name.startswith("-"):
            near = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise click.UsageError(f"No such command {name!r}.{hint}", ctx)
        return super().resolve_command(ctx, args)


@click.group(
    cls=_Group,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@_common
@click.version_option(__version__, "-V", "--version", prog_name="zombieguard")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Zombie-job protection for Celery and RQ: see what runs, stop what hangs, look at what died."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@cli.command()
@_common
@click.option("--queue", "-q", help="Only this queue.")
@click.option(
    "--watch", "-w", is_flag=True, help="Refresh until interrupted (with --json: a line each time)."
)
@click.option(
    "--interval", "-n", type=DURATION, default=2.0, show_default=True, help="Time between refreshes."
)
def status(queue: str | None, watch: bool, interval: float) -> None:
    """Every active guarded job (age, progress, state), and a line per queue."""
    store = _store()
    queues = {text(a) for a in store.client.hvals(store.queues_key)}
    adapters = _adapters(store, _integrations() & queues)
    if not watch:
        reading = Status.read(store, queue, adapters)
        _print(reading.as_dict(), reading.text)
        return
    stop = _stopped_by_signal()
    live = sys.stdout.isatty() and not _options().as_json
    while not stop.is_set():
        reading = Status.read(store, queue, adapters)
        if _options().as_json:
            click.echo(json.dumps(reading.as_dict()))
        elif live:  # a live table: the screen cleared, then drawn again
            click.clear()
            click.echo(f"every {duration(interval)}, Ctrl-C to stop\n\n{reading.text()}")
        else:
            click.echo(reading.text() + "\n")
        sys.stdout.flush()
        stop.wait(interval)


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


@cli.command()
@_common
@click.argument("job_id")
@click.option("--reason", "-r", help="Why, recorded with who stopped it.")
def kill(job_id: str, reason: str | None) -> None:
    """Stop a running (even hung) job: it ends failed, stopped, and is not recovered."""
    store = _store()
    record = store.record(job_id)
    if record is None or record.state is not LeaseState.RUNNING:
        raise LookupError(
            f"job {job_id} is not running under a lease (zombieguard status lists those that are)"
        )
    adapters = _adapters(store, {record.adapter})
    user = "someone"
    with contextlib.suppress(Exception):  # no user name where the environment and passwd have none
        user = getpass.getuser()
    who = f"{user}@{socket.gethostname()}" + (f": {reason}" if reason else "")
    sweeper = Sweeper(store, adapters, name=f"cli-kill:{socket.gethostname()}:{os.getpid()}", sender="cli")
    if not sweeper.kill(job_id, who):
        raise LookupError(f"job {job_id} was not running any more")
    _print({"stopped": job_id, "by": who}, lambda: f"stopped {job_id} (by {who})")


@cli.command()
@_common
@click.option("--once", is_flag=True, help="One sweep, then exit (for cron).")
def sweep(once: bool) -> None:
    """A sweeper outside the workers: recovers, fails or dead-letters the jobs of dead and frozen
    workers. Safe to run several, beside the workers' own: claims are atomic."""
    store = _store()
    adapters = _adapters(store, _integrations())
    if not adapters:
        raise UsageError("no integration to sweep for: install RQ, or name the Celery app with -A")
    sweeper = Sweeper(store, adapters, name=f"cli:{socket.gethostname()}:{os.getpid()}", sender="sweeper")
    counter = EventCounter(store)
    try:
        if once:
            report = sweeper.sweep_once()
            done = {
                "recovered": report.recovered,
                "failed": report.failed,
                "dead_lettered": report.dead_lettered,
                "republished": report.republished,
                "dead_workers": report.dead_workers,
                "corrupt": [job_id for job_id, _ in report.corrupt],
            }
            _print(done, lambda: ", ".join(f"{k.replace('_', ' ')}: {len(v)}" for k, v in done.items()))
            return
        interval = store.settings.sweep_interval
        _print(
            {"sweeping": sorted(adapters), "interval": interval},
            lambda: f"sweeping for {', '.join(sorted(adapters))} every {interval:g} s",
            line=True,
        )
        sys.stdout.flush()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        sweeper.start()
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
        sweeper.stop()
    finally:
        counter.close()


@cli.command()
@_common
def doctor() -> None:
    """Check the deployment and its configuration; exit 1 naming each problem and its fix."""
    from zombieguard.ops import doctor as checks  # noqa: PLC0415 - only this command needs it

    target, config = _target()
    findings = checks.check_policies(config)
    store, unreachable = checks.check_redis(target, lambda t: LeaseStore.from_target(t, config.settings))
    findings += unreachable + checks.check_tls(target)
    refused = checks.check_access(store, target) if store is not None else []
    findings += refused
    if store is not None and not refused:  # else the checks below are refused as well
        findings += checks.check_clock(store)
        findings += checks.check_eviction(store, target.describe())
        findings += checks.check_replicas(store, target)
    else:
        store = None
    for name, integration in REGISTRY.items():
        try:
            check = load(integration.checks)
        except IntegrationNotAvailable:
            continue
        findings += check(store, {"celery": _options().celery_app}.get(name))

    def report() -> str:
        if not findings:
            return click.style("no problems found", fg="green")
        lines = [
            f"{click.style('problem', fg='red')} ({f.check}): {f.problem}\n  fix: {f.fix}" for f in findings
        ]
        return "\n".join([*lines, f"{len(findings)} problem(s)"])

    _print({"problems": [f.as_dict() for f in findings]}, report)
    if findings:
        raise SystemExit(1)


@cli.command()
@_common
@click.option(
    "--port", "-p", type=int, default=9808, show_default=True, help="Port to listen on (0: any free one)."
)
@click.option(
    "--addr", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one)."
)
def metrics(port: int, addr: str) -> None:
    """Serve the deployment's metrics for Prometheus until interrupted."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415 - optional extra

        from zombieguard.ops.metrics import ClusterCollector  # noqa: PLC0415 - needs the extra
    except ImportError as exc:
        raise IntegrationNotAvailable(
            f"metrics need prometheus_client: pip install 'zombieguard[prometheus]' ({exc})"
        ) from None
    store = _store()
    store.server_time()  # fail now, with a clear message, if Redis is not there
    registry = CollectorRegistry()
    registry.register(ClusterCollector(store))
    server, thread = start_http_server(port, addr=addr, registry=registry)
    url = f"http://{addr}:{server.server_port}/metrics"
    _print({"serving": url}, lambda: f"serving zombieguard metrics on {url}", line=True)
    sys.stdout.flush()
    try:
        thread.join()
    except KeyboardInterrupt:
        server.shutdown()


@cli.command()
@_common
@click.option("--unguarded", is_flag=True, help="The plain workers' run only.")
@click.option(
    "--only", type=click.Choice(sorted(REGISTRY)), help="One framework (default: each that is installed)."
)
def demo(unguarded: bool, only: str | None) -> None:
    """Run the seed incident live: plain and guarded workers side by side."""
    from zombieguard.demo import run_demo  # noqa: PLC0415 - the demo uses the integrations

    # Only a Redis named explicitly: else the demo runs on one of its own, and keeps to it.
    raise SystemExit(run_demo(unguarded=unguarded, redis_url=_options().url, only=only))


# -- the dead-letter queue ------------------------------------------------------------------------
@cli.group(cls=_Group, invoke_without_command=True)
@click.pass_context
def dlq(ctx: click.Context) -> None:
    """The dead-letter queue: the jobs zombieguard gave up on, with their whole story."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def _filters(command: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in (
        click.option(
            "--newer-than",
            type=DURATION,
            metavar="DURATION",
            help="Dead-lettered at most this long ago (e.g. 1h).",
        ),
        click.option(
            "--older-than",
            type=DURATION,
            metavar="DURATION",
            help="Dead-lettered at least this long ago (e.g. 2d).",
        ),
        click.option("--reason", help="Only entries with this reason (stalled, hung, timed_out, ...)."),
        click.option("--queue", "-q", help="Only this queue."),
        click.option("--task", "-t", help="A glob on the task name (billing.*)."),
    ):
        command = decorator(command)
    return command


def _filter(**given: Any) -> DeadLetterFilter:
    return DeadLetterFilter(
        task=given.get("task"),
        queue=given.get("queue"),
        reason=given.get("reason"),
        older_than=given.get("older_than"),
        newer_than=given.get("newer_than"),
    )


def _selected(
    dlq_store: DeadLetterStore, job_ids: Sequence[str], every: bool, **filters: Any
) -> list[DeadLetterEntry]:
    if job_ids and every:
        raise UsageError("name job ids or use --all with filters, not both")
    if every:
        return dlq_store.entries(_filter(**filters))[0]
    if not job_ids:
        raise UsageError("name the job ids to act on, or use --all (with --task, --queue, ... to narrow it)")
    entries = []
    for job_id in job_ids:
        entry = dlq_store.get(job_id)
        if entry is None:
            raise LookupError(f"no dead-letter entry for job {job_id!r} (zombieguard dlq list lists them)")
        entries.append(entry)
    return entries


@dlq.command("list")
@_common
@_filters
def dlq_list(**filters: Any) -> None:
    """Dead-lettered jobs, oldest first."""
    store = _store()
    entries, corrupt = DeadLetterStore(store).entries(_filter(**filters))
    now = store.server_time()

    def view() -> str:
        if not entries:
            narrowed = " (for these filters)" if _filter(**filters) != DeadLetterFilter() else ""
            return f"the dead-letter queue is empty{narrowed}"
        rows = [
            [e.job_id, e.task, e.queue, str(len(e.attempts)), duration(now - e.dead_lettered_at), e.reason]
            for e in entries
        ]
        return table(["JOB", "TASK", "QUEUE", "ATTEMPTS", "AGE", "REASON"], rows) + "".join(
            f"\ncorrupt entry {j}: {why}" for j, why in corrupt
        )

    _print({"entries": [e.as_dict() for e in entries], "corrupt": [list(c) for c in corrupt]}, view)


@dlq.command("show")
@_common
@click.argument("job_id")
def dlq_show(job_id: str) -> None:
    """One dead-lettered job and its whole story: each attempt, how it ended, where it hung."""
    entry = DeadLetterStore(_store()).get(job_id)
    if entry is None:
        raise LookupError(f"no dead-letter entry for job {job_id!r} (zombieguard dlq list lists them)")

    def view() -> str:
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

    _print(entry.as_dict(), view)


@dlq.command("requeue")
@_common
@click.argument("job_ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every entry the filters match.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_filters
def dlq_requeue(job_ids: tuple[str, ...], every: bool, yes: bool, **filters: Any) -> None:
    """Enqueue dead-lettered jobs again, through their framework, as new attempts."""
    store = _store()
    dlq_store = DeadLetterStore(store)
    entries = _selected(dlq_store, job_ids, every, **filters)
    if every and not yes and entries and not _confirm(f"Requeue {len(entries)} dead-lettered job(s)?"):
        _print({"requeued": []}, lambda: "nothing requeued")
        return
    done = dlq_store.requeue(entries, _adapters(store, {entry.adapter for entry in entries}))
    _print({"requeued": done}, lambda: f"requeued {len(done)} job(s)" + "".join(f"\n  {j}" for j in done))


@dlq.command("purge")
@_common
@click.argument("job_ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every entry the filters match.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_filters
def dlq_purge(job_ids: tuple[str, ...], every: bool, yes: bool, **filters: Any) -> None:
    """Delete dead-letter entries, and their checkpoints."""
    store = _store()
    dlq_store = DeadLetterStore(store)
    entries = _selected(dlq_store, job_ids, every, **filters)
    if every and not yes and entries and not _confirm(f"Purge {len(entries)} dead-letter entries?"):
        _print({"purged": 0}, lambda: "nothing purged")
        return
    count = dlq_store.purge([e.job_id for e in entries])
    _print({"purged": count}, lambda: f"purged {count} entr{'y' if count == 1 else 'ies'}")


# -- running it ---------------------------------------------------------------------------------------
def _failure(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one line an exception out of a command ends in."""
    if isinstance(exc, LookupError):
        return 1, str(exc.args[0] if exc.args else exc)
    if isinstance(exc, redis.RedisError):
        return 2, f"Redis unreachable ({exc})"
    if isinstance(exc, click.ClickException):  # ConfigurationError among them
        return exc.exit_code, exc.format_message().removeprefix("zombieguard: ")
    if isinstance(exc, (UsageError, IntegrationNotAvailable, ValueError)):
        return 2, str(exc)
    return 1, str(exc)


@contextlib.contextmanager
def _reported(as_json: bool) -> Iterator[list[int]]:
    """Run a command; an error becomes its exit code and one line (a JSON object with ``--json``)."""
    code = [0]
    try:
        yield code
    except click.exceptions.Exit as exc:  # --help, --version
        code[0] = exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        code[0] = 1
    except SystemExit as exc:
        code[0] = exc.code if isinstance(exc.code, int) else 1
    except (ZombieGuardError, LookupError, ValueError, redis.RedisError, click.ClickException) as exc:
        code[0], line = _failure(exc)
        if as_json:
            click.echo(json.dumps({"error": line, "exit_code": code[0]}))
        elif isinstance(exc, click.UsageError) and not isinstance(exc, ConfigurationError):
            exc.show()
        else:
            click.echo(f"zombieguard: {line}", err=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zombieguard`` command; returns its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    with _reported("--json" in args) as code:
        returned = cli.main(args, prog_name="zombieguard", standalone_mode=False)
        code[0] = returned if isinstance(returned, int) else 0  # --help and --version return 0
    return code[0]


if __name__ == "__main__":
    raise SystemExit(main())
