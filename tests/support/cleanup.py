"""Cleaning up after a test on a shared Redis: only its own keys."""

from __future__ import annotations

import redis


def delete_prefixed(client: redis.Redis, pattern: str) -> None:
    """Delete the keys matching ``pattern`` (the test's own)."""
    keys = list(client.scan_iter(match=pattern, count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
