"""The task class :func:`install` gives the app: a body run by a guarded worker runs under its lease."""

from __future__ import annotations

from typing import Any

from celery.app.task import Task

from zombieguard.integrations.celery.process import this_process


class GuardedTask(Task):  # type: ignore[misc]
    """Runs the body under the task's lease in a guarded worker; unchanged anywhere else."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The task's body, under its lease when a guarded worker runs it."""
        executor = this_process.executor
        request = self.request
        if executor is None or request.called_directly or request.is_eager or executor.current is not None:
            return super().__call__(*args, **kwargs)  # not from Celery's tracer in a guarded worker
        body = self.run if _calls_run(type(self)) else super().__call__
        return executor.run(self, request, body, args, kwargs)


_CALLS_RUN: dict[type, bool] = {}


def _calls_run(cls: type) -> bool:
    """Whether no class between :class:`GuardedTask` and Celery's ``Task`` in ``cls``'s MRO defines
    ``__call__``: then the body is called as Celery's tracer calls the body of a task with no
    ``__call__`` of its own (``task.run``), not through Celery's ``__call__`` (which, in a worker,
    looks the request up again to find that it has nothing to do)."""
    known = _CALLS_RUN.get(cls)
    if known is None:
        mro = cls.__mro__
        between = mro[mro.index(GuardedTask) + 1 : mro.index(Task)]
        known = _CALLS_RUN[cls] = not any("__call__" in vars(base) for base in between)
    return known
