"""Both halves in one command: start a guarded Celery worker (threads pool), run main.py, stop it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    celery = str(Path(sys.executable).with_name("celery"))
    worker = subprocess.Popen(
        [celery, "-A", "tasks", "worker", "--pool", "threads", "--concurrency", "4", "--loglevel", "warning"],
        cwd=HERE,
    )
    try:
        code = subprocess.call([sys.executable, "main.py"], cwd=HERE)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    sys.exit(code)
