"""Configuration mistakes stop a worker's start with one line naming the key and its fix, on RQ and on
Celery alike; configuration written where a newcomer writes it applies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rq import Worker

from tests.support.celery_harness import CeleryHarness
from tests.support.harness import REPO
from tests.support.rq_harness import RQ_BIN, RQHarness, exc_string

pytestmark = pytest.mark.slow

CELERY_BIN = str(Path(sys.executable).with_name("celery"))

MISTAKES = {
    "a misspelled variable": (
        {"ZOMBIEGUARD_HARDTIMEOUT": "5"},
        "ZOMBIEGUARD_HARDTIMEOUT (environment) is not a zombieguard setting; "
        "did you mean ZOMBIEGUARD_HARD_TIMEOUT?",
    ),
    "a malformed redis url": (
        {"ZOMBIEGUARD_REDIS_URL": "redis:/nope"},
        "ZOMBIEGUARD_REDIS_URL (environment): redis_url='redis:/nope' is invalid: the scheme must be",
    ),
    "a heartbeat over half the lease": (
        {"ZOMBIEGUARD_LEASE_TTL": "10", "ZOMBIEGUARD_HEARTBEAT_INTERVAL": "8"},
        "heartbeat_interval=8.0 is invalid: it must be at most half of lease_ttl=10.0",
    ),
}


def _start(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def _assert_one_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    ours = [line for line in result.stderr.splitlines() if "zombieguard:" in line]
    assert ours == [f"Error: zombieguard: {ours[0].split('zombieguard: ', 1)[1]}"], output
    assert expected in ours[0], output


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_an_rq_worker_with_a_configuration_mistake_stops_at_start_with_one_line_naming_the_key(
    rq_harness: RQHarness, mistake: str
) -> None:
    env, expected = MISTAKES[mistake]
    argv = [RQ_BIN, "worker", "-w", "zombieguard.integrations.rq.GuardedWorker", "--url"]
    result = _start([*argv, rq_harness.redis_url, rq_harness.queue_name], rq_harness.environ(env), REPO)
    _assert_one_line(result, expected)
    assert not Worker.all(queue=rq_harness.queue)  # it never registered


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_a_celery_worker_with_a_configuration_mistake_stops_at_start_with_one_line_naming_the_key(
    celery_harness: CeleryHarness, mistake: str
) -> None:
    env, expected = MISTAKES[mistake]
    argv = [CELERY_BIN, "-A", "tests.support.celery_app", "worker", "-P", "solo", "-Q", celery_harness.queue]
    result = _start(argv, {**os.environ, **celery_harness.env, **env}, REPO)
    _assert_one_line(result, expected)


def test_an_rq_worker_whose_settings_module_calls_configure_with_a_malformed_url_stops_in_one_line(
    rq_harness: RQHarness, tmp_path: Path
) -> None:
    (tmp_path / "zgsettings.py").write_text(
        'import zombieguard\n\nzombieguard.configure(redis_url="redis:/nope")\n'
    )
    env = rq_harness.environ({"PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"})
    argv = [RQ_BIN, "worker", "-c", "zgsettings", "-w", "zombieguard.integrations.rq.GuardedWorker"]
    result = _start([*argv, "--url", rq_harness.redis_url, rq_harness.queue_name], env, tmp_path)
    _assert_one_line(result, "configure(): redis_url='redis:/nope' is invalid")


def test_configure_in_an_rq_job_module_applies_its_policies_to_that_module_s_jobs(
    rq_harness: RQHarness, tmp_path: Path
) -> None:
    # The worker imports the module when it takes the module's first job: the rule applies to it.
    (tmp_path / "zgjobs2.py").write_text(
        "import time\n\nimport zombieguard\n\n"
        'zombieguard.configure(policies={"zgjobs2.*": {"hard_timeout": 1.5}})\n\n\n'
        "def sleepy(seconds: float) -> str:\n    time.sleep(seconds)\n    return 'done'\n"
    )
    rq_harness.start_worker("GuardedWorker", env={"PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"})
    job = rq_harness.queue.enqueue("zgjobs2.sleepy", 30)
    rq_harness.jobs.append(job)
    assert rq_harness.wait_status(job, ["failed", "finished"], 15) == "failed"
    assert "HardTimeLimitExceeded" in exc_string(job)
    assert "1.5" in exc_string(job)


def test_a_guard_written_above_app_task_applies_its_limit_on_celery(celery_harness: CeleryHarness) -> None:
    celery_harness.start_worker("threads")
    result = celery_harness.send("guarded_above_its_task", celery_harness.notes, 30.0)
    assert celery_harness.wait_state(result, {"FAILURE", "SUCCESS"}, 15) == "FAILURE"
    assert type(result.result).__name__ == "TimeLimitExceeded"
    assert celery_harness.notes_of("started")
    assert not celery_harness.notes_of("completed")
