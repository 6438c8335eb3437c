"""How a process that ran a job ended, in words, from its wait status and its cgroup's OOM count."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zombieguard.enforcement.deaths import child_status, how_it_ended, oom_kills


@pytest.mark.parametrize(
    ("status", "before", "after", "said"),
    [
        (signal.SIGKILL, 3, 4, "killed by the OOM killer (SIGKILL; its cgroup's oom_kill count rose)"),
        (signal.SIGKILL, 3, 3, "killed by signal 9 (SIGKILL)"),
        (signal.SIGKILL, None, None, "killed by signal 9 (SIGKILL)"),
        (signal.SIGSEGV, 3, 4, "killed by signal 11 (SIGSEGV)"),  # a rise, but not the OOM killer's signal
        (1 << 8, None, None, "exited with code 1"),
        (0, None, None, "exited with code 0"),
    ],
)
def test_a_process_s_end_is_said_with_its_signal_or_exit_code_and_the_oom_killer_named(
    status: int, before: int | None, after: int | None, said: str
) -> None:
    assert how_it_ended(status, before, after) == said


def test_the_oom_kills_are_read_from_the_memory_events_of_this_process_s_cgroup(tmp_path: Path) -> None:
    own = tmp_path / "cgroup"
    own.write_text("0::/system.slice/worker.service\n")
    events = tmp_path / "fs" / "system.slice" / "worker.service"
    events.mkdir(parents=True)
    (events / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n")
    assert oom_kills(own, tmp_path / "fs") == 2


def test_on_cgroup_v1_the_oom_kills_are_read_from_the_memory_controller_s_oom_control(tmp_path: Path) -> None:
    own = tmp_path / "cgroup"
    own.write_text("12:memory:/docker/abc\n1:cpu:/\n0::/\n")  # v1, and an empty v2 hierarchy
    control = tmp_path / "memory" / "docker" / "abc"
    control.mkdir(parents=True)
    (control / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 5\n")
    assert oom_kills(own, tmp_path) == 5


def test_without_a_memory_controller_the_oom_kills_are_not_known(tmp_path: Path) -> None:
    own = tmp_path / "cgroup"
    own.write_text("1:cpu:/\n0::/\n")
    assert oom_kills(own, tmp_path) is None
    assert oom_kills(tmp_path / "missing", tmp_path) is None


@pytest.mark.parametrize(
    ("code", "said"),
    [
        ("import os; os.kill(os.getpid(), 9)", "killed by signal 9 (SIGKILL)"),
        ("raise SystemExit(3)", "exited with code 3"),
    ],
)
def test_a_dead_child_s_end_is_read_without_reaping_it(code: str, said: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 10
    while (status := child_status(child.pid)) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert status is not None
    assert how_it_ended(status, None, None) == said
    assert child_status(child.pid) == status  # still there for its parent to reap
    child.wait(5)
    assert child_status(child.pid) is None  # reaped: no longer this process's to read


def test_a_running_child_or_another_process_has_no_status() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child_status(child.pid) is None
        assert child_status(os.getppid()) is None  # not a child of this process
    finally:
        child.kill()
        child.wait(5)
