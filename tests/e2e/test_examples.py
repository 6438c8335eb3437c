"""Every example runs with the command its README gives, against a Redis of its own, and catches its
zombie: the README's sample output is what it prints, times aside."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.harness import REPO
from zombieguard.demo.embedded import EmbeddedRedis

pytestmark = pytest.mark.slow

EXAMPLES = sorted(p.parent for p in (REPO / "examples").glob("*/README.md"))


def _block(readme: str, language: str) -> list[str]:
    match = re.search(rf"```{language}\n(.*?)```", readme, re.S)
    assert match, f"no {language} block"
    return [line for line in match.group(1).splitlines() if line.strip()]


def _shape(line: str) -> str:
    """A printed line without its timings, which vary."""
    return re.sub(r"\d+\.\d+ s", "N s", line).strip()


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_each_example_runs_with_its_readme_command_and_catches_its_zombie(
    example: Path, private_redis: EmbeddedRedis
) -> None:
    readme = (example / "README.md").read_text()
    command = _block(readme, "sh")[0].split("#")[0].split()
    assert command[0] == "python", command
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOMBIEGUARD_")}
    result = subprocess.run(
        [sys.executable, *command[1:]],
        cwd=example,
        env={**env, "REDIS_URL": private_redis.url, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    printed = [_shape(line) for line in result.stdout.splitlines()]
    for expected in _block(readme, "text"):
        assert _shape(expected) in printed, result.stdout
