"""Fixtures for end-to-end tests with real worker processes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.rq_harness import RQHarness

if TYPE_CHECKING:  # Celery is imported only by the tests that use it (the RQ 2 run has none)
    from tests.support.celery_harness import CeleryHarness


@pytest.fixture
def rq_harness(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[RQHarness]:
    """Real rq workers on a queue of the test's own."""
    harness = RQHarness(redis_url, key_prefix, tmp_path)
    yield harness
    harness.close()


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A TCP server on loopback that accepts connections and never sends a byte; yields its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in accepted:
        conn.close()
    server.close()


@pytest.fixture
def celery_harness(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[CeleryHarness]:
    """Real celery workers on the Redis broker, on a queue of the test's own."""
    from tests.support.celery_harness import CeleryHarness  # noqa: PLC0415 - not in the RQ 2 run

    harness = CeleryHarness(redis_url, key_prefix, tmp_path)
    yield harness
    harness.close()


@pytest.fixture(params=["redis", "rabbitmq"])
def any_broker_harness(
    request: pytest.FixtureRequest, redis_url: str, key_prefix: str, tmp_path: Path
) -> Iterator[CeleryHarness]:
    """Real celery workers on each broker in turn (RabbitMQ skipped, saying why, where none answers)."""
    from tests.support.celery_harness import (  # noqa: PLC0415 - not in the RQ 2 run
        RABBITMQ_URL,
        CeleryHarness,
        rabbitmq_answers,
    )

    if request.param == "rabbitmq" and not rabbitmq_answers():
        pytest.skip(f"no RabbitMQ answers at {RABBITMQ_URL}")
    harness = CeleryHarness(redis_url, key_prefix, tmp_path, broker=request.param)
    yield harness
    harness.close()
