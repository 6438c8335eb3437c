"""What a task message carries for zombieguard: the attempt number a delivery is for, its queue,
whether it may have run before, and the payload a sweeper publishes again (computed from the
request, or from its pickled copy in a slot in the watchdog process)."""

from __future__ import annotations

import json
import operator
import pickle
from typing import Any

from celery import Celery
from celery.app.task import Context, Task
from kombu.utils import json as kombu_json

from zombieguard.containment import log
from zombieguard.enforcement.slot import SlotState
from zombieguard.integrations.celery import internals

ATTEMPT_HEADER = "zombieguard_attempt"
"""Message header with the attempt number a delivery is for (absent: the first)."""


def _attempt_header(request: Any) -> Any:
    """The attempt number a delivery carries (zombieguard's requeue, ``self.retry``), or None."""
    value = getattr(request, ATTEMPT_HEADER, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(ATTEMPT_HEADER)
    return value


def first_delivery(request: Any) -> bool:
    """Whether nothing can have run this delivery's task before: no attempt number (zombieguard's
    requeue, ``self.retry``) and not redelivered by the broker (a restored or requeued message)."""
    if _attempt_header(request) is not None:
        return False
    return not ((request.delivery_info or {}).get("redelivered") or getattr(request, "redelivered", False))


def delivery_attempt(request: Any) -> int:
    value = _attempt_header(request)
    try:
        return max(1, int(value)) if value is not None else 1
    except (TypeError, ValueError):
        return 1


def queue_of(request: Any) -> str:
    info = getattr(request, "delivery_info", None) or {}
    return str(info.get("routing_key") or info.get("queue") or "")


MUTABLE = ("chain", "callbacks", "errbacks", "chord", "headers", "delivery_info")
"""A task request's fields that a body may change in place (``self.request.chain = None`` stops a
chain), kept as they were at the start for the payload computed later."""


mutable_fields = operator.attrgetter(*MUTABLE)
"""Their values, in one call (Celery's request context defines each)."""


def task_payload(task: Task, request: Any, args: Any = None, kwargs: Any = None) -> str:
    """What a sweeper needs to publish the task again (and ``status`` shows); ``args`` and
    ``kwargs``: the ones to publish, when not the request's."""
    try:
        signature = dict(task.signature_from_request(request, args, kwargs))
        return str(kombu_json.dumps({"signature": signature}))  # type: ignore[no-untyped-call]
    except Exception as exc:  # e.g. arguments only pickle can carry
        log.warning("celery task %s: cannot be recovered by re-publishing (%s)", request.id, exc)
        return json.dumps({"unpublishable": str(exc)})


def message_payload(request: Any) -> str:
    """The payload of the task a worker's main-process ``Request`` describes, as its message came."""
    return task_payload(request.task, internals.request_context(request), request.args, request.kwargs)


class Snapshot:
    """A pending attempt's payload, computed when first needed from its request as it was at the
    start, pickled: what a body changes in place later (its arguments, ``self.request.chain``) is
    not republished. The pickle also goes into the task's slot, for the watchdog process."""

    def __init__(self, task: Task, request: Any, pickled: bytes) -> None:
        self.task = task
        self.request = request
        self.pickled = pickled

    def __call__(self) -> str:
        try:
            return _pickled_payload(self.task, self.pickled)
        except Exception as exc:  # e.g. an argument's own __setstate__
            log.warning(
                "celery task %s: the copy of its request does not load (%s); its payload takes it as "
                "it is now",
                self.request.id,
                exc,
            )
            return task_payload(self.task, self.request)


def _pickled_payload(task: Task, pickled: bytes) -> str:
    """The payload of a request pickled as ``vars(request)`` (raises what loading it raises)."""
    return task_payload(task, Context(pickle.loads(pickled)))


def payload_from_slot(state: SlotState, kept: bytes) -> str:
    """In the watchdog process, which has no Celery app: the payload of a task whose lease it must
    write, from the pickled request its slot keeps (``""`` when the slot keeps none)."""
    if not kept:
        return ""
    app = Celery("zombieguard-watchdog", set_as_current=False)
    task = app.task(name=state.task, shared=False)(_never_run)
    try:
        return _pickled_payload(task, kept)
    except Exception as exc:  # e.g. an argument of a class this process cannot import
        log.warning(
            "celery task %s: its request, as its slot keeps it, does not load (%s)", state.job_id, exc
        )
        return json.dumps({"unpublishable": f"its request did not load in the watchdog process: {exc}"})


def _never_run() -> None:
    """The body of the stand-in task :func:`payload_from_slot` builds signatures with."""
