"""The ``zombieguard`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

DEMO_PLAN = """\
zombieguard demo: the seed incident, live, on an embedded Redis (never a Redis you did not name).

  - a black-hole TCP server that accepts connections and never answers
  - two guarded RQ workers serving a stream of normal jobs
  - one job hung on the half-open socket; one stuck in C code holding the GIL
  - one worker SIGKILLed mid-job; one poison pill that kills every worker that runs it
  - a live view of each job's age and last progress while zombieguard stops, recovers and
    dead-letters; a closing summary of what happened and how long each took
  - --unguarded runs the same with plain RQ, to show the zombie staying "started"

The RQ integration that runs it is not part of this build yet; this is what it will do.
"""


def _demo(args: argparse.Namespace) -> int:
    sys.stdout.write(DEMO_PLAN)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        prog="zombieguard", description="Zombie-job protection for Celery and RQ."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the seed incident live, guarded or not")
    demo.add_argument("--unguarded", action="store_true", help="run it with plain RQ")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zombieguard`` command."""
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
