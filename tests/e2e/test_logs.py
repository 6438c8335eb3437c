"""What a guarded worker writes in its framework's log: that zombieguard guards it, and one plain line
for each limit, kill and lease loss, naming the job, the task, the attempt and what happens next."""

from __future__ import annotations

import re

import pytest

from tests.support.celery_harness import CeleryHarness
from tests.support.cli import celery_cli, rq_cli
from tests.support.rq_harness import RQHarness
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

TIME = r"\d\d:\d\d:\d\d"  # RQ's own format: '%(asctime)s %(message)s', date format '%H:%M:%S'
STOPPED_BY_KILL = (
    r"stopped by \S+@\S+: incident 42; the job ends failed \(stopped\)\. This attempt is stopped"
)
"""What a worker's log says of its job's lease after ``zombieguard kill --reason "incident 42"``."""


@pytest.mark.parametrize("cls", ["GuardedWorker", "GuardedSimpleWorker"])
def test_an_rq_worker_says_at_start_that_zombieguard_guards_it_in_rq_s_log_format(
    rq_harness: RQHarness, cls: str
) -> None:
    rq_harness.start_worker(cls)
    banner = wait_until(
        lambda: re.search(rf"^{TIME} zombieguard \S+ guards rq worker (.*)$", rq_harness.log(0), re.M),
        10,
        what="the banner",
    )
    assert f"({cls}: each job in " in banner.group(1)
    log = rq_harness.log(0)
    assert f"keys {{{rq_harness.key_prefix}}}:*" in log
    assert "lease_ttl 2 s" in log
    assert f"tasks:    every job of {rq_harness.queue_name}" in log


def test_a_celery_worker_says_at_start_that_zombieguard_guards_it_and_which_tasks(
    celery_harness: CeleryHarness,
) -> None:
    celery_harness.start_worker("threads")
    log = celery_harness.log(0)
    assert re.search(
        r"INFO/MainProcess\] zombieguard \S+ guards celery worker \S+ \(threads pool, concurrency 2\)", log
    )
    assert re.search(r"tasks:    \d+ guarded", log)


def test_an_rq_job_killed_in_c_code_at_its_limit_is_logged_as_zombieguard_s_kill_not_an_unexpected_death(
    rq_harness: RQHarness,
) -> None:
    rq_harness.start_worker("GuardedWorker")
    job = rq_harness.enqueue("stuck_in_c_code", rq_harness.notes, job_timeout=2)
    rq_harness.wait_status(job, ["failed"], 15)
    log = wait_until(
        lambda: "zombieguard stopped it" in rq_harness.log(0) and rq_harness.log(0), 5, what="RQ's line"
    )
    assert re.search(
        rf"^{TIME} rq job tests.support.rq_jobs.stuck_in_c_code\[{job.id}\] attempt 1 ran past its "
        r"hard_timeout of 2 s: stopped, and recorded failed \(timed out\)$",
        log,
        re.M,
    ), log
    assert f"job {job.id} failed (zombieguard stopped it: " in log or "FailedJobRegistry (zombieguard" in log
    assert "terminated unexpectedly" not in log


def test_a_job_stopped_with_zombieguard_kill_says_who_stopped_it_in_the_worker_s_log(
    rq_harness: RQHarness,
) -> None:
    rq_harness.start_worker("GuardedWorker")
    job = rq_harness.enqueue("long_job", rq_harness.notes, 30.0)
    wait_until(lambda: rq_harness.notes_of("started"), 15, what="started")
    rq_cli(rq_harness, "kill", job.id, "--reason", "incident 42")
    rq_harness.wait_status(job, ["failed"], 15)
    line = wait_until(
        lambda: re.search(
            rf"^{TIME} rq job \S+\[{job.id}\] attempt 1 lost its lease: (.*)$", rq_harness.log(0), re.M
        ),
        10,
        what="the lease loss",
    )
    assert re.fullmatch(
        STOPPED_BY_KILL,
        line.group(1),
    ), line.group(1)
    assert "terminated unexpectedly" not in rq_harness.log(0)


def test_a_celery_task_past_its_progress_limit_is_logged_as_hung_with_what_happens_next(
    celery_harness: CeleryHarness,
) -> None:
    celery_harness.start_worker("prefork", env={"ZOMBIEGUARD_PROGRESS_TIMEOUT": "1"})
    result = celery_harness.send("beats_then_stalls", celery_harness.notes, 2)
    celery_harness.wait_state(result, {"FAILURE"}, 20)
    assert re.search(
        rf"celery task \S+beats_then_stalls\[{result.id}\] attempt 1 made no progress within its "
        r"progress_timeout of 1 s: stopped, and recorded failed \(hung\)",
        celery_harness.log(0),
    ), celery_harness.log(0)


def test_a_celery_pool_process_killed_in_c_code_at_its_limit_is_logged_as_zombieguard_s_kill_not_an_error(
    celery_harness: CeleryHarness,
) -> None:
    celery_harness.start_worker("prefork", env={"ZOMBIEGUARD_HARD_TIMEOUT": "2"})
    result = celery_harness.send("stuck_in_c_code", celery_harness.notes)
    celery_harness.wait_state(result, {"FAILURE"}, 20)
    line = wait_until(
        lambda: re.search(
            r"^\[.*: (\w+)/MainProcess\] Process 'ForkPoolWorker-\d+' pid:\d+ exited with (.*)$",
            celery_harness.log(0),
            re.M,
        ),
        10,
        what="billiard's line",
    )
    assert line.group(1) == "WARNING"
    assert (
        line.group(2)
        == "'signal 9 (SIGKILL)': zombieguard killed it, as logged above; the pool starts another"
    )
    assert re.search(
        r"killing the process that runs it \(pid \d+\); the worker starts another", celery_harness.log(0)
    )


def test_a_celery_task_stopped_with_zombieguard_kill_says_who_stopped_it_in_the_worker_s_log(
    celery_harness: CeleryHarness,
) -> None:
    celery_harness.start_worker("prefork")
    result = celery_harness.send("long_task", celery_harness.notes, 30.0)
    celery_harness.wait_leased(result.id)
    celery_cli(celery_harness, "kill", result.id, "-A", "tests.support.celery_app", "--reason", "incident 42")
    line = wait_until(
        lambda: re.search(
            rf"celery task \S+\[{result.id}\] attempt 1 lost its lease: (.*)$", celery_harness.log(0), re.M
        ),
        15,
        what="the lease loss",
    )
    assert re.fullmatch(
        STOPPED_BY_KILL,
        line.group(1),
    ), line.group(1)
