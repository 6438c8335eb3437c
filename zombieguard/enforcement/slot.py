"""A job slot: shared memory through which a worker tells an enforcer in another process about the
job it runs (which one, under which fencing token, its deadlines, its last progress).

The enforcer is the RQ worker's parent watching its horse, the Celery worker's main process watching
its prefork pool processes (which also renews their leases from what the slots say), or the watchdog
process beside a worker whose jobs run in its own main thread (RQ SimpleWorker, Celery solo): when
that thread is stuck in C code holding the GIL, nothing inside the process can run, so something
outside must act.

Times are ``time.monotonic()`` values: CLOCK_MONOTONIC is one clock for every process of a machine.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zombieguard.policy import Policy

# What changes with every job: generation, active, token, started, hard_deadline, progress_timeout,
# last_progress, job id, confirmed_until, outcome, soft_deadline, started_at (server time), attempt,
# stalls.
_HEAD_FORMAT = "qqqdddd256sdqddqq"
# What the jobs of one task, queue and policy share (written only when it changes): pid, lease_ttl,
# task name, queue, lease_delay, max_stalls, dead_letter, overdue_grace, nonce, children_grace.
_TAIL_FORMAT = "qd128s64sdqqdqd"
PAYLOAD_ROOM = 16384
"""Bytes a slot keeps of what a watchdog process needs to write the job's lease (Celery's
``lease_delay``: the lease may not be written yet when the job gets stuck)."""
_STRUCT = struct.Struct("=" + _HEAD_FORMAT + _TAIL_FORMAT)
_HEAD = struct.Struct("=" + _HEAD_FORMAT)
_TAIL = struct.Struct("=" + _TAIL_FORMAT)
_TARGET_OFFSET = _STRUCT.size
_PAYLOAD_OFFSET = _TARGET_OFFSET + 8
SIZE = _PAYLOAD_OFFSET + 8 + PAYLOAD_ROOM
_GENERATION = struct.Struct("=q")
_DOUBLE = struct.Struct("=d")
_TOKEN_OFFSET = struct.calcsize("=qq")
_LAST_PROGRESS_OFFSET = struct.calcsize("=qqqddd")
_CONFIRMED_OFFSET = struct.calcsize("=qqqdddd256s")
_OUTCOME_OFFSET = struct.calcsize("=qqqdddd256sd")

OUTCOME_COMPLETED = 1
"""The job's process recorded a completion that was safe without asking Redis (see
``Attempt.safe_to_finish``); the watching process writes the lease's release."""

OUTCOME_RECORDING = 2
"""The job's body ended and its own process is recording the end: a renewal refused from now on is
that record landing, not a lost lease."""


@dataclass(frozen=True)
class SlotState:
    """A consistent reading of a slot."""

    generation: int
    active: bool
    token: int
    started: float
    hard_deadline: float | None
    progress_timeout: float | None
    last_progress: float
    job_id: str
    confirmed_until: float
    outcome: int
    soft_deadline: float | None
    started_at: float
    """Server time of the acquire."""
    attempt: int
    stalls: int
    pid: int
    """The process that runs the job."""
    lease_ttl: float
    task: str
    queue: str
    lease_delay: float | None
    """Celery: the job's lease is to be written by its own process within this (token 0 until
    then); None when it was written before the job started."""
    max_stalls: int
    dead_letter: bool
    overdue_grace: float
    """The job's policy's ``max_stalls``, ``dead_letter`` and ``overdue_grace``, for a lease written
    for it by another process (they are fields of the lease)."""

    nonce: int
    """Drawn at random by the process that writes the slot, once: with ``generation``, it names the
    job's execution (see :attr:`tag`)."""
    children_grace: float | None
    """The job's policy's ``kill_children_grace``; None when it leaves the processes the job started
    running (``kill_children=False``)."""

    @property
    def tag(self) -> str:
        """The job's :func:`execution_tag`."""
        return execution_tag(self.nonce, self.generation)

    @property
    def hard_timeout(self) -> float | None:
        """The job's hard limit, as its deadline says."""
        return self.hard_deadline - self.started if self.hard_deadline is not None else None

    @property
    def soft_timeout(self) -> float | None:
        """The job's soft limit, as its deadline says."""
        return self.soft_deadline - self.started if self.soft_deadline is not None else None


class JobSlot:
    """The shared memory. Anonymous (inherited across ``fork``) or backed by a file (any process).

    One object writes the jobs of a slot (the process running them; a slot's file is taken over only
    by a process that replaces a dead one): it rewrites what consecutive jobs share only when it
    changes."""

    def __init__(self, path: Path | None = None) -> None:
        if path is None:
            self._map = mmap.mmap(-1, SIZE)
        else:
            if not path.exists() or path.stat().st_size != SIZE:
                path.write_bytes(b"\0" * SIZE)
            with path.open("r+b") as f:
                self._map = mmap.mmap(f.fileno(), SIZE)
        self.path = path
        self.nonce = int.from_bytes(os.urandom(8), "little") >> 2
        """Written with every job this object starts (see :attr:`SlotState.nonce`)."""
        self._tail: tuple[Any, ...] = ()
        """The tail fields last written (only this object writes them in this slot)."""
        self._kept = -1
        """The length of the payload last written (-1: not written by this object)."""

    def start(
        self,
        job_id: str,
        token: int,
        started: float,
        *,
        hard_deadline: float | None,
        progress_timeout: float | None,
        confirmed_until: float = 0.0,
        soft_deadline: float | None = None,
        started_at: float = 0.0,
        attempt: int = 0,
        stalls: int = 0,
        pid: int = 0,
        lease_ttl: float = 0.0,
        task: str = "",
        queue: str = "",
        payload: bytes = b"",
        lease_delay: float | None = None,
        max_stalls: int = Policy.max_stalls,
        dead_letter: bool = Policy.dead_letter,
        overdue_grace: float = Policy.overdue_grace,
        children_grace: float | None = Policy.kill_children_grace,
    ) -> int:
        """Announce a running job (the writer is its own process; one job at a time per slot).
        ``payload`` (what the integration needs to write the job's lease, in a form of its own) is
        kept when it fits :data:`PAYLOAD_ROOM` (see :meth:`payload`). Returns the slot's generation
        for the job (its readers see it too: see :func:`execution_tag`)."""
        slot = self._map
        generation = _writing(slot)
        # Odd generation while writing: a reader that sees it, or sees it change, reads again.
        slot[0:8] = _GENERATION.pack(generation)
        kept = payload if len(payload) <= PAYLOAD_ROOM else b""
        if kept or self._kept:  # not again 0 when it is 0 already
            _GENERATION.pack_into(slot, _PAYLOAD_OFFSET, len(kept))
            slot[_PAYLOAD_OFFSET + 8 : _PAYLOAD_OFFSET + 8 + len(kept)] = kept
            self._kept = len(kept)
        tail = (
            pid,
            lease_ttl,
            task,
            queue,
            lease_delay,
            max_stalls,
            dead_letter,
            overdue_grace,
            children_grace,
        )
        if tail != self._tail:
            _TAIL.pack_into(
                slot,
                _HEAD.size,
                pid,
                lease_ttl,
                task.encode()[:128],
                queue.encode()[:64],
                -1.0 if lease_delay is None else lease_delay,
                max_stalls,
                int(dead_letter),
                overdue_grace,
                self.nonce,
                -1.0 if children_grace is None else children_grace,
            )
            self._tail = tail
        _HEAD.pack_into(
            slot,
            0,
            generation,
            1,
            token,
            started,
            hard_deadline or 0.0,
            progress_timeout or 0.0,
            started,
            job_id.encode()[:256],
            confirmed_until,
            0,
            soft_deadline or 0.0,
            started_at,
            attempt,
            stalls,
        )
        slot[0:8] = _GENERATION.pack(generation + 1)
        return generation + 1

    def set_token(self, token: int) -> None:
        """The job's lease was written after the job was announced (token 0 until then): one
        8-byte store, never torn for a reader."""
        struct.pack_into("=q", self._map, _TOKEN_OFFSET, token)

    def progress(self, now: float) -> None:
        """Record the job's last progress (one 8-byte store: never torn for a reader)."""
        self._map[_LAST_PROGRESS_OFFSET : _LAST_PROGRESS_OFFSET + 8] = _DOUBLE.pack(now)

    def confirm(self, until: float) -> None:
        """Record that the lease is confirmed held until ``until`` (monotonic)."""
        self._map[_CONFIRMED_OFFSET : _CONFIRMED_OFFSET + 8] = _DOUBLE.pack(until)

    def confirmed_until(self) -> float:
        """The last confirmation recorded (one 8-byte load)."""
        value: float = _DOUBLE.unpack_from(self._map, _CONFIRMED_OFFSET)[0]
        return value

    def set_outcome(self, outcome: int) -> None:
        """Record how the job ended, for the watching process."""
        struct.pack_into("=q", self._map, _OUTCOME_OFFSET, outcome)

    def aim(self, generation: int) -> None:
        """Name the job (by the generation its start gave) that an interrupt about to be sent to its
        process is for: a signal can arrive after that job ended and the next one began, and the
        process raises it only in the job named (see :meth:`aimed_at`). One 8-byte store."""
        _GENERATION.pack_into(self._map, _TARGET_OFFSET, generation)

    def aimed_at(self, generation: int) -> bool:
        """Whether the last interrupt sent is for the job ``generation`` names."""
        target: int = _GENERATION.unpack_from(self._map, _TARGET_OFFSET)[0]
        return target == generation

    def payload(self) -> bytes:
        """The payload the job was announced with (empty when none was kept). Read it only while the
        job's process cannot write the slot (stuck, or dead), or check the generation around it."""
        (length,) = _GENERATION.unpack_from(self._map, _PAYLOAD_OFFSET)
        if not 0 < length <= PAYLOAD_ROOM:
            return b""
        start = _PAYLOAD_OFFSET + 8
        return self._map[start : start + length]

    def clear(self) -> None:
        """The job ended."""
        generation = _writing(self._map)  # its writer ended, or is this process
        self._map[0:8] = _GENERATION.pack(generation)
        struct.pack_into("=q", self._map, 8, 0)
        self._map[0:8] = _GENERATION.pack(generation + 1)

    def read(self) -> SlotState:
        """A consistent snapshot (retries while a write is under way, a bounded number of times: a
        writer killed mid-write must not hang the reader)."""
        for _ in range(10_000):
            raw = _STRUCT.unpack_from(self._map, 0)
            if raw[0] % 2 == 0 and _GENERATION.unpack_from(self._map, 0)[0] == raw[0]:
                break
        (
            generation,
            active,
            token,
            started,
            hard,
            progress_timeout,
            last,
            job_id,
            confirmed,
            outcome,
            soft,
            started_at,
            attempt,
            stalls,
            pid,
            lease_ttl,
            task,
            queue,
            lease_delay,
            max_stalls,
            dead_letter,
            overdue_grace,
            nonce,
            children_grace,
        ) = raw
        return SlotState(
            generation=generation,
            active=bool(active),
            token=token,
            started=started,
            hard_deadline=hard or None,
            progress_timeout=progress_timeout or None,
            last_progress=last,
            job_id=job_id.rstrip(b"\0").decode(errors="replace"),
            confirmed_until=confirmed,
            outcome=outcome,
            soft_deadline=soft or None,
            started_at=started_at,
            attempt=attempt,
            stalls=stalls,
            pid=pid,
            lease_ttl=lease_ttl,
            task=task.rstrip(b"\0").decode(errors="replace"),
            queue=queue.rstrip(b"\0").decode(errors="replace"),
            lease_delay=None if lease_delay < 0 else lease_delay,
            max_stalls=max_stalls,
            dead_letter=bool(dead_letter),
            overdue_grace=overdue_grace,
            nonce=nonce,
            children_grace=None if children_grace < 0 else children_grace,
        )

    def close(self) -> None:
        """Unmap."""
        self._map.close()


def _writing(slot: mmap.mmap) -> int:
    """The odd generation that marks a write under way, past the slot's current one (odd too when a
    writer was killed in the middle of a write: the next one's is still odd)."""
    current: int = _GENERATION.unpack_from(slot, 0)[0]
    return current + 1 if current % 2 == 0 else current + 2


def execution_tag(nonce: int, generation: int) -> str:
    """Names one execution of a job (the slot's nonce and the generation its start gave), as the
    process running it and the processes reading its slot agree on it: a lease one of them writes for
    it under this tag, the other takes over (see :meth:`zombieguard.leases.LeaseStore.acquire`). Two
    slots of one process, or a slot of a process restarted with the same pid, never share it."""
    return f"{nonce:x}.{generation}"


def remove_stale_workdirs(prefix: str, before_removal: Callable[[Path], None] | None = None) -> None:
    """Delete the working directories (``<tmp>/<prefix><pid>-*``, slots and stack dumps) of workers
    that were killed and could not clean up after themselves; ``before_removal`` is given each one
    first."""
    for path in Path(tempfile.gettempdir()).glob(f"{prefix}*-*"):
        pid = path.name[len(prefix) :].split("-", 1)[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        if before_removal is not None:
            before_removal(path)
        with contextlib.suppress(OSError):
            for child in path.iterdir():
                if child.is_dir():
                    for grandchild in child.iterdir():
                        grandchild.unlink()
                    child.rmdir()
                else:
                    child.unlink()
            path.rmdir()
