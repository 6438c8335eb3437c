"""RQ: healthy jobs behave exactly as in plain RQ under the guarded workers."""

from __future__ import annotations

import os
import subprocess

import pytest
from rq import Callback, Retry
from rq.command import send_stop_job_command
from rq.worker import Worker

from tests.e2e.rq_harness import RQ_BIN, RQHarness, wait_until

pytestmark = pytest.mark.slow

CLASSES = ["GuardedWorker", "GuardedSimpleWorker"]
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
        on_success=Callback("tests.rq_jobs.on_success"),
    )
    dependent = rq_harness.queue.enqueue("tests.rq_jobs.add", 1, 1, depends_on=ok)
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
    assert "ValueError: boom" in retried.latest_result().exc_string
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
        env={**os.environ, **rq_harness.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    rq_harness.worker_names.append("zgw-options")
    assert result.returncode == 0, result.stdout + result.stderr
