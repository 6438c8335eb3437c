"""Helpers for tests of the core against real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.support.cleanup import delete_prefixed


@pytest.fixture
def app(redis_url: str, key_prefix: str) -> Iterator[Any]:
    """A Celery app (broker and result backend) on the test Redis, under a key prefix of the
    test's own, deleted afterwards."""
    from celery import Celery  # noqa: PLC0415 - the oldest venv of the matrix has no Celery

    celery = Celery("integration", set_as_current=False)
    options = {"global_keyprefix": f"{key_prefix}:"}
    celery.conf.update(
        broker_url=redis_url,
        broker_transport_options=options,
        result_backend=redis_url,
        result_backend_transport_options=options,
    )
    yield celery
    celery.close()
    client = redis.Redis.from_url(redis_url)
    delete_prefixed(client, f"{key_prefix}:*")
    client.close()


@pytest.fixture
def rq_markers(client: redis.Redis) -> Iterator[list[str]]:
    """Names (queues, job ids, workers) a test gave RQ: RQ's keys holding any of them are deleted
    afterwards, and the queues and workers unregistered."""
    seen: list[str] = []
    yield seen
    keys = [k for k in client.scan_iter(match="rq:*", count=1000) if any(m.encode() in k for m in seen)]
    if keys:
        client.delete(*keys)
    for name in seen:
        client.srem("rq:queues", f"rq:queue:{name}")
        client.srem("rq:workers", f"rq:worker:{name}")
