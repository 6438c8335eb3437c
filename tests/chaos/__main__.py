"""``python -m tests.chaos``: one chaos run from the command line (``--help`` says what it takes).

Exit status 1 when a guarded run breaks the promise that every job ends exactly once; a plain run
(``--plain``) always exits 0, its table is what it is for.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.chaos.faults import FAULT_CLASSES
from tests.chaos.runner import RUNS_DIR, RunConfig, main_report
from tests.chaos.workers import CELERY_POOLS, RQ_CLASSES


def _names(allowed: Sequence[str], what: str) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"{what} {text!r}: each must be one of {', '.join(allowed)}")
        return names

    return parse


def parse_args(argv: Sequence[str] | None = None) -> RunConfig:
    """The run the command line asks for."""
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--framework", choices=("rq", "celery"), required=True)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one (always printed)")
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument(
        "--duration", type=float, default=30.0, help="seconds of faults (jobs sent over the first half)"
    )
    parser.add_argument(
        "--drain", type=float, default=60.0, help="seconds to wait, after the faults, for every job to end"
    )
    parser.add_argument(
        "--plain", action="store_true", help="plain RQ workers or plain Celery, no zombieguard"
    )
    parser.add_argument(
        "--workers",
        type=_names(tuple(RQ_CLASSES), "--workers"),
        default=("GuardedWorker", "GuardedWorker", "GuardedSimpleWorker"),
        help="RQ: one worker per entry (default GuardedWorker,GuardedWorker,GuardedSimpleWorker)",
    )
    parser.add_argument(
        "--pools",
        type=_names(CELERY_POOLS, "--pools"),
        default=("prefork", "threads", "solo"),
        help="Celery: one worker per entry, concurrency 2 (solo 1) (default prefork,threads,solo)",
    )
    parser.add_argument("--broker", choices=("redis", "rabbitmq"), default="redis", help="Celery's broker")
    parser.add_argument(
        "--faults",
        type=_names(FAULT_CLASSES, "--faults"),
        default=FAULT_CLASSES,
        help=f"fault classes to inject (default all: {','.join(FAULT_CLASSES)})",
    )
    parser.add_argument(
        "--sentinel",
        action="store_true",
        help="keep the leases on a Sentinel deployment of the run's own, and fail it over among the faults",
    )
    parser.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help=f"default {RUNS_DIR}")
    parser.add_argument("--keep", action="store_true", help="keep the run directory even when nothing broke")
    args = parser.parse_args(argv)
    return RunConfig(
        framework=args.framework,
        seed=args.seed,
        jobs=args.jobs,
        duration=args.duration,
        drain=args.drain,
        plain=args.plain,
        workers=args.workers,
        pools=args.pools,
        broker=args.broker,
        faults=args.faults,
        sentinel=args.sentinel,
        runs_dir=args.runs_dir,
        keep=args.keep,
    )


def _exit_on_signal(signum: int, _frame: object) -> None:
    """End the run the way Ctrl-C does, so its workers and its Redis are stopped with it."""
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    sys.exit(main_report(parse_args()))
