"""A stopped job takes the programs it started with it, on every execution model: at its hard
limit, at ``zombieguard kill``, and when its whole worker is SIGKILLed; a healthy job's programs are
left alone.

Each job starts three programs (``starts_programs``): a plain child, one in a session of its own,
and one that daemonized. On the threads pool, whose jobs share one process and its environment, a
stop cannot tell which job a daemonized program came from: it is ended with its worker only."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import pytest

from tests.support.cli import celery_cli, rq_cli_json
from tests.support.harness import WorkerHarness
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

MODELS = [
    ("rq", "GuardedWorker"),
    ("rq", "GuardedSimpleWorker"),
    ("celery", "prefork"),
    ("celery", "threads"),
    ("celery", "solo"),
]
IDS = [f"{framework}-{model}" for framework, model in MODELS]


@dataclass
class Model:
    """One execution model's workers, jobs and operator commands, the same way for both frameworks."""

    framework: str
    model: str
    harness: Any

    def start_worker(self, env: dict[str, str] | None = None) -> Any:
        if self.framework == "rq":
            return self.harness.start_worker(self.model, env=env)
        return self.harness.start_worker(self.model, concurrency=2, env=env)

    def submit(self, body: str, *args: Any) -> str:
        if self.framework == "rq":
            job = self.harness.enqueue(body, *args)
            return str(job.id)
        return str(self.harness.send(body, *args).id)

    def state(self, job_id: str) -> str:
        if self.framework == "rq":
            job = next(j for j in self.harness.jobs if j.id == job_id)
            return str(self.harness.status(job))
        return str(self.harness.app.AsyncResult(job_id).state).lower()

    def cli(self, *args: str) -> Any:
        """``zombieguard <args> --json`` against the model's Redis: its parsed output."""
        if self.framework == "rq":
            return rq_cli_json(self.harness, *args)
        return celery_cli(self.harness, *args)

    def kill(self, job_id: str) -> None:
        if self.framework == "rq":
            rq_cli_json(self.harness, "kill", job_id, "--reason", "seed incident")
        else:
            celery_cli(self.harness, "kill", job_id, "--celery-app", "tests.support.celery_app:app")


@pytest.fixture(params=MODELS, ids=IDS)
def model(request: pytest.FixtureRequest) -> Iterator[Model]:
    framework, name = request.param
    harness: WorkerHarness = request.getfixturevalue(f"{framework}_harness")
    yield Model(framework, name, harness)
    for pid in _programs(harness):  # whatever a failed test left running
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _programs(harness: WorkerHarness) -> list[int]:
    return [int(pid) for line in harness.notes_of("programs") for pid in line.split()[1:]]


def _first_programs(harness: WorkerHarness) -> list[int]:
    wait_until(lambda: harness.notes_of("programs"), 15, what="the job started its programs")
    return [int(pid) for pid in harness.notes_of("programs")[0].split()[1:]]


def _stoppable(model: Model, pids: list[int]) -> list[int]:
    """The programs a stop ends on ``model`` (not the daemonized one on the threads pool)."""
    return pids[:2] if model.model == "threads" else pids


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _all_gone_within(pids: list[int], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = {pid: " ".join(psutil.Process(pid).cmdline()) for pid in pids if _alive(pid)}
    assert not left, f"still alive {seconds:g} s later: {left}"


def test_a_job_stopped_at_its_hard_timeout_takes_the_programs_it_started_with_it(model: Model) -> None:
    model.start_worker(env={"ZOMBIEGUARD_HARD_TIMEOUT": "2"})
    job_id = model.submit("starts_programs", model.harness.notes)
    pids = _first_programs(model.harness)
    assert all(_alive(pid) for pid in pids)
    started = float(model.harness.notes_of("started")[0].split()[0])
    time.sleep(max(0.0, started + 2 - time.time()))  # the hard limit passes
    _all_gone_within(_stoppable(model, pids), 2.0)
    wait_until(lambda: model.state(job_id) in ("failed", "failure"), 10, what="the job failed")
    assert model.harness.notes_of("completed") == []  # stopped, not ended by its program's death
    if model.framework == "celery":  # the event names what was ended
        [line] = model.harness.notes_of("event-processes")
        assert all(f"{pid} sleep" in line for pid in _stoppable(model, pids)), line
    else:
        log = model.harness.log()
        assert all(f"{pid} sleep" in log for pid in pids), log[-2000:]
    assert len(model.harness.notes_of("started")) == 1


def test_a_job_stuck_in_c_code_past_its_hard_timeout_takes_the_programs_it_started_with_it(
    model: Model,
) -> None:
    # The horse or pool process is killed for it; on the other models, the whole worker, by the
    # watchdog process beside it.
    model.start_worker(env={"ZOMBIEGUARD_HARD_TIMEOUT": "2"})
    job_id = model.submit("starts_programs", model.harness.notes, "holds the GIL")
    pids = _first_programs(model.harness)
    started = float(model.harness.notes_of("started")[0].split()[0])
    time.sleep(max(0.0, started + 2 - time.time()))
    _all_gone_within(_stoppable(model, pids), 2.0)
    wait_until(lambda: model.state(job_id) in ("failed", "failure"), 15, what="the job failed")


def test_zombieguard_kill_takes_the_programs_the_job_started_with_it(model: Model) -> None:
    model.start_worker()
    job_id = model.submit("starts_programs", model.harness.notes)
    pids = _first_programs(model.harness)
    model.harness.wait_leased(job_id)
    model.kill(job_id)
    _all_gone_within(_stoppable(model, pids), 2.0)
    wait_until(lambda: model.state(job_id) in ("failed", "failure"), 10, what="the job failed")
    assert len(model.harness.notes_of("started")) == 1  # stopped, not recovered


def test_a_worker_killed_whole_takes_the_programs_its_job_started_with_it(model: Model) -> None:
    model.start_worker()
    model.start_worker()
    job_id = model.submit("starts_programs", model.harness.notes)
    pids = _first_programs(model.harness)
    model.harness.wait_leased(job_id)
    runner = model.harness.worker_of(psutil.Process(pids[0]).ppid())
    os.killpg(runner.pid, signal.SIGKILL)  # the worker's process group: the worker, its pool or horse
    _all_gone_within(pids, 2.0)
    # The other worker runs the job again (and it starts its programs again).
    wait_until(lambda: len(model.harness.notes_of("started")) == 2, 10, what="recovered")


def test_a_job_that_runs_a_program_and_waits_for_it_succeeds(model: Model) -> None:
    model.start_worker()
    job_id = model.submit("runs_a_program", model.harness.notes)
    wait_until(lambda: model.state(job_id) in ("finished", "success"), 15, what="the job succeeded")
    assert len(model.harness.notes_of("completed")) == 1


def test_programs_a_healthy_job_leaves_running_go_on_after_it_and_after_its_worker_stops(
    model: Model,
) -> None:
    worker = model.start_worker()
    job_id = model.submit("starts_programs", model.harness.notes, "returns")
    pids = _first_programs(model.harness)
    wait_until(lambda: model.state(job_id) in ("finished", "success"), 15, what="the job succeeded")
    time.sleep(1.5)
    assert all(_alive(pid) for pid in pids)
    worker.send_signal(signal.SIGTERM)  # a warm shutdown: the worker leaves cleanly
    worker.wait(20)
    time.sleep(1.5)
    assert all(_alive(pid) for pid in pids)


@pytest.mark.parametrize("kill", ["hard_timeout", "worker SIGKILL"])
def test_with_kill_children_off_a_jobs_detached_program_outlives_its_stop_and_its_worker(
    model: Model, kill: str
) -> None:
    if model.model == "threads" and kill == "worker SIGKILL":
        pytest.skip("the threads pool's jobs share one environment: documented, not supported")
    limit = {"ZOMBIEGUARD_HARD_TIMEOUT": "2"} if kill == "hard_timeout" else {}
    worker = model.start_worker(env={"ZOMBIEGUARD_KILL_CHILDREN": "false", **limit})
    job_id = model.submit("starts_programs", model.harness.notes)
    detached = _first_programs(model.harness)[1]  # the others share the worker's process group
    model.harness.wait_leased(job_id)
    if kill == "hard_timeout":
        wait_until(lambda: model.state(job_id) in ("failed", "failure"), 10, what="the job failed")
    else:
        os.killpg(worker.pid, signal.SIGKILL)
    time.sleep(2.0)
    assert _alive(detached)


def test_status_shows_how_many_processes_run_under_each_job(model: Model) -> None:
    model.start_worker()
    job_id = model.submit("starts_programs", model.harness.notes)
    _first_programs(model.harness)
    model.harness.wait_leased(job_id)

    def counted() -> Any:
        rows = [row for row in model.cli("status")["jobs"] if row["job_id"] == job_id]
        return rows and rows[0]["processes"]

    # Counted at each renewal: the program in the job's session and the one in its own; the
    # daemonized one is no longer under the job.
    assert wait_until(counted, 10, interval=0.2, what="the processes counted") == 2


@pytest.mark.parametrize(
    "model",
    [m for m in MODELS if m[1] != "threads"],
    ids=[i for i in IDS if "threads" not in i],
    indirect=True,
)
def test_a_dead_lettered_job_names_the_programs_ended_when_its_worker_died(model: Model) -> None:
    model.start_worker(env={"ZOMBIEGUARD_MAX_STALLS": "0"})
    model.start_worker(env={"ZOMBIEGUARD_MAX_STALLS": "0"})
    job_id = model.submit("starts_programs", model.harness.notes)
    pids = _first_programs(model.harness)
    model.harness.wait_leased(job_id)
    runner = model.harness.worker_of(psutil.Process(pids[0]).ppid())
    os.killpg(runner.pid, signal.SIGKILL)
    entry = wait_until(
        lambda: next((e for e in model.cli("dlq", "list")["entries"] if e["job_id"] == job_id), None),
        10,
        what="dead-lettered",
    )
    assert entry is not None
    [attempt] = model.cli("dlq", "show", job_id)["attempts"]
    ended = " | ".join(attempt.get("processes", []))
    # The one in a session of its own outlived the worker's process group, which took the others
    # along but on RQ's forking worker (its horse has a process group of its own).
    named = pids if model.model == "GuardedWorker" else pids[1:2]
    assert all(f"{pid} sleep" in ended for pid in named), ended


def test_a_worker_woken_after_its_job_was_recovered_ends_the_programs_of_its_superseded_attempt(
    model: Model,
) -> None:
    frozen = model.start_worker()
    job_id = model.submit("starts_programs", model.harness.notes)
    pids = _first_programs(model.harness)
    model.harness.wait_leased(job_id)
    os.killpg(frozen.pid, signal.SIGSTOP)  # the worker (its horse, on RQ's forking worker, runs on)
    try:
        model.start_worker()
        wait_until(lambda: len(model.harness.notes_of("programs")) == 2, 15, what="recovered elsewhere")
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)
    # Its next renewal finds the lease lost: the woken attempt is stopped, with what it started.
    _all_gone_within(_stoppable(model, pids), 3.0)
    second = [int(pid) for pid in model.harness.notes_of("programs")[1].split()[1:]]
    assert all(_alive(pid) for pid in second)  # the attempt that holds the job is not touched


@pytest.mark.parametrize("model", [MODELS[0], MODELS[2]], ids=[IDS[0], IDS[2]], indirect=True)
def test_a_job_whose_process_dies_alone_takes_the_programs_it_started_with_it(model: Model) -> None:
    # The OOM killer takes the biggest process: the horse or the pool process running the job.
    model.start_worker()
    job_id = model.submit("starts_programs", model.harness.notes)
    pids = _first_programs(model.harness)
    model.harness.wait_leased(job_id)
    os.kill(psutil.Process(pids[0]).ppid(), signal.SIGKILL)
    _all_gone_within(pids, 2.0)
    wait_until(lambda: len(model.harness.notes_of("programs")) == 2, 15, what="recovered")
