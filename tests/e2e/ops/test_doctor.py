"""``zombieguard doctor`` against real Redis and real workers: each misconfiguration it names is caught,
and a sound deployment passes."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest
import redis

from tests.support.harness import REPO, ZOMBIEGUARD
from tests.support.rq_harness import RQHarness
from zombieguard.demo.embedded import EmbeddedRedis
from zombieguard.leases import LeaseStore
from zombieguard.leases.connection import RedisTarget
from zombieguard.ops.doctor import check_clock, check_tls

pytestmark = pytest.mark.slow


def run_doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``zombieguard doctor ARGS``."""
    return subprocess.run(
        [ZOMBIEGUARD, "doctor", *args],
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def doctor(harness: RQHarness, *args: str, env: dict[str, str] | None = None) -> tuple[int, Any]:
    """``zombieguard doctor --json`` on the harness's Redis and prefix; its exit code and parsed report."""
    result = run_doctor(
        "--redis-url",
        harness.redis_url,
        *args,
        "--json",
        env={"ZOMBIEGUARD_KEY_PREFIX": harness.key_prefix, **(env or {})},
    )
    assert result.stderr == "", result.stderr
    return result.returncode, json.loads(result.stdout)


def checks(report: Any) -> list[str]:
    return [problem["check"] for problem in report["problems"]]


def test_a_sound_deployment_with_guarded_rq_workers_passes_the_doctor(rq_harness: RQHarness) -> None:
    rq_harness.start_worker("GuardedWorker")
    job = rq_harness.enqueue("add", 1, 2)
    rq_harness.wait_status(job, ["finished"], 15)
    assert doctor(rq_harness) == (0, {"problems": []})


def test_the_doctor_names_an_unguarded_rq_worker_on_a_queue_where_guarded_jobs_run(
    rq_harness: RQHarness,
) -> None:
    rq_harness.start_worker("GuardedWorker")
    job = rq_harness.enqueue("add", 1, 2)
    rq_harness.wait_status(job, ["finished"], 15)
    rq_harness.start_worker("rq.worker.Worker")
    plain = rq_harness.worker_names[-1]
    code, report = doctor(rq_harness)
    assert code == 1
    assert checks(report) == ["rq-workers"]
    [problem] = report["problems"]
    assert plain in problem["problem"]
    assert rq_harness.queue_name in problem["problem"]
    assert "zombieguard.integrations.rq.GuardedWorker" in problem["fix"]


def test_the_doctor_reports_an_unreachable_redis_in_one_line_and_fails(rq_harness: RQHarness) -> None:
    result = run_doctor("--redis-url", "redis://127.0.0.1:1/0")
    assert result.returncode == 1
    assert "problem (redis): Redis at redis://127.0.0.1:1/0 is unreachable" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_the_doctor_refuses_a_heartbeat_interval_over_half_the_lease_ttl_in_one_line(
    rq_harness: RQHarness,
) -> None:
    result = run_doctor(
        "--redis-url",
        rq_harness.redis_url,
        env={"ZOMBIEGUARD_LEASE_TTL": "10", "ZOMBIEGUARD_HEARTBEAT_INTERVAL": "8"},
    )
    assert result.returncode == 2
    assert "heartbeat_interval=8.0 is invalid: it must be at most half of lease_ttl=10.0" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_the_doctor_explains_a_limit_that_passes_before_a_dead_workers_lease_expires_without_presence(
    rq_harness: RQHarness,
) -> None:
    durations = {"ZOMBIEGUARD_LEASE_TTL": "30", "ZOMBIEGUARD_PROGRESS_TIMEOUT": "5"}
    assert doctor(rq_harness, env=durations) == (0, {"problems": []})
    code, report = doctor(rq_harness, env={**durations, "ZOMBIEGUARD_PRESENCE_GRACE": "none"})
    assert code == 1
    assert checks(report) == ["durations"]
    [problem] = report["problems"]
    assert "progress_timeout of 5 s passes first" in problem["problem"]
    assert "turn presence on" in problem["fix"]
    code, report = doctor(rq_harness, env={**durations, "ZOMBIEGUARD_PRESENCE_GRACE": "30"})
    assert (code, checks(report)) == (1, ["durations"])
    assert "presence_grace 30 s is not shorter than lease_ttl 30 s" in report["problems"][0]["problem"]


def test_the_doctor_names_each_late_acked_celery_task_that_can_outlive_the_visibility_timeout(
    rq_harness: RQHarness,
) -> None:
    code, report = doctor(
        rq_harness,
        "--celery-app",
        "tests.support.doctor_celery_app:app",
        env={"ZG_DOCTOR_BROKER": rq_harness.redis_url},
    )
    assert code == 1
    assert checks(report) == ["celery-visibility"]
    [problem] = report["problems"]
    assert "task tests.support.doctor_celery_app.unlimited" in problem["problem"]
    assert "visibility_timeout is 30 s" in problem["problem"]


def test_the_doctor_reports_clock_skew_between_this_machine_and_redis(rq_harness: RQHarness) -> None:
    store = LeaseStore(rq_harness.client)
    assert check_clock(store) == []
    [finding] = check_clock(store, local_time=lambda: store.server_time() - 5)
    assert finding.check == "clock"
    assert "behind Redis's" in finding.problem


def test_a_celery_app_that_cannot_be_imported_is_one_line_of_bad_input(rq_harness: RQHarness) -> None:
    result = run_doctor("--redis-url", rq_harness.redis_url, "--celery-app", "no_such_module:app")
    assert result.returncode == 2
    assert result.stderr.startswith("zombieguard: -A 'no_such_module:app' cannot be imported")
    assert "Traceback" not in result.stderr


def test_the_doctor_names_what_an_acl_user_may_not_do_on_our_keys_and_passes_one_that_may(
    key_prefix: str,
) -> None:
    ours = "{" + key_prefix + "}*"
    users = {
        "zgall": (ours, ["+@all"]),
        "zgnoinfo": (ours, ["+@all", "-info"]),  # scripts read INFO
        "zgnowait": (ours, ["+@all", "-wait"]),
        "zgelsewhere": ("other*", ["+@all"]),
    }
    with EmbeddedRedis() as server:
        admin = redis.Redis.from_url(server.url)
        for name, (keys, commands) in users.items():
            admin.acl_setuser(
                name, enabled=True, passwords=["+pw"], keys=[keys], channels=[keys], commands=commands
            )
        found = {}
        for name in users:
            url = server.url.replace("redis://", f"redis://{name}:pw@")
            result = run_doctor("--redis-url", url, "--json", env={"ZOMBIEGUARD_KEY_PREFIX": key_prefix})
            found[name] = [
                (p["check"], p["problem"], p["fix"]) for p in json.loads(result.stdout)["problems"]
            ]
            assert result.returncode == (1 if found[name] else 0), result.stdout + result.stderr
        admin.close()
    assert found["zgall"] == []
    assert [(check, "'info'" in problem) for check, problem, _ in found["zgnoinfo"]] == [("acl", True)]
    assert [(check, "WAIT" in problem) for check, problem, _ in found["zgnowait"]] == [("acl", True)]
    assert {check for check, _, _ in found["zgelsewhere"]} == {"acl"}
    assert [problem.split(" (")[0] for _, problem, _ in found["zgelsewhere"]] == [
        "the Redis user 'zgelsewhere' may not run its scripts, which write its keys",
        "the Redis user 'zgelsewhere' may not hold its presence connection",
    ]
    fix = found["zgelsewhere"][0][2]
    assert fix == f"ACL SETUSER zgelsewhere ~{ours} &{ours} +@all"
    assert all("pw" not in problem for _, problem, _ in found["zgelsewhere"])  # the password never shown


def test_the_doctor_names_a_tls_connection_that_does_not_verify_the_certificate() -> None:
    unverified = RedisTarget.from_url("rediss://zg:pw@redis.internal:6380/0?ssl_cert_reqs=none")
    [finding] = check_tls(unverified)
    assert finding.check == "tls"
    assert "ssl_cert_reqs=none" in finding.problem
    assert "ssl_ca_certs" in finding.fix
    assert "pw" not in finding.problem
    assert check_tls(RedisTarget.from_url("rediss://redis.internal:6380/0?ssl_ca_certs=/ca.pem")) == []
    assert check_tls(RedisTarget.from_url("redis://redis.internal:6379/0")) == []
