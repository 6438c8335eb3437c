"""Send a healthy task and a hanging one; show what became of each. Exit 1 if the zombie was not caught."""

from __future__ import annotations

import socket
import sys
import time

from tasks import fetch_report, resize


def main() -> int:
    """Run the scenario against a worker of ``tasks.app``."""
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    started = time.monotonic()
    healthy = resize.delay(5)
    zombie = fetch_report.delay(silent.getsockname()[1])
    print(f"healthy task: {healthy.get(timeout=30)} images")
    try:
        zombie.get(timeout=30)
    except Exception as exc:  # the task's failure, re-raised here
        elapsed = time.monotonic() - started
        print(f"hung task:    {zombie.state} after {elapsed:.1f} s: {type(exc).__name__}: {exc}")
    silent.close()
    return 0 if zombie.state == "FAILURE" else 1


if __name__ == "__main__":
    sys.exit(main())
