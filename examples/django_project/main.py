"""Send the hanging call to Celery and to django-rq; show that both were stopped at settings' limit."""

import os
import socket
import sys
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
django.setup()

import django_rq  # noqa: E402 - after django.setup()
from shop.tasks import fetch_report, fetch_report_task  # noqa: E402


def main() -> int:
    """Exit 1 unless both hung calls ended failed."""
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    port = silent.getsockname()[1]
    started = time.monotonic()
    task = fetch_report_task.delay(port)
    job = django_rq.get_queue("default").enqueue(fetch_report, port)
    try:
        task.get(timeout=30)
    except Exception as exc:  # the task's failure, re-raised here
        print(f"celery task: {task.state} after {time.monotonic() - started:.1f} s: {type(exc).__name__}")
    while time.monotonic() - started < 30 and not job.is_failed:
        time.sleep(0.2)
        job.refresh()
    status = job.get_status()
    print(f"rq job:      {getattr(status, 'value', status)} after {time.monotonic() - started:.1f} s")
    silent.close()
    return 0 if task.state == "FAILURE" and job.is_failed else 1


if __name__ == "__main__":
    sys.exit(main())
