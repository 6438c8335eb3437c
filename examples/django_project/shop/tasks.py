"""The same hanging call, as a Celery task and as an RQ job."""

import socket

from celery import shared_task


def fetch_report(port: int) -> bytes:
    """Waits for a server that accepted the connection and never answers."""
    conn = socket.create_connection(("127.0.0.1", port))
    return conn.recv(1)


@shared_task
def fetch_report_task(port: int) -> bytes:
    """``fetch_report`` as a Celery task (no time_limit: settings.ZOMBIEGUARD gives it 2 s)."""
    return fetch_report(port)
