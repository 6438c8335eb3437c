"""Django: a throwaway project with ``zombieguard.integrations.django`` installed; ``manage.py check``
reports invalid settings naming the key, the settings are read lazily, and ``manage.py zombieguard``
runs the CLI with them against real Redis."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import REPO
from tests.support.rq_harness import RQHarness, exc_string

pytestmark = pytest.mark.slow

MANAGE = """
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
from django.core.management import execute_from_command_line
execute_from_command_line(sys.argv)
"""


def project(tmp_path: Path, zombieguard: dict[str, Any]) -> Path:
    """A Django project whose settings hold ``ZOMBIEGUARD = zombieguard``."""
    (tmp_path / "manage.py").write_text(MANAGE)
    (tmp_path / "settings.py").write_text(
        f'SECRET_KEY = "test"\nINSTALLED_APPS = ["zombieguard.integrations.django"]\n'
        f"ZOMBIEGUARD = {zombieguard!r}\n"
    )
    return tmp_path


def manage(where: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOMBIEGUARD_")}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=where,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_manage_py_check_fails_naming_an_invalid_zombieguard_key(tmp_path: Path) -> None:
    where = project(tmp_path, {"REDIS_URL": "redis://127.0.0.1:6379/0", "DEFAULTS": {"hard_timout": 5}})
    result = manage(where, "check")
    assert result.returncode == 1
    assert "zombieguard.E001" in result.stderr
    assert "hard_timout" in result.stderr


def test_manage_py_check_passes_valid_settings_and_warns_when_no_redis_is_named(tmp_path: Path) -> None:
    valid = manage(
        project(tmp_path, {"REDIS_URL": "redis://127.0.0.1:6379/0", "DEFAULTS": {"hard_timeout": 5}}), "check"
    )
    assert valid.returncode == 0, valid.stderr
    assert "zombieguard" not in valid.stderr
    no_redis = manage(project(tmp_path, {"DEFAULTS": {"hard_timeout": 5}}), "check")
    assert no_redis.returncode == 0
    assert "zombieguard.W001" in no_redis.stderr


def test_the_zombieguard_setting_is_read_lazily_so_override_settings_applies(tmp_path: Path) -> None:
    where = project(tmp_path, {"REDIS_URL": "redis://127.0.0.1:6379/0", "DEFAULTS": {"hard_timeout": 5}})
    script = (
        "from django.test import override_settings\n"
        "from zombieguard.policy import current_config\n"
        "print(current_config().policy_for('t').hard_timeout)\n"
        "with override_settings(ZOMBIEGUARD={'DEFAULTS': {'hard_timeout': 7}}):\n"
        "    print(current_config().policy_for('t').hard_timeout)\n"
        "print(current_config().policy_for('t').hard_timeout)\n"
    )
    result = manage(where, "shell", "-c", script)
    assert result.returncode == 0, result.stderr
    # (the last lines: Django 5.2's shell first says what it imported)
    assert [float(line) for line in result.stdout.splitlines()[-3:]] == [5, 7, 5]


def test_manage_py_zombieguard_runs_the_cli_with_the_django_settings(
    tmp_path: Path, rq_harness: RQHarness
) -> None:
    rq_harness.start_worker("GuardedWorker")
    job = rq_harness.enqueue("add", 1, 2)
    rq_harness.wait_status(job, ["finished"], 15)
    settings = {"REDIS_URL": rq_harness.redis_url, "KEY_PREFIX": rq_harness.key_prefix}
    sound = manage(project(tmp_path, settings), "zombieguard", "doctor", "--json")
    assert sound.returncode == 0, sound.stderr
    assert json.loads(sound.stdout) == {"problems": []}
    status = manage(tmp_path, "zombieguard", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert rq_harness.queue_name in json.dumps(json.loads(status.stdout))  # the prefix came from settings
    risky = {**settings, "DEFAULTS": {"lease_ttl": 10, "heartbeat_interval": 8}}
    wrong = manage(project(tmp_path, risky), "zombieguard", "doctor")
    assert wrong.returncode == 2
    assert "heartbeat_interval=8 is invalid: it must be at most half of lease_ttl=10" in wrong.stderr


def test_a_django_rq_worker_with_the_guarded_class_enforces_the_limits_of_settings_zombieguard(
    tmp_path: Path, rq_harness: RQHarness
) -> None:
    if importlib.util.find_spec("django_rq") is None:
        pytest.skip("django-rq is not installed (pip install '.[test]' installs it)")
    where = project(tmp_path, {})
    (where / "settings.py").write_text(
        'SECRET_KEY = "test"\n'
        'INSTALLED_APPS = ["django_rq", "zombieguard.integrations.django"]\n'
        f"RQ_QUEUES = {{{rq_harness.queue_name!r}: {{'URL': {rq_harness.redis_url!r}}}}}\n"
        f"ZOMBIEGUARD = {{'REDIS_URL': {rq_harness.redis_url!r}, 'KEY_PREFIX': {rq_harness.key_prefix!r},"
        " 'DEFAULTS': {'hard_timeout': 1, 'lease_ttl': 2, 'overdue_grace': 1}}\n"
    )
    name = f"zgw-django-{rq_harness.queue_name}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOMBIEGUARD_")}
    log = (rq_harness.workdir / f"{name}.log").open("wb")
    worker = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "rqworker",
            "--worker-class",
            "zombieguard.integrations.rq.GuardedWorker",
            "--name",
            name,
            rq_harness.queue_name,
        ],
        cwd=where,
        env={**env, "PYTHONPATH": f"{where}:{REPO}"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    rq_harness.workers.append(worker)
    rq_harness.worker_names.append(name)
    job = rq_harness.enqueue("sleep_then_return", rq_harness.notes, 30)  # RQ's own limit: 180 s
    assert rq_harness.wait_status(job, ["failed"], 20) == "failed"
    job.refresh()
    assert "hard_timeout of 1 s" in exc_string(job), rq_harness.log(-1)
