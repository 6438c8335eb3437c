"""Both halves in one command: start a guarded RQ worker, run main.py against it, stop the worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    rq = str(Path(sys.executable).with_name("rq"))
    worker = subprocess.Popen(
        [
            rq,
            "worker",
            "-w",
            "zombieguard.integrations.rq.GuardedWorker",
            "--url",
            url,
            "zombieguard-example",
        ],
        cwd=HERE,
    )
    try:
        code = subprocess.call([sys.executable, "main.py"], cwd=HERE)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    sys.exit(code)
