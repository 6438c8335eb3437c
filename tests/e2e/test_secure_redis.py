"""Leases on a Redis that speaks TLS only, checks client certificates and lets in an ACL user limited
to zombieguard's key prefix: the workers, their watchdog processes, the CLI and the exporter reach it,
touch nothing else, and show its password to nobody."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from tests.support.harness import ZOMBIEGUARD
from tests.support.rq_harness import RQHarness, exc_string, wait_until
from tests.support.secure_redis import PASSWORD, SecureRedis, make_certificates
from zombieguard.leases import LeaseState, LeaseStore, Outcome
from zombieguard.policy import Settings

if TYPE_CHECKING:
    from tests.support.celery_harness import CeleryHarness

pytestmark = pytest.mark.slow

SECRETS = (PASSWORD, urllib.parse.quote(PASSWORD, safe=""))


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certificates")
    make_certificates(directory)
    return directory


@pytest.fixture
def secure(key_prefix: str, certificates: Path) -> Iterator[SecureRedis]:
    with SecureRedis(key_prefix, certificates) as server:
        yield server


def _store(secure: SecureRedis) -> LeaseStore:
    return LeaseStore.from_url(secure.url, Settings(key_prefix=secure.prefix))


def _no_password_in_argv(processes: list[psutil.Process]) -> None:
    """No command line of ``processes`` (a worker and what it started) shows the password, quoted
    or not: any local user can read a command line."""
    assert len(processes) >= 2  # the worker and its reaper at least
    for process in processes:
        try:
            line = " ".join(process.cmdline())
        except psutil.NoSuchProcess:
            continue
        assert not any(secret in line for secret in SECRETS), line


def _no_password_in(*texts: str) -> None:
    """None of ``texts`` (a log, the CLI's output) shows the password, quoted or not."""
    for text in texts:
        assert not any(secret in text for secret in SECRETS), text


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


@pytest.mark.parametrize("cls", ["GuardedWorker", "GuardedSimpleWorker"])
def test_an_rq_worker_keeps_its_leases_on_tls_as_an_acl_user_that_sees_only_our_keys(
    redis_url: str, key_prefix: str, tmp_path: Path, secure: SecureRedis, cls: str
) -> None:
    harness = RQHarness(redis_url, key_prefix, tmp_path, env={"ZOMBIEGUARD_REDIS_URL": secure.url})
    try:
        worker = harness.start_worker(cls)
        # A hard limit well past the status call below, on a busy machine too.
        job = harness.enqueue("sleep_then_return", harness.notes, 30, job_timeout=8)
        wait_until(lambda: harness.notes_of("started"), 15, what="the job started")
        store = _store(secure)
        wait_until(lambda: store.record(job.id), 5, what="the lease written on the TLS Redis")
        status = subprocess.run(
            [ZOMBIEGUARD, "status"],
            env={
                **os.environ,
                "ZOMBIEGUARD_REDIS_URL": secure.url,
                "ZOMBIEGUARD_KEY_PREFIX": key_prefix,
                "RQ_REDIS_URL": redis_url,  # RQ's own Redis, where the queues are
            },
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert job.id in status.stdout
        _no_password_in_argv(_tree(worker.pid))
        _no_password_in(status.stdout, status.stderr)
        harness.wait_status(job, ["failed"], 15)  # stopped at its hard limit (RQ's job_timeout)
        assert "exceeded maximum timeout value (8 seconds)" in exc_string(job)
        record = store.record(job.id)
        assert record is not None
        assert record.state is LeaseState.DONE
        assert [a.outcome for a in record.history] == [Outcome.TIMED_OUT]
        _no_password_in(harness.log())
        assert secure.denied() == []
    finally:
        harness.close()


def test_a_celery_worker_s_watchdog_process_reaches_the_tls_redis_as_the_acl_user(
    celery_harness: CeleryHarness, secure: SecureRedis
) -> None:
    # C code holding the GIL on the threads pool: the watchdog process beside the worker writes the
    # task's lease, kills the worker and fails the task; it reaches the leases' Redis with the
    # connection settings the worker gave it through its environment, not its command line.
    celery_harness.env["ZOMBIEGUARD_REDIS_URL"] = secure.url
    worker = celery_harness.start_worker("threads")
    tree = _tree(worker.pid)
    assert any("zombieguard.enforcement.watchdog_process" in " ".join(p.cmdline()) for p in tree)
    _no_password_in_argv(tree)
    result = celery_harness.send("stuck_in_c_code", celery_harness.notes, time_limit=2)
    wait_until(lambda: worker.poll() is not None, 15, what="the stuck worker killed")
    celery_harness.wait_state(result, {"FAILURE"}, 5)
    assert type(result.result).__name__ == "TimeLimitExceeded"
    record = _store(secure).record(result.id)
    assert record is not None
    assert record.state is LeaseState.DONE
    assert [a.outcome for a in record.history] == [Outcome.TIMED_OUT]
    _no_password_in(celery_harness.log())
    assert secure.denied() == []


def test_the_cli_s_exporter_serves_metrics_from_the_tls_redis(secure: SecureRedis, key_prefix: str) -> None:
    store = _store(secure)
    store.register_worker("w-tls", {"adapter": "rq", "host": "h", "pid": "1"}, 30)
    exporter = subprocess.Popen(
        [ZOMBIEGUARD, "metrics", "--port", "0"],
        env={**os.environ, "ZOMBIEGUARD_REDIS_URL": secure.url, "ZOMBIEGUARD_KEY_PREFIX": key_prefix},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert exporter.stdout is not None
        url = exporter.stdout.readline().split()[-1]
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(url, timeout=10) as reply:
                body = reply.read().decode()
            if "zombieguard_workers 1.0" in body or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "zombieguard_workers 1.0" in body
        _no_password_in_argv([*_tree(exporter.pid), psutil.Process()])
        _no_password_in(body)
    finally:
        exporter.terminate()
        exporter.wait(10)
    assert secure.denied() == []
