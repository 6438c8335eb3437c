"""zombieguard kill: a hung job whose lease is still being renewed is stopped from outside, on every
execution model, and ends failed (stopped), not recovered."""

from __future__ import annotations

import pytest

from tests.support.celery_harness import CeleryHarness
from tests.support.cli import celery_cli, rq_cli_json
from tests.support.rq_harness import RQHarness, exc_string
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("cls", ["GuardedWorker", "GuardedSimpleWorker"])
def test_kill_stops_a_hung_rq_job_and_it_ends_failed_not_recovered(rq_harness: RQHarness, cls: str) -> None:
    rq_harness.start_worker(cls)
    job = rq_harness.enqueue("beats_then_stalls", rq_harness.notes, 0)
    wait_until(lambda: rq_harness.notes_of("stopped-beating"), 15, what="running, making no progress")
    stopped = rq_cli_json(rq_harness, "kill", job.id, "--reason", "seed incident")
    assert stopped["stopped"] == job.id
    assert stopped["by"].endswith(": seed incident")
    rq_harness.wait_status(job, ["failed"], 10)
    assert "zombieguard.JobStopped" in exc_string(job)
    nxt = rq_harness.enqueue("add", 2, 3)  # the worker is free again
    rq_harness.wait_status(nxt, ["finished"], 15)
    assert rq_harness.status(job) == "failed"  # not recovered in the meantime
    record = rq_harness.client.hget("{" + rq_harness.key_prefix + "}:lease:" + job.id, "history")
    assert record is not None
    assert b"seed incident" in record


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_kill_stops_a_hung_celery_task_and_it_ends_failed_not_recovered(
    celery_harness: CeleryHarness, pool: str
) -> None:
    celery_harness.start_worker(pool, concurrency=1)  # one slot: the next task runs only once it is free
    result = celery_harness.send("beats_then_stalls", celery_harness.notes, 0)
    wait_until(lambda: celery_harness.notes_of("stopped-beating"), 15, what="running, making no progress")
    stopped = celery_cli(celery_harness, "kill", result.id, "--celery-app", "tests.support.celery_app:app")
    assert stopped["stopped"] == result.id
    celery_harness.wait_state(result, {"FAILURE"}, 10)
    assert type(result.result).__name__ == "Terminated"
    # The worker stops the body at its next renewal and takes work again.
    assert celery_harness.send("add", 2, 3).get(timeout=15) == 5
    assert celery_harness.state(result) == "FAILURE"
