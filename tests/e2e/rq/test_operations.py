"""RQ: the operator's commands on real workers, and Redis going away mid-job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.cli import row_of
from tests.support.cli import rq_cli as cli
from tests.support.cli import rq_cli_json as cli_json
from tests.support.harness import ZOMBIEGUARD, thaw, unconfigured
from tests.support.rq_harness import RQHarness, wait_until
from zombieguard.demo.embedded import EmbeddedRedis

pytestmark = pytest.mark.slow


def test_status_shows_each_active_job_with_its_age_progress_attempt_and_state(rq_harness: RQHarness) -> None:
    worker = rq_harness.start_worker("GuardedWorker")
    job = rq_harness.enqueue("long_job", rq_harness.notes, 6.0)
    wait_until(lambda: rq_harness.notes_of("started"), 10, what="started")
    time.sleep(0.6)
    [row] = cli_json(rq_harness, "status")["jobs"]
    assert row["job_id"] == job.id
    assert row["task"] == "tests.support.rq_jobs.long_job"
    assert row["queue"] == rq_harness.queue_name
    assert row["worker"] == rq_harness.worker_names[0]
    assert (row["attempt"], row["state"], row["adapter"]) == (1, "running", "rq")
    assert 0.5 <= row["age"] < 5
    assert row["last_progress_age"] < 1.5
    assert row_of(cli(rq_harness, "status").stdout, job.id)[-1] == "running"
    # Frozen (worker and horse), with no other worker to recover it: the lease runs out.
    groups = {os.getpgid(worker.pid), *(os.getpgid(pid) for pid in rq_harness.children())}
    for group in groups:
        os.killpg(group, signal.SIGSTOP)
    wait_until(lambda: cli_json(rq_harness, "status")["jobs"][0]["state"] == "stalled", 10, interval=0.3)
    assert row_of(cli(rq_harness, "status").stdout, job.id)[-1] == "stalled"
    thaw(groups)


def test_dlq_list_show_requeue_and_purge_work_on_dead_lettered_rq_jobs(rq_harness: RQHarness) -> None:
    rq_harness.start_worker("GuardedWorker", env={"ZOMBIEGUARD_MAX_STALLS": "1"})
    transient = rq_harness.enqueue("dies_the_first_times", rq_harness.notes, 2)
    rq_harness.wait_status(transient, ["failed"], 15)
    [entry] = cli_json(rq_harness, "dlq", "list")["entries"]
    assert (entry["job_id"], entry["task"]) == (transient.id, "tests.support.rq_jobs.dies_the_first_times")
    shown = cli_json(rq_harness, "dlq", "show", transient.id)
    assert [a["outcome"] for a in shown["attempts"]] == ["stalled", "stalled"]
    assert "stalled 2 times" in cli(rq_harness, "dlq", "show", transient.id).stdout

    assert cli_json(rq_harness, "dlq", "requeue", transient.id)["requeued"] == [transient.id]
    rq_harness.wait_status(transient, ["finished"], 15)
    assert transient.return_value() == "survived"
    assert cli_json(rq_harness, "dlq", "list")["entries"] == []

    pill = rq_harness.enqueue("kills_its_process", rq_harness.notes)
    rq_harness.wait_status(pill, ["failed"], 15)
    assert [e["job_id"] for e in cli_json(rq_harness, "dlq", "list", "--task", "*kills*")["entries"]] == [
        pill.id
    ]
    refused = cli(rq_harness, "dlq", "purge", "--all", check=False)
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert cli_json(rq_harness, "dlq", "purge", "--all", "--yes")["purged"] == 1
    assert cli_json(rq_harness, "dlq", "list")["entries"] == []


def test_bad_input_gets_one_clear_line_and_an_exit_code_not_a_traceback(rq_harness: RQHarness) -> None:
    missing = cli(rq_harness, "dlq", "show", "no-such-job", check=False)
    assert (missing.returncode, missing.stderr.strip()) == (
        1,
        "zombieguard: no dead-letter entry for job 'no-such-job' (zombieguard dlq list lists them)",
    )
    down = unconfigured("--redis-url", "redis://127.0.0.1:1/0", "status")
    assert down.returncode == 2
    assert down.stderr.startswith("zombieguard: Redis unreachable")
    assert "Traceback" not in down.stderr


@pytest.mark.parametrize("outage", ["unreachable", "restarted"])
def test_redis_going_away_for_a_few_seconds_mid_job_loses_nothing(
    tmp_path: Path, key_prefix: str, outage: str
) -> None:
    server = EmbeddedRedis(persistent=True).start()
    harness = RQHarness(server.url, key_prefix, tmp_path, env={"ZOMBIEGUARD_LEASE_TTL": "6"})
    try:
        harness.start_worker("GuardedWorker")
        job = harness.enqueue("long_job", harness.notes, 4.0)
        wait_until(lambda: harness.notes_of("started"), 10, what="started")
        if outage == "unreachable":
            assert server._process is not None
            os.kill(server._process.pid, signal.SIGSTOP)
            time.sleep(2.5)
            os.kill(server._process.pid, signal.SIGCONT)
        else:
            server.stop()
            time.sleep(1.5)
            server.start()
        harness.wait_status(job, ["finished"], 20)
        assert job.return_value() == "done"
        assert len(harness.notes_of("started")) == 1  # survived: not recovered, not re-run
        assert len(harness.notes_of("completed")) == 1
        nxt = harness.enqueue("add", 1, 1)
        harness.wait_status(nxt, ["finished"], 15)
    finally:
        harness.close()
        server.close()


def test_an_rq_queue_that_completes_nothing_while_jobs_wait_is_alerted_and_then_recovers(
    rq_harness: RQHarness,
) -> None:
    rq_harness.start_worker("GuardedWorker", env={"ZOMBIEGUARD_SILENCE_ALERT": "2"})
    first = rq_harness.enqueue("add", 1, 1)
    rq_harness.wait_status(first, ["finished"], 15)
    slow = rq_harness.enqueue("sleep_then_return", rq_harness.notes, 6.0)
    rq_harness.enqueue("add", 2, 2)  # waits behind it in the RQ queue
    silence = "{" + rq_harness.key_prefix + "}:silence"
    wait_until(lambda: rq_harness.client.hexists(silence, rq_harness.queue_name), 10, what="silence alert")
    rq_harness.wait_status(slow, ["finished"], 15)
    wait_until(lambda: not rq_harness.client.hexists(silence, rq_harness.queue_name), 10, what="recovery")
    assert "no job completed for" in rq_harness.log()
    # The sweeper logs the recovery just after it removes the alert.
    wait_until(lambda: "completing jobs again" in rq_harness.log(), 5, what="the recovery logged")


def test_a_standalone_sweeper_recovers_the_job_of_a_killed_worker_when_no_worker_is_left(
    rq_harness: RQHarness,
) -> None:
    victim = rq_harness.start_worker("GuardedWorker")
    job = rq_harness.enqueue("long_job", rq_harness.notes, 30.0)
    wait_until(lambda: rq_harness.notes_of("started"), 15, what="started")
    os.killpg(victim.pid, signal.SIGKILL)
    sweeper = subprocess.Popen(
        [ZOMBIEGUARD, "--redis-url", rq_harness.redis_url, "sweep"],
        env={
            **os.environ,
            "ZOMBIEGUARD_KEY_PREFIX": rq_harness.key_prefix,
            "ZOMBIEGUARD_SWEEP_INTERVAL": "0.2",
        },
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert rq_harness.wait_status(job, ["queued"], 40) == "queued"  # recovered: back on its queue
    finally:
        sweeper.terminate()
        assert sweeper.wait(10) == 0
    assert cli_json(rq_harness, "sweep", "--once") == {
        "recovered": [],
        "failed": [],
        "dead_lettered": [],
        "republished": [],
        "dead_workers": [],
        "corrupt": [],
    }


def test_status_has_a_line_per_queue_and_watch_keeps_refreshing(rq_harness: RQHarness) -> None:
    rq_harness.start_worker("GuardedWorker")
    done = rq_harness.enqueue("add", 1, 1)
    rq_harness.wait_status(done, ["finished"], 15)
    rq_harness.enqueue("long_job", rq_harness.notes, 6.0)
    rq_harness.enqueue("add", 2, 2)  # waits behind it
    wait_until(lambda: rq_harness.notes_of("started"), 15, what="started")
    [queue] = cli_json(rq_harness, "status")["queues"]
    assert (queue["queue"], queue["adapter"], queue["waiting"], queue["running"], queue["zombies"]) == (
        rq_harness.queue_name,
        "rq",
        1,
        1,
        0,
    )
    assert queue["last_success_age"] is not None
    assert queue["oldest_age"] >= 0
    assert row_of(cli(rq_harness, "status").stdout, rq_harness.queue_name)[:5] == [
        rq_harness.queue_name,
        "rq",
        "1",
        "1",
        "0",
    ]
    watch = subprocess.Popen(
        [
            ZOMBIEGUARD,
            "--redis-url",
            rq_harness.redis_url,
            "status",
            "--watch",
            "--json",
            "--interval",
            "0.2",
        ],
        env={**os.environ, "ZOMBIEGUARD_KEY_PREFIX": rq_harness.key_prefix},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert watch.stdout is not None
    refreshes = [json.loads(watch.stdout.readline()) for _ in range(3)]
    watch.send_signal(signal.SIGINT)
    assert watch.wait(10) == 0
    assert all(r["queues"][0]["running"] == 1 for r in refreshes)
