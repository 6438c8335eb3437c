"""How a process that ran a job ended, in words for the job's history: its exit code or signal, and
whether the kernel's OOM killer took it.

The OOM killer is told by the memory controller of the worker's cgroup: its ``oom_kill`` count
(cgroup v2: ``memory.events``; v1: ``memory.oom_control``); a count that rose while the job ran,
with the process killed by SIGKILL, names it. Where there is no such count (no memory controller,
another system), a SIGKILL is reported as such.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def oom_kills(own_cgroup: Path = Path("/proc/self/cgroup"), root: Path = CGROUP_ROOT) -> int | None:
    """How many processes the OOM killer has killed in this process's memory cgroup (v2, else v1);
    None where that is not known."""
    with contextlib.suppress(OSError, ValueError):
        places = []
        for line in own_cgroup.read_text().splitlines():
            hierarchy, controllers, path = line.split(":", 2)
            if hierarchy == "0":
                places.append(root / path.lstrip("/") / "memory.events")
            elif "memory" in controllers.split(","):
                places.append(root / "memory" / path.lstrip("/") / "memory.oom_control")
        for place in places:
            with contextlib.suppress(OSError):
                for event in place.read_text().splitlines():
                    name, _, count = event.partition(" ")
                    if name == "oom_kill":
                        return int(count)
    return None


def child_status(pid: int) -> int | None:
    """The wait status of child ``pid``, exited and not reaped yet (it is left so, for its parent's
    own wait); None while it runs, or when it is not this process's child."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except OSError:
        return None
    if info is None:
        return None
    if info.si_code == os.CLD_EXITED:
        return (info.si_status & 0xFF) << 8
    return info.si_status & 0x7F  # killed by a signal (with a core dump or not)


def how_it_ended(status: int, oom_before: int | None, oom_after: int | None) -> str:
    """A process's end, from its wait status (``os.waitpid``'s) and the cgroup's OOM kills counted
    before it started and after it ended: ``killed by the OOM killer (SIGKILL)``, ``killed by
    signal 11 (SIGSEGV)``, ``exited with code 1``."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        oom = oom_before is not None and oom_after is not None and oom_after > oom_before
        if number == signal.SIGKILL and oom:
            return "killed by the OOM killer (SIGKILL; its cgroup's oom_kill count rose)"
        return f"killed by signal {number} ({name})"
    if os.WIFEXITED(status):
        return f"exited with code {os.WEXITSTATUS(status)}"
    return f"ended with wait status {status}"
