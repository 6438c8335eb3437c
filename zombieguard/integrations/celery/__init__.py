"""Celery integration: one line in the module that builds the app.

    from zombieguard.integrations.celery import install
    install(app)

Configuration comes from ``app.conf.zombieguard = {...}`` (Django: ``CELERY_ZOMBIEGUARD``), else from
``zombieguard.configure()`` and ``ZOMBIEGUARD_*`` variables. Celery's own ``time_limit`` and
``soft_time_limit`` are the policy's limits when nothing else says otherwise. Per task:
``@app.task(zombieguard={...})`` or ``@zombieguard.guard(...)`` on the function under ``@app.task``.

What :func:`install` adds, all through Celery's extension points:

- a Task class (the app's own, subclassed): each task body runs under its lease, acquired in the
  process that runs it (a first delivery's behind, within ``lease_delay``, by that process's
  heartbeat thread; a task that ends sooner needs none); a delivery of an attempt already superseded
  is ignored (acked, not run);
- a Request class (worker main process): a pool process that dies mid-task is a stall, recovered by
  re-publishing the task, not Celery's failure or endless requeue; Celery's own time limits on prefork
  become a backstop 2 s past the policy's;
- a worker bootstep: the worker's presence, a sweeper, and per pool (docs/celery.md has the table):

  - **prefork**: each pool process writes its running task to a shared-memory slot; the main process
    renews those leases and enforces the limits (soft and hard interrupts by signal, SIGKILL 0.5 s
    later for a process stuck in C code, with its stack dumped first);
  - **threads**: a watchdog thread raises the interrupts in the task's thread; a thread that no
    interrupt reaches (a blocking call, C code) is failed at the limit and counted as a zombie thread;
    once ``zombie_thread_share`` of the pool is stuck, the worker shuts down warm and exits;
  - **solo**: interrupts by signal in the main thread; a watchdog process beside the worker kills it
    when the task is stuck in C code, and other guarded workers fail the task as timed out.

Events are sent in the process that detects them: limits and kills in the worker's main process
(prefork) or the worker process (threads, solo); started, completed and lease lost in the process
that runs the task; stalled, recovered, dead-lettered by the sweeper that acted.

The modules, by the process each runs in (docs/concepts.md draws them):

- everywhere: :mod:`.app` (configuration, policies, the app by name), :mod:`.message` (what a task
  message carries: its attempt number, its queue, the payload a sweeper publishes again);
- the worker's main process: :mod:`.worker` (the runtime and its bootsteps), :mod:`.request` (Celery's
  view of a message), :mod:`.monitor` (prefork: renews and enforces for the pool processes),
  :mod:`.deaths` (prefork: what a dead pool process makes of its task), :mod:`.received` (the
  messages a worker received, handed back when it dies);
- where task bodies run: :mod:`.task`, :mod:`.executor`, and per pool :mod:`.prefork` (a pool
  process) or :mod:`.inprocess` (threads, solo: the worker's own process); :mod:`.hooks` (Celery's
  signals); :mod:`.process` (what this process is);
- sweepers, the CLI and the watchdog process: :mod:`.adapter`;
- :mod:`.internals`: the private Celery, kombu and billiard attributes relied on, each in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zombieguard.errors import IntegrationNotAvailable
from zombieguard.integrations import require

try:
    import celery
    from celery.utils.imports import symbol_by_name
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise IntegrationNotAvailable(
        f"zombieguard.integrations.celery needs Celery ({exc}): pip install 'zombieguard[celery]'"
    ) from exc

CELERY_VERSION = require("celery", celery.__version__)

from zombieguard.integrations.celery.adapter import CeleryAdapter  # noqa: E402
from zombieguard.integrations.celery.executor import SoftTimeLimit  # noqa: E402
from zombieguard.integrations.celery.hooks import connect_signals  # noqa: E402
from zombieguard.integrations.celery.request import GuardedRequestMixin  # noqa: E402
from zombieguard.integrations.celery.task import GuardedTask  # noqa: E402
from zombieguard.integrations.celery.worker import CeleryRuntime, DeliveryLogStep, RuntimeStep  # noqa: E402

if TYPE_CHECKING:
    from celery import Celery


def install(app: Celery) -> Celery:
    """Guard ``app``'s tasks in its workers. Idempotent; call it where the app is built, before its
    tasks are defined (tasks with a ``base=`` class of their own need it to derive from ``app.Task``)."""
    if app.__dict__.get("_zombieguard_installed"):
        return app
    base = app.Task
    if not issubclass(base, GuardedTask):
        request_base = symbol_by_name(base.Request)
        request_cls = type("GuardedRequest", (GuardedRequestMixin, request_base), {"__module__": __name__})
        app.Task = type(
            base.__name__,
            (GuardedTask, base),
            {"__module__": base.__module__, "Request": request_cls, "__qualname__": base.__qualname__},
        )
    app.steps["worker"].add(RuntimeStep)
    app.steps["consumer"].add(DeliveryLogStep)
    connect_signals()
    app.__dict__["_zombieguard_installed"] = True
    return app


__all__ = ["CeleryAdapter", "CeleryRuntime", "GuardedTask", "SoftTimeLimit", "install"]
