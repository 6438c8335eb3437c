"""Waiting in tests: poll a condition with a deadline, never sleep and hope."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(
    condition: Callable[[], Any],
    timeout: float,
    interval: float = 0.02,
    what: str = "",
    ignore: tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll until truthy; return the value. Fail naming ``what`` after ``timeout`` seconds. An
    exception of ``ignore`` (a server still starting) counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except ignore:
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not within {timeout} s: {what or condition}")
