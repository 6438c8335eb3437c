"""The quickstarts (docs/quickstart-*.md) and the checkpoint guide's examples (docs/checkpoints.md)
run as written, with real workers, against a Redis of the test's own, and keep their promises: the
normal job succeeds, ``zombieguard status`` shows the hung job, the hung job is stopped as timed out
at its hard_timeout, ``zombieguard kill`` stops a running job, a job whose process is killed resumes
at its checkpoint, and every sample output they show is what the commands print.

The markdown marks what the reader does, each with an HTML comment before a fenced block:

- ``<!-- file: PATH -->``: the reader creates PATH with the block's text;
- ``<!-- append: PATH -->``: the reader adds the block's text to the end of PATH;
- ``<!-- terminal: NAME -->``: a command the reader leaves running in a terminal of its own (a worker);
- ``<!-- run: NAME -->``: commands the reader runs one after another, each to success;
- ``<!-- output: NAME -->``: lines that step (or terminal) prints; ids, times and counts vary. For a
  terminal, the reader waits for them, and so does the test;
- ``<!-- walkthrough: NAME -->``: the blocks after it, up to the next such mark, are one walk of their
  own (a page with several, one per framework).

A block with no mark (``pip install``) is not run: the test runs in the environment that has it all.
The test's only changes to what the reader runs: its own Redis in place of ``localhost:6379`` (in the
files, the commands, and RQ's command line default, through ``RQ_REDIS_URL``), and in place of
``JOB_ID`` (``TASK_ID``) the last job id printed before it, once that job is running, as a reader
sees it run before acting on it, and in place of ``PID`` the last process id a terminal printed
(``in process N``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.harness import REPO
from tests.support.waiting import wait_until
from zombieguard.demo.embedded import EmbeddedRedis
from zombieguard.leases import text

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

NEEDS = {"rq": ["rq"], "celery": ["celery"], "django": ["django", "django_rq", "rq"]}
"""The modules each framework's walk needs installed."""

MARKED = re.compile(
    r"<!-- (?P<kind>file|append|terminal|run|output): (?P<name>\S+) -->\n```\w*\n(?P<body>.*?)```", re.S
)
WALKTHROUGH = re.compile(r"<!-- walkthrough: (\S+) -->")
LOCALHOST = "redis://localhost:6379/"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
JOB_PLACEHOLDER = re.compile(r"\b(JOB_ID|TASK_ID)\b")
PID_PLACEHOLDER = re.compile(r"\bPID\b")
PRINTED_PID = re.compile(r"in process (\d+)")
ZOMBIEGUARD_COMMAND = re.compile(r"\bzombieguard (?:-\S+ \S+ )*(status|kill)\b")  # options may come first
OUTPUT_WAIT = 90.0
"""Seconds a terminal gets to print what the quickstart says it prints (a 30 s limit, and a margin
for a busy machine)."""


@dataclass(frozen=True)
class Block:
    """One marked block of a quickstart."""

    kind: str
    name: str
    body: str


def blocks(page: str) -> list[Block]:
    """The marked blocks of ``page``, in order."""
    return [Block(m["kind"], m["name"], m["body"]) for m in MARKED.finditer(page)]


def walk_of(page: str, name: str) -> str:
    """The part of ``page`` that makes up its walkthrough ``name``."""
    parts = WALKTHROUGH.split(page)  # text, name, text, name, text, ...
    found = dict(zip(parts[1::2], parts[2::2], strict=True))
    assert name in found, f"no walkthrough {name!r} in the page"
    return found[name]


_SHAPES = [
    (re.compile(r"\x1b\[[0-9;]*m"), ""),  # colours
    (UUID, "<id>"),
    (re.compile(r"\b[0-9a-f]{32}\b"), "<worker>"),  # RQ's worker names
    (re.compile(r"[\w.-]+@[\w.-]+"), "<who>"),  # user@host, celery@host
    (re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+:"), "[<time>:"),
    (re.compile(r"^\d\d:\d\d:\d\d "), "<time> "),
    (re.compile(r"(?<![\w.])(\d+(\.\d+)?[smhd]|-|\d+)(?![\w.])"), "<n>"),  # ages, counts, "-"
]


def shape(line: str) -> str:
    """A printed line without what varies from run to run."""
    for pattern, replacement in _SHAPES:
        line = pattern.sub(replacement, line)
    return " ".join(line.split())


def environment(redis_url: str) -> dict[str, str]:
    """A reader's environment: the test environment's programs, nothing of zombieguard's, RQ's,
    Celery's or Django's configured, and RQ's command line defaulting to the test's Redis."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ZOMBIEGUARD_", "RQ_", "CELERY_", "DJANGO_"))
    }
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env["RQ_REDIS_URL"] = redis_url
    return env


@dataclass
class Walkthrough:
    """One quickstart, followed step by step in a directory of its own."""

    framework: str
    page: str
    workdir: Path
    redis_url: str
    env: dict[str, str] = field(init=False)
    client: redis.Redis = field(init=False)
    terminals: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    printed: dict[str, str] = field(default_factory=dict)
    """What each run step printed (stdout and stderr), its commands one after another."""
    job_ids: list[str] = field(default_factory=list)
    """The job ids the steps printed, in order: the normal job, the hung one, the one stopped by hand."""
    right_after_kill: dict[str, tuple[str, str]] = field(default_factory=dict)
    """The framework's view of a job just after ``zombieguard kill`` returned."""
    problems: list[str] = field(default_factory=list)
    """Where following the quickstart did not go as it says."""
    took: list[str] = field(default_factory=list)
    """How long each step took."""

    def __post_init__(self) -> None:
        self.env = environment(self.redis_url)
        self.client = redis.Redis.from_url(self.redis_url)

    def local(self, text_: str) -> str:
        """``text_`` with the test's Redis in place of the reader's."""
        return text_.replace(LOCALHOST, self.redis_url.rsplit("/", 1)[0] + "/")

    def follow(self) -> None:
        """Every step, in order; a step that fails ends the walk (what follows depends on it)."""
        for block in blocks(self.page):
            began = time.monotonic()
            try:
                getattr(self, f"_{block.kind}")(block)
            except Exception as exc:
                self.problems.append(f"{block.kind} {block.name}: {exc}")
                return
            finally:
                self.took.append(f"{block.kind} {block.name}: {time.monotonic() - began:.1f} s")

    def _file(self, block: Block) -> None:
        path = self.workdir / block.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.local(block.body))

    def _append(self, block: Block) -> None:
        path = self.workdir / block.name
        path.write_text(path.read_text() + "\n" + self.local(block.body))

    def _terminal(self, block: Block) -> None:
        [command] = block.body.strip().splitlines()
        with (self.workdir / f"{block.name}.log").open("wb") as log:
            self.terminals[block.name] = subprocess.Popen(
                self.local(command),
                shell=True,
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped whole at the end
            )

    def _run(self, block: Block) -> None:
        for line in block.body.strip().splitlines():
            command = self.local(line)
            if JOB_PLACEHOLDER.search(command):
                command = JOB_PLACEHOLDER.sub(self.job_ids[-1], command)
            if PID_PLACEHOLDER.search(command):
                command = PID_PLACEHOLDER.sub(self.last_pid(), command)
            acting = ZOMBIEGUARD_COMMAND.search(command)
            if acting:
                self.wait_running(self.job_ids[-1])
            result = subprocess.run(
                command,
                shell=True,
                cwd=self.workdir,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            self.printed[block.name] = self.printed.get(block.name, "") + result.stdout + result.stderr
            if result.returncode != 0:
                raise AssertionError(f"{command!r} exited {result.returncode}:\n{self.printed[block.name]}")
            for job_id in UUID.findall(result.stdout):
                if job_id not in self.job_ids:
                    self.job_ids.append(job_id)
            if acting and acting[1] == "kill":
                self.right_after_kill[self.job_ids[-1]] = self.result(self.job_ids[-1])

    def _output(self, block: Block) -> None:
        wanted = [shape(line) for line in block.body.splitlines() if line.strip()]

        def missing() -> list[str]:
            if block.name in self.terminals:
                seen = {shape(line) for line in self.log(block.name).splitlines()}
            else:
                seen = {shape(line) for line in self.printed.get(block.name, "").splitlines()}
            return [line for line in wanted if line not in seen]

        if block.name in self.terminals:
            with contextlib.suppress(AssertionError):
                wait_until(lambda: not missing(), OUTPUT_WAIT, interval=0.2)
            where = f"the end of {block.name}'s output:\n{self.log(block.name)[-3000:]}"
        else:
            where = f"{block.name} printed:\n{self.printed.get(block.name, '')}"
        if missing():
            self.problems.append(f"{block.name} did not print {missing()}; {where}")

    def log(self, terminal: str) -> str:
        """What a terminal has printed so far."""
        return (self.workdir / f"{terminal}.log").read_text(errors="replace")

    def last_pid(self) -> str:
        """The last process id a terminal printed (``in process N``)."""
        printed = [pid for name in self.terminals for pid in PRINTED_PID.findall(self.log(name))]
        assert printed, "no terminal printed a process id"
        return str(printed[-1])

    def lease(self, job_id: str) -> dict[str, str]:
        """The job's lease record (a finished job's is kept as a tombstone)."""
        return {text(k): text(v) for k, v in self.client.hgetall("{zombieguard}:lease:" + job_id).items()}

    def last_attempt(self, job_id: str) -> dict[str, Any]:
        """The job's last attempt as its lease's history records it: outcome, started, ended, ..."""
        history = self.lease(job_id).get("history", "").splitlines()
        assert history, f"job {job_id} has no attempt recorded\n{self.report()}"
        attempt: dict[str, Any] = json.loads(history[-1])
        return attempt

    def wait_running(self, job_id: str) -> None:
        """Wait until the job runs under its lease, as ``zombieguard status`` would show it."""
        wait_until(lambda: self.lease(job_id).get("state") == "running", 30, what=f"job {job_id} running")

    def result(self, job_id: str) -> tuple[str, str]:
        """How the framework has the job: succeeded, failed or another state; its return value or
        its exception."""
        if self.framework == "celery":
            from celery import Celery  # noqa: PLC0415 - the RQ-only environments have no Celery

            app = Celery("quickstart-test", broker=self.redis_url, backend=self.redis_url)
            try:
                outcome = app.AsyncResult(job_id)
                state = {"SUCCESS": "succeeded", "FAILURE": "failed"}.get(outcome.state, outcome.state)
                return state, repr(outcome.result) if state == "failed" else str(outcome.result)
            finally:
                app.close()
        from rq.job import Job  # noqa: PLC0415 - the Celery-only environments have no RQ

        job = Job.fetch(job_id, connection=self.client)
        status = job.get_status()
        state = str(getattr(status, "value", status)).replace("finished", "succeeded")
        latest = job.latest_result()
        if state == "failed" and latest is not None and latest.exc_string:
            return state, latest.exc_string.strip().splitlines()[-1]
        return state, str(job.return_value())

    def stop(self) -> None:
        """Stop the terminals (whole process groups), as Ctrl-C would, then for sure."""
        for process in self.terminals.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.terminals.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        self.client.close()

    def written(self) -> str:
        """The text of the files the reader writes."""
        return "".join(b.body for b in blocks(self.page) if b.kind in ("file", "append"))

    def ids(self) -> tuple[str, str, str]:
        """The normal job's id, the hung job's, the one stopped by hand."""
        assert len(self.job_ids) == 3, self.report()
        return self.job_ids[0], self.job_ids[1], self.job_ids[2]

    def hard_timeout(self) -> float:
        """The hung job's limit, as the quickstart sets it."""
        found = re.search(r"hard_timeout\W{1,4}(\d+)", self.written())
        assert found, "the quickstart sets no hard_timeout"
        return float(found[1])

    def report(self) -> str:
        """What went wrong, and the terminals' output: for a failing assertion."""
        logs = [f"--- {name}:\n{self.log(name)[-3000:]}" for name in self.terminals]
        return "\n".join(["problems:", *self.problems, "steps:", *self.took, *logs])


@contextlib.contextmanager
def walked(framework: str, page: str, workdir: Path) -> Iterator[Walkthrough]:
    """``page`` followed to its end, with ``framework``'s workers, against a Redis of its own."""
    for module in NEEDS[framework]:  # found, not imported: django_rq reads Django's settings then
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install '.[test]' installs it)")
    with EmbeddedRedis() as server:
        walk = Walkthrough(framework, page, workdir, server.url)
        try:
            walk.follow()
            yield walk
        finally:
            walk.stop()


@pytest.fixture(scope="module", params=["celery", "django", "rq"])
def walkthrough(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Walkthrough]:
    """The quickstart of one framework (docs/quickstart-<framework>.md), followed to its end."""
    page = (REPO / "docs" / f"quickstart-{request.param}.md").read_text()
    with walked(request.param, page, tmp_path_factory.mktemp(f"quickstart-{request.param}")) as walk:
        yield walk


@pytest.fixture(scope="module", params=["celery", "rq"])
def checkpoint_walkthrough(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Walkthrough]:
    """The checkpoint guide's example for one framework (docs/checkpoints.md), followed to its end."""
    page = walk_of((REPO / "docs" / "checkpoints.md").read_text(), request.param)
    with walked(request.param, page, tmp_path_factory.mktemp(f"checkpoints-{request.param}")) as walk:
        yield walk


def test_the_normal_job_succeeds(walkthrough: Walkthrough) -> None:
    normal, _, _ = walkthrough.ids()
    assert walkthrough.result(normal) == ("succeeded", "hello world"), walkthrough.report()


def test_zombieguard_status_shows_the_hung_job_running(walkthrough: Walkthrough) -> None:
    _, hung, _ = walkthrough.ids()
    rows = [line.split() for line in walkthrough.printed.get("status", "").splitlines()]
    row = next((r for r in rows if r and r[0] == hung), None)
    assert row is not None, walkthrough.printed.get("status", walkthrough.report())
    assert row[1].endswith("tasks.hang")
    assert row[-1] == "running"


def test_the_hung_job_is_stopped_as_timed_out_at_its_hard_timeout(walkthrough: Walkthrough) -> None:
    _, hung, _ = walkthrough.ids()
    limit = walkthrough.hard_timeout()
    attempt = walkthrough.last_attempt(hung)
    assert attempt["outcome"] == "timed_out", walkthrough.report()
    # The limit counts from the lease's acquire (Celery writes a first delivery's lease within its
    # lease_delay, 0.05 s, of the start); the job is stopped within a second of it.
    assert limit - 0.1 <= attempt["ended"] - attempt["started"] < limit + 1.5, attempt
    state, error = walkthrough.result(hung)
    assert state == "failed", (state, error)
    expected = "TimeLimitExceeded" if walkthrough.framework == "celery" else "HardTimeLimitExceeded"
    assert expected in error, error
    assert f"hard_timeout of {limit:g} s" in error, error


def test_zombieguard_kill_stops_a_running_job(walkthrough: Walkthrough) -> None:
    _, _, killed = walkthrough.ids()
    assert f"stopped {killed} (by " in walkthrough.printed.get("kill", ""), walkthrough.report()
    assert walkthrough.last_attempt(killed)["outcome"] == "stopped", walkthrough.report()
    # Recorded stopped in the framework at once, not run again.
    state, error = walkthrough.right_after_kill[killed]
    assert state == "failed", (state, error)
    assert ("Terminated" if walkthrough.framework == "celery" else "JobStopped") in error, error
    assert "stopped by " in error, error
    assert walkthrough.result(killed) == (state, error)


def test_every_step_runs_as_written_and_prints_what_the_quickstart_shows(walkthrough: Walkthrough) -> None:
    assert walkthrough.problems == [], walkthrough.report()
    for name, process in walkthrough.terminals.items():
        assert process.poll() is None, f"{name} exited:\n{walkthrough.log(name)[-3000:]}"


def test_a_job_whose_process_is_killed_resumes_at_its_checkpoint(
    checkpoint_walkthrough: Walkthrough,
) -> None:
    walk = checkpoint_walkthrough
    assert walk.problems == [], walk.report()
    [job_id] = walk.job_ids
    rows = re.search(r"count=(\d+)", walk.written())
    assert rows, "the example's job takes no count"
    count = int(rows[1])
    first, resumed, second = re.split(r"resuming at row (\d+)", walk.log("worker"))
    done_first = [int(row) for row in re.findall(r"row (\d+) done", first)]
    done_second = [int(row) for row in re.findall(r"row (\d+) done", second)]
    assert done_first == list(range(len(done_first))), walk.report()
    # Attempt 2 starts after the last row saved: the row under way when the process died (whose
    # save had not been made) is done again, none before it.
    assert len(done_first) - 1 <= int(resumed) <= len(done_first), walk.report()
    assert int(resumed) >= 1, walk.report()  # it did resume, not start over
    assert done_second == list(range(int(resumed), count)), walk.report()

    def outcomes() -> list[str]:
        return [json.loads(line)["outcome"] for line in walk.lease(job_id).get("history", "").splitlines()]

    # A completion's release is written just after it is recorded (within 0.2 s).
    with contextlib.suppress(AssertionError):
        wait_until(lambda: len(outcomes()) == 2, 5)
    assert outcomes() == ["stalled", "completed"]
    assert walk.result(job_id) == ("succeeded", str(count))
    assert not walk.client.exists("{zombieguard}:checkpoint:" + job_id)  # deleted as the job completed
    for name, process in walk.terminals.items():
        assert process.poll() is None, f"{name} exited:\n{walk.log(name)[-3000:]}"
