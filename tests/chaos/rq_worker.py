"""``rq worker`` with every logger (RQ's and zombieguard's) writing timestamped lines with the pid.

``python -m tests.chaos.rq_worker -w CLASS --url URL --name NAME QUEUE``: the arguments of
``rq worker``. RQ configures only its own logger; zombieguard's warnings would otherwise reach the
log without a time, and its informational lines not at all.
"""

from __future__ import annotations

import logging
import sys

from rq.cli.cli import main as rq_main

LOG_FORMAT = "%(asctime)s.%(msecs)03d %(process)d %(name)s %(levelname)s %(message)s"


def main() -> None:
    """Configure logging, then run ``rq worker`` with this process's arguments."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt="%H:%M:%S", stream=sys.stdout)
    sys.argv = ["rq", "worker", *sys.argv[1:]]
    rq_main()


if __name__ == "__main__":
    main()
