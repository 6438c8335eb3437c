"""RQ: healthy jobs behave exactly as in plain RQ under the guarded workers."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from rq import Callback, Retry
from rq.command import send_kill_horse_command, send_stop_job_command
from rq.worker import Worker

from tests.support.rq_harness import RQ_BIN, RQHarness, exc_string, wait_until

pytestmark = pytest.mark.slow

CLASSES = ["GuardedWorker", "GuardedSimpleWorker"]
LEASE_TTL = 2.0
RETURNED_RETRY = hasattr(Worker, "handle_job_retry")
"""A job that returns ``Retry`` is run again: RQ 2.1 and later (on 2.0, ``Retry`` is its result)."""


@pytest.mark.parametrize("cls", CLASSES)
def test_results_callbacks_retries_and_dependencies_work_as_in_plain_rq(
    rq_harness: RQHarness, cls: str
) -> None:
    rq_harness.start_worker(cls)
    ok = rq_harness.enqueue(
        "sleep_then_return",
        rq_harness.notes,
        0.0,
        result_ttl=77,
        on_success=Callback("tests.support.rq_jobs.on_success"),
    )
    dependent = rq_harness.queue.enqueue("tests.support.rq_jobs.add", 1, 1, depends_on=ok)
    rq_harness.jobs.append(dependent)
    retried = rq_harness.enqueue("fails", rq_harness.notes, retry=Retry(max=1))
    if RETURNED_RETRY:
        asks_retry = rq_harness.enqueue("returns_retry", rq_harness.notes + "/../retry-notes")
        (rq_harness.workdir / "retry-notes").mkdir(exist_ok=True)
    for job in (ok, dependent):
        rq_harness.wait_status(job, ["finished"], 15)
    assert ok.return_value() == "slept"
    assert [line.split(" ", 1)[1] for line in rq_harness.notes_of("on_success")] == ["'slept'"]
    assert 0 < rq_harness.client.ttl(ok.key) <= 77
    assert ok.id in rq_harness.queue.finished_job_registry.get_job_ids()
    assert dependent.return_value() == 2
    rq_harness.wait_status(retried, ["failed"], 15)
    assert len(rq_harness.notes_of("started")) == 3  # sleep_then_return once; fails, and its one retry
    assert "ValueError: boom" in exc_string(retried)
    if RETURNED_RETRY:
        rq_harness.wait_status(asks_retry, ["finished"], 15)
        assert asks_retry.return_value() == "second time"

    # Nothing of zombieguard's stays running after healthy jobs (the last release is written soon after).
    def running_leases() -> list[bytes]:
        keys = rq_harness.client.scan_iter(match="{" + rq_harness.key_prefix + "}:lease:*")
        return [k for k in keys if rq_harness.client.hget(k, "state") == b"running"]

    wait_until(lambda: not running_leases(), 5, what="every lease released")


def test_send_stop_job_command_stops_a_guarded_job_as_rq_does(rq_harness: RQHarness) -> None:
    rq_harness.start_worker("GuardedWorker")
    job = rq_harness.enqueue("long_job", rq_harness.notes, 30.0)
    wait_until(lambda: rq_harness.notes_of("started"), 10, what="started")
    send_stop_job_command(rq_harness.client, job.id)
    rq_harness.wait_status(job, ["stopped"], 10)
    assert len(rq_harness.notes_of("started")) == 1  # stopped, not recovered
    nxt = rq_harness.enqueue("add", 1, 1)
    rq_harness.wait_status(nxt, ["finished"], 10)


def test_rq_kill_horse_command_ends_a_guarded_job_failed_as_in_plain_rq_not_recovered(
    rq_harness: RQHarness,
) -> None:
    rq_harness.start_worker("GuardedWorker")
    rq_harness.start_worker("GuardedWorker")  # would run a recovered attempt
    job = rq_harness.enqueue("long_job", rq_harness.notes, 30.0)
    wait_until(lambda: rq_harness.notes_of("started"), 10, what="started")
    worker_name = wait_until(
        lambda: getattr(rq_harness.queue.fetch_job(job.id), "worker_name", None), 5, what="worker"
    )
    send_kill_horse_command(rq_harness.client, worker_name)
    rq_harness.wait_status(job, ["failed"], 10)
    rq_harness.wait_for_state(job.id, lambda: rq_harness.lease_state(job.id), {"done"}, 5)
    history = rq_harness.client.hget("{" + rq_harness.key_prefix + "}:lease:" + job.id, "history") or b""
    assert b'"outcome":"stopped"' in history
    time.sleep(LEASE_TTL + 1)  # past the lease's expiry and a sweep: a stall would be running again
    assert len(rq_harness.notes_of("started")) == 1
    assert rq_harness.status(job) == "failed"


@pytest.fixture
def busy_machine() -> Iterator[None]:
    """Two busy loops for the test's duration (the teardown race below is lost mostly under load)."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    yield
    for burner in burners:
        burner.kill()
        burner.wait(5)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.usefixtures("busy_machine")
def test_a_guarded_worker_in_burst_mode_exits_at_once_every_time(rq_harness: RQHarness, cls: str) -> None:
    command = [RQ_BIN, "worker", "-w", f"zombieguard.integrations.rq.{cls}", "--burst"]
    command += ["--url", rq_harness.redis_url, rq_harness.queue_name]
    for run in range(6):
        started = time.monotonic()
        result = subprocess.run(
            [*command, "--name", f"zgw-burst-{run}"],
            env=rq_harness.environ(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        rq_harness.worker_names.append(f"zgw-burst-{run}")
        assert result.returncode == 0, result.stdout + result.stderr
        # A worker has to start Python and RQ (about a second here); its teardown must not wait on
        # its pub/sub thread (up to 60 s).
        assert time.monotonic() - started < 8, f"run {run} took {time.monotonic() - started:.1f} s"


def test_every_option_rq_worker_passes_is_accepted(rq_harness: RQHarness) -> None:
    options = {
        "--url": rq_harness.redis_url,
        "--worker-ttl": "30",
        "--job-monitoring-interval": "5",
        "--maintenance-interval": "60",
        "--results-ttl": "100",
        "--name": "zgw-options",
        "--serializer": "rq.serializers.JSONSerializer",
        "--log-format": "%(message)s",
    }
    command = [RQ_BIN, "worker", "-w", "zombieguard.integrations.rq.GuardedWorker", "--burst"]
    command += ["--disable-default-exception-handler", *(x for pair in options.items() for x in pair)]
    result = subprocess.run(
        [*command, rq_harness.queue_name],
        env=rq_harness.environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    rq_harness.worker_names.append("zgw-options")
    assert result.returncode == 0, result.stdout + result.stderr
