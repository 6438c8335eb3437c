"""Checkpoint / resume: progress that survives a recovery.

    cp = zombieguard.checkpoint()
    for row in cp.iterate(rows):      # a recovered attempt skips the rows already done
        process(row)

Checkpoints live in their own Redis key (``{prefix}:checkpoint:<job>``), never in the framework's
job record (RQ rewrites ``job.meta`` from a stale copy on retry). Each save is fenced by the attempt's
token: a superseded attempt cannot overwrite its successor's progress. A completed job's checkpoint
is deleted; a failed or dead-lettered one is kept for ``state_ttl`` so that a retry or a requeue
resumes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from zombieguard.errors import CheckpointNotSerializable
from zombieguard.worker.attempt import Attempt, require_attempt

T = TypeVar("T")


class Checkpoint:
    """The checkpoint of the running job."""

    def __init__(self, attempt: Attempt) -> None:
        self._attempt = attempt

    @property
    def state(self) -> Any:
        """The last saved value, or None on a first attempt (or when nothing was saved)."""
        raw = self._attempt.checkpoint_json
        return None if raw is None else json.loads(raw)

    def save(self, value: Any) -> None:
        """Save ``value`` (JSON-serialisable); counts as progress. Raises LeaseLost when superseded."""
        try:
            encoded = json.dumps(value, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise CheckpointNotSerializable(
                f"checkpoint().save() needs a JSON-serialisable value; {type(value).__name__} is not ({exc})"
            ) from None
        self._attempt.save_checkpoint(encoded)

    def iterate(self, iterable: Iterable[T], every: int = 1) -> Iterator[T]:
        """Yield the items of ``iterable`` after the last saved position, saving as it goes.

        The position (items done) is saved once an item's processing returns control, every
        ``every`` items and at the end; an item being processed when the attempt died is processed
        again by the next attempt. The checkpoint's value is the position, so do not also ``save()``
        your own value in the same job.
        """
        if every < 1:
            raise ValueError(f"every={every!r} is invalid: it must be at least 1")
        state = self.state
        start = state if isinstance(state, int) and not isinstance(state, bool) else 0
        position = 0
        for item in iterable:
            if position < start:
                position += 1
                continue
            yield item
            position += 1
            if (position - start) % every == 0:
                self.save(position)
        if position > start and (position - start) % every != 0:
            self.save(position)


def checkpoint() -> Checkpoint:
    """The running job's checkpoint; raises NotInGuardedJob outside a guarded job."""
    return Checkpoint(require_attempt("zombieguard.checkpoint()"))
