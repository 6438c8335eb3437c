"""A job slot: what a reader sees is the job last started in it, whatever ran there before."""

from __future__ import annotations

import struct
from pathlib import Path

from zombieguard.enforcement.slot import JobSlot


def _start(slot: JobSlot, job_id: str, **fields: object) -> int:
    return slot.start(job_id, 7, 100.0, hard_deadline=110.0, progress_timeout=None, **fields)  # type: ignore[arg-type]


def test_a_slot_reads_back_every_field_of_the_last_job_whether_its_task_and_policy_changed_or_not(
    tmp_path: Path,
) -> None:
    slot = JobSlot(tmp_path / "slot-0")
    first = {"pid": 11, "lease_ttl": 30.0, "task": "app.first", "queue": "q1", "lease_delay": 0.05}
    second = {"pid": 11, "lease_ttl": 5.0, "task": "app.second", "queue": "q2", "lease_delay": None}
    second |= {"max_stalls": 9, "dead_letter": False, "overdue_grace": 2.5}
    for job_id, fields in (("j1", first), ("j2", first), ("j3", second), ("j4", second), ("j5", first)):
        generation = _start(slot, job_id, **fields)
        state = JobSlot(tmp_path / "slot-0").read()  # as another process maps it
        assert (state.generation, state.job_id, state.token) == (generation, job_id, 7)
        assert state.hard_deadline == 110.0
        expected = {"max_stalls": 3, "dead_letter": True, "overdue_grace": 5.0} | fields
        assert {name: getattr(state, name) for name in expected} == expected
        assert state.nonce == slot.nonce
        slot.clear()
        assert not slot.read().active


def test_a_slot_keeps_a_job_s_payload_and_none_once_a_job_without_one_starts(tmp_path: Path) -> None:
    path = tmp_path / "slot-0"
    slot = JobSlot(path)
    _start(slot, "j1", payload=b"request of j1")
    assert JobSlot(path).payload() == b"request of j1"
    _start(slot, "j2")
    assert JobSlot(path).payload() == b""
    _start(slot, "j3", payload=b"r3")
    _start(JobSlot(path), "j4")  # a new process's slot on the same file (its pool process replaced)
    assert slot.payload() == b""


def test_a_slot_its_writer_died_writing_is_written_and_read_consistently_by_the_next_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "slot-0"
    dead = JobSlot(path)
    _start(dead, "j1")
    odd = struct.pack("=q", dead.read().generation + 1)
    dead._map[0:8] = odd  # its writer killed in the middle of a write
    slot = JobSlot(path)  # the process that replaces it
    for job_id in ("j2", "j3"):
        generation = _start(slot, job_id)
        assert generation % 2 == 0
        state = JobSlot(path).read()
        assert (state.generation, state.job_id, state.active) == (generation, job_id, True)
        slot.clear()
        cleared = JobSlot(path).read()
        assert cleared.generation % 2 == 0
        assert not cleared.active
