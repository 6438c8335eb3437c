"""Everything in one command: a guarded Celery worker and a guarded django-rq worker, main.py against
both, then the workers stopped."""

import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    celery = str(Path(sys.executable).with_name("celery"))
    workers = [
        subprocess.Popen(
            [
                celery,
                "-A",
                "shop",
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                "4",
                "--loglevel",
                "warning",
            ],
            cwd=HERE,
        ),
        subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "rqworker",
                "--worker-class",
                "zombieguard.integrations.rq.GuardedWorker",
                "default",
            ],
            cwd=HERE,
        ),
    ]
    try:
        code = subprocess.call([sys.executable, "main.py"], cwd=HERE)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(30)
    sys.exit(code)
