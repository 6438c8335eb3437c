"""Never hurt the host: zombieguard's own failures are logged and contained here.

Code that runs on a job's path or in a worker's background threads wraps its own work in
:func:`contained`. An error inside is logged with where it happened and handed to the observers;
the job and the worker go on. Tests register an observer that turns contained errors back into
failures, so that they are not hidden.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("zombieguard")

Observer = Callable[[str, BaseException], None]


def named(adapter: str, task: str, job_id: str) -> str:
    """A job as a log line names it, in its framework's word: ``celery task t[id]``, ``rq job t[id]``."""
    return f"{adapter} {'task' if adapter == 'celery' else 'job'} {task}[{job_id}]"


_observers: list[Observer] = []
_lock = threading.Lock()


def add_observer(observer: Observer) -> None:
    """Call ``observer(where, exc)`` for every contained internal error."""
    with _lock:
        _observers.append(observer)


def remove_observer(observer: Observer) -> None:
    """Stop calling ``observer``."""
    with _lock:
        if observer in _observers:
            _observers.remove(observer)


def report(where: str, exc: BaseException) -> None:
    """Log an internal error that was contained, and tell the observers."""
    log.error("zombieguard: error in %s (contained; the job and the worker go on)", where, exc_info=exc)
    with _lock:
        observers = list(_observers)
    for observer in observers:
        try:
            observer(where, exc)
        except Exception:
            log.exception("zombieguard: internal-error observer failed")


@contextmanager
def contained(where: str) -> Iterator[None]:
    """Run a block of zombieguard's own work; an ``Exception`` in it is reported, not raised."""
    try:
        yield
    except Exception as exc:
        report(where, exc)
