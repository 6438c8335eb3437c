"""The ``zombieguard`` command as an operator meets it: help, typos, finding Redis, tables for people,
JSON (errors included) for scripts, confirmations before bulk changes."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.cli import row_of
from tests.support.cli import rq_cli as cli
from tests.support.cli import rq_cli_json as cli_json
from tests.support.harness import REPO, ZOMBIEGUARD
from tests.support.rq_harness import RQHarness
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

LONG_LEASE = {"ZOMBIEGUARD_LEASE_TTL": "30", "ZOMBIEGUARD_HEARTBEAT_INTERVAL": "10"}


def run(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """``zombieguard ARGS`` with no Redis named unless ``env`` names one."""
    base = {k: v for k, v in os.environ.items() if k not in {"ZOMBIEGUARD_REDIS_URL", "RQ_REDIS_URL"}}
    return subprocess.run(
        [ZOMBIEGUARD, *args],
        env={**base, "PYTHONPATH": str(REPO), **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_bare_call_prints_the_help_and_version_prints_the_version() -> None:
    bare = run()
    assert bare.returncode == 0
    assert "Usage: zombieguard" in bare.stdout
    for command in ("status", "kill", "dlq", "doctor", "sweep", "metrics", "demo"):
        assert f"  {command} " in bare.stdout
    version = run("--version")
    assert (version.returncode, version.stdout.strip()) == (0, "zombieguard, version 0.1.0")


def test_a_mistyped_command_or_option_is_refused_with_the_nearest_one() -> None:
    command = run("stauts")
    assert command.returncode == 2
    assert "No such command 'stauts'. Did you mean 'status'?" in command.stderr
    option = run("dlq", "list", "--olderthan", "1h")
    assert option.returncode == 2
    # click's words differ between its versions: "Did you mean", "Possible options".
    assert "--olderthan" in option.stderr
    assert "--older-than" in option.stderr
    assert "Traceback" not in command.stderr + option.stderr


def test_with_json_an_error_is_a_json_object_with_its_exit_code(rq_harness: RQHarness) -> None:
    missing = cli(rq_harness, "dlq", "show", "no-such-job", "--json", check=False)
    assert missing.returncode == 1
    assert json.loads(missing.stdout) == {
        "error": "no dead-letter entry for job 'no-such-job' (zombieguard dlq list lists them)",
        "exit_code": 1,
    }
    down = run("--url", "redis://127.0.0.1:1/0", "status", "--json")
    assert down.returncode == 2
    error = json.loads(down.stdout)
    assert error["exit_code"] == 2
    assert error["error"].startswith("Redis unreachable (redis://127.0.0.1:1/0")


def test_without_a_url_the_cli_finds_redis_as_rq_does_through_rq_redis_url(rq_harness: RQHarness) -> None:
    rq_harness.start_worker("GuardedWorker")
    job = rq_harness.enqueue("long_job", rq_harness.notes, 5.0)
    wait_until(lambda: rq_harness.notes_of("started"), 15, what="started")
    env = {"RQ_REDIS_URL": rq_harness.redis_url, "ZOMBIEGUARD_KEY_PREFIX": rq_harness.key_prefix}
    found = run("status", "--json", env=env)
    assert found.returncode == 0, found.stderr
    assert [row["job_id"] for row in json.loads(found.stdout)["jobs"]] == [job.id]
    short = run(
        "-u", rq_harness.redis_url, "status", "--json", env={"ZOMBIEGUARD_KEY_PREFIX": rq_harness.key_prefix}
    )
    assert [row["job_id"] for row in json.loads(short.stdout)["jobs"]] == [job.id]


def test_status_shows_a_job_s_progress_and_message_and_lower_case_states(rq_harness: RQHarness) -> None:
    rq_harness.start_worker("GuardedWorker")
    job = rq_harness.enqueue("reports_progress", rq_harness.notes, 10.0)
    wait_until(
        lambda: (
            cli_json(rq_harness, "status")["jobs"] and cli_json(rq_harness, "status")["jobs"][0]["progress"]
        ),
        15,
        what="its progress",
    )
    shown = cli(rq_harness, "status").stdout
    row = row_of(shown, job.id)
    assert "3/10 'fetching page 3'" in row
    assert row[-1] == "running"
    assert "\x1b[" not in shown  # no colour into a pipe
    assert row_of(shown, "JOB")[:2] == ["JOB", "TASK"]


def test_status_says_a_sigkilled_worker_s_job_has_its_worker_gone_before_its_lease_expires(
    rq_harness: RQHarness,
) -> None:
    # A lone worker: no sweeper is left to recover its job until a worker starts again.
    worker = rq_harness.start_worker("GuardedWorker", env=LONG_LEASE)
    job = rq_harness.enqueue("long_job", rq_harness.notes, 60.0)
    wait_until(lambda: cli_json(rq_harness, "status")["jobs"], 15, what="leased")
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(10)
    wait_until(
        lambda: cli_json(rq_harness, "status")["jobs"][0]["state"] == "worker gone", 5, what="worker gone"
    )
    [row] = cli_json(rq_harness, "status")["jobs"]
    assert row["worker_gone"] is True
    assert row["lease_expires_in"] > 20  # well before its lease would have said so
    assert row_of(cli(rq_harness, "status").stdout, job.id)[-1] == "worker gone"
    [queue] = cli_json(rq_harness, "status")["queues"]
    assert queue["zombies"] == 1


def test_status_watch_into_a_pipe_prints_plain_tables_without_escape_codes(rq_harness: RQHarness) -> None:
    rq_harness.start_worker("GuardedWorker")
    rq_harness.enqueue("long_job", rq_harness.notes, 5.0)
    wait_until(lambda: rq_harness.notes_of("started"), 15, what="started")
    watch = subprocess.Popen(
        [ZOMBIEGUARD, "-u", rq_harness.redis_url, "status", "--watch", "--interval", "200ms"],
        env={**os.environ, "ZOMBIEGUARD_KEY_PREFIX": rq_harness.key_prefix},
        stdout=subprocess.PIPE,
        text=True,
    )
    stdout = watch.stdout
    assert stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")), daemon=True)
    reader.start()
    try:
        # Drawn again and again, one table after another.
        wait_until(lambda: sum(line.startswith("JOB  ") for line in lines) >= 3, 20, what="three tables")
    finally:
        watch.send_signal(signal.SIGINT)
        watch.wait(10)
        reader.join(10)
    assert watch.returncode == 0
    assert not any("\x1b" in line for line in lines)


def test_a_bulk_requeue_asks_first_and_does_nothing_when_refused(rq_harness: RQHarness) -> None:
    rq_harness.start_worker("GuardedWorker", env={"ZOMBIEGUARD_MAX_STALLS": "1"})
    pill = rq_harness.enqueue("kills_its_process", rq_harness.notes)
    rq_harness.wait_status(pill, ["failed"], 15)
    refused = cli(rq_harness, "dlq", "requeue", "--all", check=False)
    assert refused.returncode == 2
    assert "Requeue 1 dead-lettered job(s)? Pass --yes to confirm" in refused.stderr
    # At a terminal: asked, and answered no.
    controller, terminal = pty.openpty()
    asked = subprocess.Popen(
        [ZOMBIEGUARD, "-u", rq_harness.redis_url, "dlq", "requeue", "--all"],
        env={**os.environ, "ZOMBIEGUARD_KEY_PREFIX": rq_harness.key_prefix},
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    os.close(terminal)
    os.write(controller, b"n\n")
    out, _ = asked.communicate(timeout=30)
    os.close(controller)
    assert asked.returncode == 0
    assert b"Requeue 1 dead-lettered job(s)? [y/N]" in out
    assert b"nothing requeued" in out
    assert [e["job_id"] for e in cli_json(rq_harness, "dlq", "list")["entries"]] == [pill.id]
    assert cli_json(rq_harness, "dlq", "requeue", "--all", "--yes")["requeued"] == [pill.id]


def test_dlq_filters_take_durations_and_json_keeps_the_payload_as_json(rq_harness: RQHarness) -> None:
    rq_harness.start_worker("GuardedWorker", env={"ZOMBIEGUARD_MAX_STALLS": "1"})
    pill = rq_harness.enqueue("kills_its_process", rq_harness.notes)
    rq_harness.wait_status(pill, ["failed"], 15)
    assert [e["job_id"] for e in cli_json(rq_harness, "dlq", "list", "--newer-than", "1h")["entries"]] == [
        pill.id
    ]
    assert cli_json(rq_harness, "dlq", "list", "--older-than", "1h30m")["entries"] == []
    shown = cli_json(rq_harness, "dlq", "show", pill.id)
    assert isinstance(shown["payload"], dict), shown["payload"]


@pytest.mark.parametrize("form", ["proj", "proj.celery", "proj:app", "proj.celery:app"])
def test_the_celery_app_is_found_from_each_form_celery_a_takes(
    rq_harness: RQHarness, tmp_path: Path, form: str
) -> None:
    package = tmp_path / "proj"
    package.mkdir()
    (package / "__init__.py").write_text("from .celery import app\n")  # Celery's own layout
    (package / "celery.py").write_text(
        "from celery import Celery\n\n"
        f"app = Celery('proj', broker={rq_harness.redis_url!r})\n"
        f"app.conf.zombieguard = {{'key_prefix': {rq_harness.key_prefix!r}}}\n"
    )
    rq_harness.start_worker("GuardedWorker")
    job = rq_harness.enqueue("long_job", rq_harness.notes, 5.0)
    wait_until(lambda: rq_harness.notes_of("started"), 15, what="started")
    result = run("-A", form, "status", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # The app's Redis and its key prefix: the RQ job running there is seen through them.
    assert [row["job_id"] for row in json.loads(result.stdout)["jobs"]] == [job.id]


def test_dlq_show_says_how_each_attempt_of_an_rq_poison_pill_ended(rq_harness: RQHarness) -> None:
    rq_harness.start_worker("GuardedWorker", env={"ZOMBIEGUARD_MAX_STALLS": "1"})
    pill = rq_harness.enqueue("kills_its_process", rq_harness.notes)
    rq_harness.wait_status(pill, ["failed"], 15)
    attempts = cli_json(rq_harness, "dlq", "show", pill.id)["attempts"]
    assert [a["reason"] for a in attempts] == ["its horse died: killed by signal 9 (SIGKILL)"] * 2
    assert "its horse died: killed by signal 9 (SIGKILL)" in cli(rq_harness, "dlq", "show", pill.id).stdout


def test_status_watch_on_a_terminal_redraws_a_coloured_table_in_place(rq_harness: RQHarness) -> None:
    rq_harness.start_worker("GuardedWorker")
    rq_harness.enqueue("long_job", rq_harness.notes, 5.0)
    wait_until(lambda: rq_harness.notes_of("started"), 15, what="started")
    controller, terminal = pty.openpty()
    watch = subprocess.Popen(
        [ZOMBIEGUARD, "-u", rq_harness.redis_url, "status", "--watch", "-n", "200ms"],
        env={**os.environ, "ZOMBIEGUARD_KEY_PREFIX": rq_harness.key_prefix, "TERM": "xterm"},
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    seen = b""
    try:
        deadline = time.monotonic() + 20
        while seen.count(b"\x1b[2J") < 3 and time.monotonic() < deadline:
            if select.select([controller], [], [], 0.5)[0]:
                seen += os.read(controller, 65536)
    finally:
        watch.send_signal(signal.SIGINT)
        watch.wait(10)
        os.close(controller)
    assert seen.count(b"\x1b[2J") >= 3  # the screen cleared before each drawing
    assert b"\x1b[32m" in seen  # the running job's row in green
    assert b"Ctrl-C to stop" in seen


@pytest.mark.parametrize(
    ("command", "key"), [(("sweep",), "sweeping"), (("metrics", "--port", "0"), "serving")]
)
def test_a_command_that_goes_on_running_says_what_it_serves_as_one_json_line(
    rq_harness: RQHarness, command: tuple[str, ...], key: str
) -> None:
    running = subprocess.Popen(
        [ZOMBIEGUARD, "-u", rq_harness.redis_url, *command, "--json"],
        env={**os.environ, "ZOMBIEGUARD_KEY_PREFIX": rq_harness.key_prefix},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert running.stdout is not None
        said = json.loads(running.stdout.readline())
    finally:
        running.terminate()
        running.wait(10)
    assert key in said, said
