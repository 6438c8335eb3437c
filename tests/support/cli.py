"""Running the ``zombieguard`` command against a harness's Redis, as an operator would."""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import TYPE_CHECKING, Any

from tests.support.harness import REPO, ZOMBIEGUARD

if TYPE_CHECKING:  # each is imported only where its framework is installed
    from tests.support.celery_harness import CeleryHarness
    from tests.support.rq_harness import RQHarness


def rq_cli(harness: RQHarness, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the zombieguard command against the harness's Redis and key prefix."""
    result = subprocess.run(
        [ZOMBIEGUARD, "--redis-url", harness.redis_url, *args],
        env={**os.environ, "ZOMBIEGUARD_KEY_PREFIX": harness.key_prefix, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def rq_cli_json(harness: RQHarness, *args: str) -> Any:
    """:func:`rq_cli` with ``--json``: its parsed output."""
    return json.loads(rq_cli(harness, *args, "--json").stdout)


def celery_cli(harness: CeleryHarness, *args: str, env: dict[str, str] | None = None) -> Any:
    """Run ``zombieguard ... --json`` where the Celery app can be imported; its parsed output."""
    return json.loads(celery_cli_text(harness, *args, "--json", env=env))


def celery_cli_text(harness: CeleryHarness, *args: str, env: dict[str, str] | None = None) -> str:
    """Run ``zombieguard ...`` where the Celery app can be imported; what it printed."""
    result = subprocess.run(
        [ZOMBIEGUARD, "--redis-url", harness.redis_url, *args],
        env={**os.environ, **harness.env, **(env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def row_of(table: str, first: str) -> list[str]:
    """The cells of the row of a printed table whose first cell is ``first`` (cells are two or more
    spaces apart)."""
    for line in table.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == first:
            return cells
    raise AssertionError(f"no row for {first!r} in:\n{table}")
