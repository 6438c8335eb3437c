"""Where a job is: the stack of a thread of this process, or of all threads of another process.

:class:`StackDumper` makes a child process dump all its threads' stacks on a signal, through
:mod:`faulthandler`, whose handler is C: it works even while the child is stuck in C code.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO

STACK_DUMP_SIGNAL = signal.SIGRTMIN + 5
"""The signal a process dumps its stacks on (real-time: RQ, Celery and billiard use none)."""


def thread_stack(ident: int) -> str | None:
    """The current stack of thread ``ident`` of this process, formatted; None if it is gone."""
    frame = sys._current_frames().get(ident)
    if frame is None:
        return None
    name = next((t.name for t in threading.enumerate() if t.ident == ident), str(ident))
    return f"Thread {name!r} (most recent call last):\n{''.join(traceback.format_stack(frame))}"


class StackDumper:
    """Lets another process ask this one for the stacks of all its threads.

    The child calls :meth:`install` once; the parent calls :meth:`request` with the child's pid.
    faulthandler writes from a C signal handler, so the dump arrives even when the child is stuck in
    C code holding the GIL, where no Python code of the child can run.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def install(self) -> None:
        """In the process to be dumped: register the signal handler (replaces an earlier one)."""
        self._file = self.path.open("a")
        faulthandler.register(STACK_DUMP_SIGNAL, file=self._file, all_threads=True, chain=False)

    def request(self, pid: int, timeout: float = 0.5) -> str | None:
        """In another process: signal ``pid`` and return what it dumped, None if nothing came."""
        try:
            offset = self.path.stat().st_size
        except FileNotFoundError:
            return None
        try:
            os.kill(pid, STACK_DUMP_SIGNAL)
        except ProcessLookupError:
            return None
        deadline = time.monotonic() + timeout
        previous = -1
        while time.monotonic() < deadline:
            size = self.path.stat().st_size
            # Done when something arrived and the size held still for one poll.
            if size > offset and size == previous:
                break
            previous = size
            time.sleep(0.02)
        with self.path.open() as f:
            f.seek(offset)
            text = f.read()
        return text or None

    def close(self) -> None:
        """Unregister and close (in the dumped process)."""
        if self._file is not None:
            faulthandler.unregister(STACK_DUMP_SIGNAL)
            self._file.close()
            self._file = None
