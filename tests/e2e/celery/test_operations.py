"""Celery: the operator's commands on Celery tasks, next to RQ jobs."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.celery_harness import CeleryHarness
from tests.support.cli import celery_cli as cli
from tests.support.cli import celery_cli_text, row_of
from tests.support.harness import ZOMBIEGUARD
from tests.support.rq_harness import RQHarness
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


def test_a_dead_lettered_task_is_requeued_by_the_cli_with_its_original_id_and_arguments(
    celery_harness: CeleryHarness,
) -> None:
    celery_harness.start_worker("prefork")
    result = celery_harness.send("dies_the_first_times", celery_harness.notes, 4)
    celery_harness.wait_state(result, {"FAILURE"}, 30)
    assert type(result.result).__name__ == "WorkerLostError"
    [entry] = cli(celery_harness, "dlq", "list")["entries"]
    assert entry["job_id"] == result.id
    assert entry["adapter"] == "celery"
    assert len(entry["attempts"]) == 4
    requeued = cli(
        celery_harness, "dlq", "requeue", result.id, "--yes", "--celery-app", "tests.support.celery_app:app"
    )
    assert requeued["requeued"] == [result.id]
    celery_harness.wait_state(result, {"SUCCESS"}, 15)
    assert celery_harness.app.AsyncResult(result.id).result == "survived"
    assert cli(celery_harness, "dlq", "list")["entries"] == []


def test_status_lists_celery_tasks_next_to_rq_jobs_and_what_waits_in_a_named_app_s_queues(
    celery_harness: CeleryHarness, rq_harness: RQHarness
) -> None:
    celery_harness.start_worker("prefork")
    rq_harness.start_worker("GuardedSimpleWorker")
    task = celery_harness.send("long_task", celery_harness.notes, 4.0)
    job = rq_harness.enqueue("long_job", rq_harness.notes, 4.0)
    wait_until(
        lambda: celery_harness.notes_of("started") and rq_harness.notes_of("started"), 15, what="both run"
    )
    rows = cli(celery_harness, "status")["jobs"]
    assert {(row["adapter"], row["job_id"]) for row in rows} == {("celery", task.id), ("rq", job.id)}
    celery_row = next(row for row in rows if row["adapter"] == "celery")
    assert celery_row["task"] == "tests.support.celery_app.long_task"
    assert celery_row["queue"] == celery_harness.queue
    # What waits in a Celery queue is read through the app ZOMBIEGUARD_CELERY_APP names; unknown without.
    queue_rows = {
        named: next(q for q in cli(celery_harness, "status", env=env)["queues"] if q["adapter"] == "celery")
        for named, env in (
            ("unnamed", {}),
            ("named", {"ZOMBIEGUARD_CELERY_APP": "tests.support.celery_app:app"}),
        )
    }
    assert queue_rows["unnamed"]["waiting"] is None
    assert queue_rows["named"]["waiting"] == 0
    shown = celery_cli_text(celery_harness, "status")
    assert row_of(shown, celery_harness.queue)[:3] == [celery_harness.queue, "celery", "?"]
    assert "? Celery's waiting tasks are counted when the Celery app is named (-A proj)" in shown


def test_the_metrics_exporter_serves_the_stall_a_celery_worker_recovered(
    celery_harness: CeleryHarness,
) -> None:
    celery_harness.start_worker("prefork")
    result = celery_harness.send("long_task", celery_harness.notes, 1.0)
    started = wait_until(lambda: celery_harness.notes_of("started"), 15, what="started")
    celery_harness.wait_leased(result.id)
    os.kill(int(started[0].split()[1]), signal.SIGKILL)  # its pool process: a stall, recovered at once
    assert result.get(timeout=15) == "done"
    exporter = subprocess.Popen(
        [ZOMBIEGUARD, "--redis-url", celery_harness.redis_url, "metrics", "--port", "0"],
        env={**os.environ, **celery_harness.env},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert exporter.stdout is not None
        url = exporter.stdout.readline().split()[-1]
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = reply.read().decode()
    finally:
        exporter.terminate()
        exporter.wait(10)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }
    labels = (
        ("adapter", "celery"),
        ("queue", celery_harness.queue),
        ("task", "tests.support.celery_app.long_task"),
    )
    assert samples[("zombieguard_jobs_stalled_total", labels)] == 1
    assert samples[("zombieguard_jobs_recovered_total", labels)] == 1
    assert samples[("zombieguard_workers", ())] == 1


def test_a_queue_that_completes_nothing_while_it_has_work_is_alerted_and_recovers(
    celery_harness: CeleryHarness,
) -> None:
    celery_harness.start_worker("solo", env={"ZOMBIEGUARD_SILENCE_ALERT": "2"})
    assert celery_harness.send("add", 1, 1).get(timeout=15) == 2  # the queue completes a job
    slow = celery_harness.send("sleeper", celery_harness.notes, 6.0)  # then nothing for 6 s
    queued = celery_harness.send("add", 2, 2)  # while one more waits behind it
    silent = wait_until(lambda: celery_harness.notes_of("queue-events"), 10, what="the silence alert")
    kind, queue, running, waiting = silent[0].split()[1:]
    assert (kind, queue, running) == ("queue_silent", celery_harness.queue, "1")
    assert waiting.isdigit()  # what the broker says waits (the worker may have prefetched it)
    assert slow.get(timeout=15) == "slept"
    assert queued.get(timeout=15) == 4
    events = wait_until(
        lambda: len(celery_harness.notes_of("queue-events")) >= 2 and celery_harness.notes_of("queue-events"),
        10,
    )
    assert [line.split()[1] for line in events] == ["queue_silent", "queue_recovered"]
