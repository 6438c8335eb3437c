"""The checker: what each job's history and final state say about the promise.

The promise: every job ends exactly once (completed, failed by its own error or a limit, or
dead-lettered after ``max_stalls``); none is lost, none is left started, queued or unacked, none ends
two ways, and no superseded attempt commits.

Pure logic, no I/O: the runner gathers the history lines the job bodies wrote and the final state of
every job (the framework's view, zombieguard's lease record and dead-letter entry); :func:`judge`
classifies one job, :func:`judge_all` every job.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum


class Verdict(str, Enum):
    """How one job ended, as far as the promise is concerned."""

    OK = "ok"
    LOST = "lost"
    """Not ended, and nowhere: no message or registry entry, no live lease, no dead-letter entry."""
    STUCK = "stuck"
    """Still queued, started, unacked or in RQ's intermediate queue, or its lease still running or
    being recovered, after the drain; or ended but with a copy left that would run it again."""
    PHANTOM = "phantom"
    """The framework says it succeeded, but no attempt committed."""
    ZOMBIE_COMMIT = "zombie commit"
    """An attempt committed after a newer attempt of the same job had started."""
    WRONG_TERMINAL = "wrong terminal state"
    """Ended, but not the way its kind and its faults allow, or ended two ways."""
    LOST_IN_BROKER = "lost in the broker"
    """Lost, and shown lost by kombu's Redis transport before any worker could see it (see
    :func:`lost_to_a_frozen_worker`): reported, and not counted against zombieguard's promise."""


BROKEN = frozenset(v for v in Verdict if v not in (Verdict.OK, Verdict.LOST_IN_BROKER))
"""Verdicts that break the promise."""

LIVE_LEASE_STATES = frozenset({"running", "recovering", "queued"})
"""Lease states of a job that is not over: an attempt runs, is being recovered, or is requeued."""

_LIMIT_FAILURE = re.compile(r"timeout|time ?limit|timed.?out|hung|progress", re.IGNORECASE)
"""A framework's failure text that says a limit stopped the job (RQ's JobTimeoutException, Celery's
TimeLimitExceeded, zombieguard's HardTimeLimitExceeded and JobHung)."""


# -- the history the job bodies wrote ----------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One history line: a body started or committed."""

    event: str
    job: str
    run: str
    """Names one execution of a body (a fresh id each time a body starts)."""
    attempt: int
    token: int
    """The fencing token of the attempt (0: unknown, or a plain run)."""
    pid: int
    time: float


def parse_lines(text: str) -> list[Line]:
    """The lines of one history file; a torn or unreadable line (its writer killed mid-write) is skipped."""
    lines = []
    for raw in text.splitlines():
        try:
            data = json.loads(raw)
            lines.append(
                Line(
                    event=str(data["event"]),
                    job=str(data["job"]),
                    run=str(data["run"]),
                    attempt=int(data.get("attempt", 0)),
                    token=int(data.get("token", 0)),
                    pid=int(data.get("pid", 0)),
                    time=float(data["time"]),
                )
            )
        except (ValueError, KeyError, TypeError):
            continue
    return lines


@dataclass(frozen=True)
class Execution:
    """One execution of a job's body, put together from its lines."""

    run: str
    pid: int
    attempt: int
    token: int
    started: float | None
    committed: float | None


def executions(lines: Iterable[Line]) -> dict[str, list[Execution]]:
    """Executions by job id, in the order they started."""
    by_run: dict[tuple[str, str], list[Line]] = {}
    for line in lines:
        by_run.setdefault((line.job, line.run), []).append(line)
    out: dict[str, list[Execution]] = {}
    for (job, run), group in by_run.items():
        start = next((ln for ln in group if ln.event == "start"), None)
        commit = next((ln for ln in group if ln.event == "commit"), None)
        # The commit's token is the one the fenced beat was sent with; a start's may still be 0
        # when the lease could not be written then (Redis away).
        token = max(ln.token for ln in group)
        attempt = max(ln.attempt for ln in group)
        out.setdefault(job, []).append(
            Execution(
                run=run,
                pid=group[0].pid,
                attempt=attempt,
                token=token,
                started=start.time if start else None,
                committed=commit.time if commit else None,
            )
        )
    for runs in out.values():
        runs.sort(key=lambda e: e.started if e.started is not None else e.committed or 0.0)
    return out


# -- the final state the runner gathered --------------------------------------------------------


@dataclass(frozen=True)
class Copy:
    """Something of the job the framework still holds: a message, or a registry entry."""

    place: str
    """``queue``, ``intermediate``, ``started``, ``unacked``, ``scheduled``, ``deferred``."""
    attempt: int | None = None
    """The attempt number a Celery message is for (its ``zombieguard_attempt`` header, else 1);
    None for what carries no attempt (RQ's entries: a delivery of them always runs)."""


@dataclass(frozen=True)
class FrameworkState:
    """The framework's view of one job at the end."""

    status: str
    """RQ's job status, or Celery's result state; ``missing`` when there is none."""
    completed: bool
    """Recorded as succeeded (RQ: finished status or finished registry; Celery: SUCCESS)."""
    failed: bool
    """Recorded as failed (RQ: failed status or failed registry; Celery: FAILURE, REVOKED)."""
    failure: str = ""
    """Why it failed, as the framework recorded it (the exception's last line)."""
    copies: tuple[Copy, ...] = ()


@dataclass(frozen=True)
class EndedAttempt:
    """One ended attempt, as a lease's history or a dead-letter entry records it."""

    attempt: int
    outcome: str
    worker: str = ""
    reason: str = ""


def _attempts(items: Iterable[Mapping[str, object]]) -> tuple[EndedAttempt, ...]:
    return tuple(
        EndedAttempt(
            attempt=int(str(item.get("attempt", 0))),
            outcome=str(item.get("outcome", "")),
            worker=str(item.get("worker", "")),
            reason=str(item.get("reason", "")),
        )
        for item in items
    )


@dataclass(frozen=True)
class LeaseState:
    """zombieguard's lease record of the job (docs/data-model.md)."""

    state: str
    outcome: str = ""
    attempt: int = 0
    token: int = 0
    stalls: int = 0
    max_stalls: int = 0
    worker: str = ""
    history: tuple[EndedAttempt, ...] = ()

    @classmethod
    def from_hash(cls, fields: Mapping[str, str]) -> LeaseState:
        """From the lease hash's fields (decoded); unreadable history lines are skipped."""
        history = []
        for raw in fields.get("history", "").splitlines():
            try:
                history.append(json.loads(raw))
            except ValueError:
                continue

        def number(name: str) -> int:
            try:
                return int(float(fields.get(name) or 0))
            except ValueError:
                return 0

        return cls(
            state=fields.get("state", ""),
            outcome=fields.get("outcome", ""),
            attempt=number("attempt"),
            token=number("token"),
            stalls=number("stalls"),
            max_stalls=number("max_stalls"),
            worker=fields.get("worker", ""),
            history=_attempts(history),
        )


@dataclass(frozen=True)
class DeadLetter:
    """The job's dead-letter entry."""

    reason: str
    attempts: tuple[EndedAttempt, ...]

    @classmethod
    def from_json(cls, text: str) -> DeadLetter:
        """From the stored entry (``{p}:dlq`` hash value)."""
        data = json.loads(text)
        return cls(reason=str(data.get("reason", "")), attempts=_attempts(data.get("attempts", ())))


@dataclass(frozen=True)
class JobFinal:
    """Everything known about one job at the end of a run."""

    job_id: str
    kind: str
    """``normal``, ``long``, ``hung`` or ``poison``."""
    framework: FrameworkState
    lease: LeaseState | None = None
    dead_letter: DeadLetter | None = None


# -- judging -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    """The verdict on one job, and every problem found (the verdict is the most serious one)."""

    job_id: str
    kind: str
    verdict: Verdict
    problems: tuple[str, ...] = ()
    commits: int = 0
    """Commits not made by a superseded attempt."""
    notes: tuple[str, ...] = ()
    """What is worth knowing but breaks nothing (stale copies left that will be refused)."""
    executions: tuple[Execution, ...] = field(default=(), repr=False)

    @property
    def duplicate(self) -> bool:
        """More than one commit not explained as a zombie's: at-least-once, reported, not a failure."""
        return self.commits > 1


def _supersedes(newer: Execution, older: Execution) -> bool:
    """Whether ``newer`` is a later attempt than ``older``: by fencing token when both are known,
    else (plain runs, or a lease Redis never wrote) by which started later."""
    if newer.token > 0 and older.token > 0:
        return newer.token > older.token
    if newer.started is None or older.started is None:
        return False
    return newer.started > older.started


def zombie_commits(runs: Sequence[Execution]) -> list[tuple[Execution, Execution]]:
    """(commit, newer execution) pairs: a commit recorded after a newer attempt of the job started."""
    found = []
    for done in runs:
        if done.committed is None:
            continue
        for other in runs:
            if other.run == done.run or other.started is None:
                continue
            if _supersedes(other, done) and other.started < done.committed:
                found.append((done, other))
                break
    return found


def stalls_of(final: JobFinal) -> int:
    """How many times the job stalled, by its lease record and its dead-letter entry."""
    counted = [0]
    if final.lease is not None:
        counted.append(final.lease.stalls)
        counted.append(sum(1 for a in final.lease.history if a.outcome == "stalled"))
    if final.dead_letter is not None:
        counted.append(sum(1 for a in final.dead_letter.attempts if a.outcome == "stalled"))
    return max(counted)


def _ended_as_hung(final: JobFinal) -> bool:
    lease = final.lease
    if lease is not None and (
        lease.outcome == "hung" or (lease.history and lease.history[-1].outcome == "hung")
    ):
        return True
    return final.framework.failed and bool(re.search(r"hung|progress", final.framework.failure, re.I))


_NOT_DONE = frozenset({"hung", "timed_out", "dead_lettered", "stalled"})
"""Outcomes of a lease's last attempt that contradict a recorded success."""


def _harmful(copy: Copy, lease: LeaseState | None) -> bool:
    """Whether a copy left behind by an ended job would run it again when delivered.

    RQ's entries always would (RQ carries no attempt number; its cleanup would also fail a finished
    job it finds in the started registry or the intermediate queue). A Celery message is refused as
    stale when the lease's tombstone holds an attempt at least as new as the one the message is for.
    """
    if copy.attempt is None or lease is None:
        return True
    return not (lease.state == "done" and lease.attempt >= copy.attempt)


def _failure(framework: FrameworkState) -> str:
    return framework.failure or framework.status


def _end_problem(final: JobFinal, end: str, guarded: bool, max_stalls: int) -> str | None:
    """What is wrong with the one way the job ended, given its kind (None: nothing)."""
    kind, framework = final.kind, final.framework
    problem: str | None = None
    if end == "dead_lettered":
        stalls = stalls_of(final)
        if stalls <= max_stalls:
            problem = f"dead-lettered after {stalls} stalls (max_stalls={max_stalls}): not a poison pill"
    elif end == "completed":
        if kind in ("hung", "poison"):
            problem = f"a {kind} job completed"
    elif kind == "hung":
        if guarded and not _ended_as_hung(final):
            problem = f"a hung job failed, but not as hung: {_failure(framework)}"
        elif not guarded and not _LIMIT_FAILURE.search(framework.failure):
            problem = f"a hung job failed, but not by a limit: {_failure(framework)}"
    elif kind == "poison":
        # Plain frameworks have no dead-letter queue: failing a poison pill once is their best.
        if guarded:
            problem = f"a poison job failed, not dead-lettered: {_failure(framework)}"
    else:
        problem = f"a {kind} job failed: {_failure(framework)}"
    return problem


_RANK = {
    "zombie": (0, Verdict.ZOMBIE_COMMIT),
    "phantom": (1, Verdict.PHANTOM),
    "two ways": (2, Verdict.WRONG_TERMINAL),
    "stuck": (3, Verdict.STUCK),
    "lost": (4, Verdict.LOST),
    "wrong": (5, Verdict.WRONG_TERMINAL),
}
"""Which problem decides the verdict when a job has several: a superseded commit, a success no one
committed and a double end say the most; any other wrong end says less than being stuck or lost."""

Problem = tuple[str, str]
"""(a key of ``_RANK``, what was found)."""


def _commit_problems(final: JobFinal, runs: Sequence[Execution]) -> tuple[list[Problem], int]:
    """Zombie commits and phantoms; and how many commits count (not a superseded attempt's)."""
    problems: list[Problem] = []
    zombies = zombie_commits(runs)
    for done, newer in zombies:
        problems.append(
            (
                "zombie",
                f"run {done.run} (attempt {done.attempt}, token {done.token}, pid {done.pid}) committed at "
                f"{done.committed:.3f}, after run {newer.run} (attempt {newer.attempt}, token "
                f"{newer.token}, pid {newer.pid}) started at {newer.started:.3f}",
            )
        )
    zombie_runs = {done.run for done, _ in zombies}
    commits = sum(1 for r in runs if r.committed is not None and r.run not in zombie_runs)
    if final.framework.completed and not any(r.committed is not None for r in runs):
        problems.append(("phantom", f"recorded {final.framework.status} but no attempt committed"))
    return problems, commits


def ends_of(final: JobFinal) -> set[str]:
    """The ways the job ended: ``completed``, ``failed``, ``dead_lettered`` (none, one, or more)."""
    ends: set[str] = set()
    if final.framework.completed:
        ends.add("completed")
    if final.dead_letter is not None:
        ends.add("dead_lettered")  # the framework records it failed too: that is the same end
    elif final.framework.failed:
        ends.add("failed")
    return ends


def _two_ways(final: JobFinal, ends: set[str], guarded: bool) -> list[Problem]:
    problems: list[Problem] = []
    if len(ends) > 1:
        problems.append(
            ("two ways", f"ends two ways: {' and '.join(sorted(ends))} ({final.framework.failure})")
        )
    lease = final.lease
    last = lease.history[-1].outcome if lease is not None and lease.history else ""
    # A lease closed as "ended" is the sweeper finding that the framework had recorded the end (its
    # worker died between recording it and releasing the lease): its last attempt reads "stalled".
    closed_late = lease is not None and lease.outcome == "ended"
    if (
        guarded
        and "completed" in ends
        and lease is not None
        and lease.state == "done"
        and not closed_late
        and last in _NOT_DONE
    ):
        problems.append(("two ways", f"ends two ways: completed, and its lease's last attempt ended {last}"))
    return problems


def _place_problems(final: JobFinal, ends: set[str]) -> tuple[list[Problem], list[str]]:
    """Stuck or lost; and notes on stale copies that will be refused."""
    framework, lease = final.framework, final.lease
    live = [f"lease {lease.state}"] if lease is not None and lease.state in LIVE_LEASE_STATES else []
    if not ends:
        where = [c.place for c in framework.copies] + live
        if where:
            return [("stuck", f"not ended ({framework.status}); still in {', '.join(where)}")], []
        return [("lost", f"not ended ({framework.status}) and nowhere")], []
    problems: list[Problem] = []
    notes: list[str] = []
    ended = ", ".join(sorted(ends))
    for copy in framework.copies:
        of = f" (attempt {copy.attempt})" if copy.attempt else ""
        if _harmful(copy, lease):
            problems.append(
                ("stuck", f"ended ({ended}) but a copy that would run again is in {copy.place}{of}")
            )
        else:
            notes.append(f"a stale copy{of} is left in {copy.place}: refused when delivered")
    problems += [("stuck", f"ended ({ended}) but its {where}") for where in live]
    return problems, notes


def judge(final: JobFinal, runs: Sequence[Execution], *, guarded: bool, max_stalls: int) -> Judgement:
    """Classify one job. ``guarded``: zombieguard ran it (leases, dead-lettering expected)."""
    problems, commits = _commit_problems(final, runs)
    ends = ends_of(final)
    problems += _two_ways(final, ends, guarded)
    placed, notes = _place_problems(final, ends)
    problems += placed
    if len(ends) == 1:
        wrong = _end_problem(final, next(iter(ends)), guarded, max_stalls)
        if wrong:
            problems.append(("wrong", wrong))
    if guarded and final.dead_letter is not None and not final.framework.failed:
        problems.append(("wrong", f"dead-lettered, but the framework has it {final.framework.status}"))
    verdict = min((_RANK[key] for key, _ in problems), default=(len(_RANK), Verdict.OK))[1]
    return Judgement(
        job_id=final.job_id,
        kind=final.kind,
        verdict=verdict,
        problems=tuple(f"{_RANK[key][1].value}: {text}" for key, text in problems),
        commits=commits,
        notes=tuple(notes),
        executions=tuple(runs),
    )


def judge_all(
    finals: Iterable[JobFinal], lines: Iterable[Line], *, guarded: bool, max_stalls: int
) -> list[Judgement]:
    """Judge every job of a run, from its final state and every history line of the run."""
    runs = executions(lines)
    return [judge(f, runs.get(f.job_id, []), guarded=guarded, max_stalls=max_stalls) for f in finals]


BRPOP_WINDOW = 1.2
"""Seconds after a worker froze during which a message pushed to its queue can still be popped for
it: kombu's BRPOP timeout (1 s), issued before the freeze, and a margin."""


@dataclass(frozen=True)
class Freeze:
    """A worker frozen (SIGSTOP) from ``start`` to ``end``, killed at ``killed`` (None: woken)."""

    worker: str
    start: float
    end: float
    killed: float | None = None


def lost_to_a_frozen_worker(
    sent_at: float, freezes: Iterable[Freeze], span: tuple[float, float] | None = None
) -> str | None:
    """Why a lost job is the broker's loss, or None. kombu's Redis transport takes a message with
    BRPOP: Redis pops it for the worker whose read is pending, and only the worker, reading the reply,
    writes it to the ``unacked`` hash. A worker frozen with a read pending, then killed before it
    woke, takes the message with it: no worker ever received it, nothing of it is left anywhere.
    That read is pending for up to :data:`BRPOP_WINDOW` after the freeze began. A job sent in that
    window is that loss; so is one sent before it that can only have been popped then (``span``:
    see :func:`pop_span`, at most :data:`QUIET_SPAN` wide, give or take :data:`RECEIPT_MARGIN`)."""
    for freeze in freezes:
        if freeze.killed is None or not freeze.start <= freeze.killed < freeze.end:
            continue
        window = (freeze.start, freeze.start + BRPOP_WINDOW)
        killed = f"{freeze.worker} was killed frozen {freeze.killed - freeze.start:.1f} s later"
        if window[0] <= sent_at <= window[1]:
            return (
                f"sent {sent_at - freeze.start:.2f} s after {freeze.worker} froze, and {killed}: kombu's "
                "BRPOP popped it for that worker, which never read it"
            )
        if (
            span is not None
            and sent_at < window[0]
            and span[1] - span[0] <= QUIET_SPAN
            and span[0] - RECEIPT_MARGIN <= window[1]
            and window[0] <= span[1] + RECEIPT_MARGIN
        ):
            return (
                f"popped between {span[0]:.2f} s and {span[1]:.2f} s (the receipts of the jobs sent "
                f"before and after it), {freeze.worker} froze at {freeze.start:.2f} s with a read "
                f"pending, and {killed}: kombu's BRPOP popped it for that worker, which never read it"
            )
    return None


RECEIPT_MARGIN = 0.5
"""Seconds by which receipts logged by different workers may come out of the order of their pops."""

QUIET_SPAN = 5.0
"""The widest span in which a lost job can have been popped for it to be blamed on a death in it."""


@dataclass(frozen=True)
class Death:
    """A worker's main process killed (SIGKILL: a fault, or a poison pill in its own process), as the
    supervisor saw it dead at ``seen`` (within ``SUPERVISE_EVERY`` of the death)."""

    worker: str
    seen: float


def pop_span(
    job_id: str, sent: Sequence[str], first_received: Mapping[str, float]
) -> tuple[float, float] | None:
    """When kombu can have popped a job: its queue is first in, first out (LPUSH, BRPOP), so after
    every job sent before it was first received and before any job sent after it was (None when
    no job on one side was received)."""
    at = sent.index(job_id)
    before = [first_received[j] for j in sent[:at] if j in first_received]
    after = [first_received[j] for j in sent[at + 1 :] if j in first_received]
    if not before or not after:
        return None
    return max(before), min(after)


def lost_to_a_dying_worker(
    span: tuple[float, float], sent_at: float, deaths: Iterable[Death], supervise_every: float
) -> str | None:
    """Why a lost job no worker received is the broker's loss, or None. A worker killed with kombu's
    BRPOP reply on its way (Redis popped the message for it; only the worker, reading the reply,
    writes it to the ``unacked`` hash) takes the message with it. A job that can only have been
    popped in a span of at most :data:`QUIET_SPAN` in which a worker was killed is that loss (not
    popped before it was sent)."""
    if span[1] - span[0] > QUIET_SPAN:
        return None
    low, high = max(span[0] - RECEIPT_MARGIN, sent_at), span[1] + RECEIPT_MARGIN
    for death in deaths:
        if low <= death.seen and death.seen - supervise_every - RECEIPT_MARGIN <= high:
            return (
                f"popped between {span[0]:.2f} s and {span[1]:.2f} s (the receipts of the jobs sent "
                f"before and after it), and {death.worker} was killed then (seen dead at "
                f"{death.seen:.2f} s): kombu's BRPOP popped it for that worker, which never read it"
            )
    return None


def attribute_broker_losses(
    judgements: Sequence[Judgement],
    sent_at: Mapping[str, float],
    freezes: Sequence[Freeze],
    received: Mapping[str, float],
    *,
    deaths: Sequence[Death] = (),
    supervise_every: float = 0.2,
) -> list[Judgement]:
    """Judgements with each LOST job that no worker ever received and that
    :func:`lost_to_a_frozen_worker` or :func:`lost_to_a_dying_worker` explains made
    :attr:`Verdict.LOST_IN_BROKER` (``sent_at``: run times, in the order sent; ``received``: when a
    worker first logged receiving each job, in run time)."""
    sent = list(sent_at)
    # A worker killed frozen read nothing near its death: only the freeze can explain a loss to it.
    awake = [
        d
        for d in deaths
        if not any(
            f.worker == d.worker and f.killed is not None and f.killed <= d.seen <= f.end for f in freezes
        )
    ]
    out = []
    for j in judgements:
        why = None
        if j.verdict is Verdict.LOST and j.job_id not in received and j.job_id in sent_at:
            span = pop_span(j.job_id, sent, received)
            why = lost_to_a_frozen_worker(sent_at[j.job_id], freezes, span)
            if why is None and span is not None:
                why = lost_to_a_dying_worker(span, sent_at[j.job_id], awake, supervise_every)
        out.append(
            j if why is None else replace(j, verdict=Verdict.LOST_IN_BROKER, problems=(*j.problems, why))
        )
    return out


def unsettled(judgements: Iterable[Judgement]) -> list[Judgement]:
    """Jobs that may still move on their own (stuck or lost): what the drain waits for."""
    return [j for j in judgements if j.verdict in (Verdict.STUCK, Verdict.LOST)]


KINDS = ("normal", "long", "hung", "poison")


def table(judgements: Sequence[Judgement]) -> str:
    """The classification table: a row per verdict (and duplicates), a column per kind and a total."""
    counts: Counter[tuple[str, str]] = Counter()
    for j in judgements:
        counts[(j.verdict.value, j.kind)] += 1
        counts[(j.verdict.value, "total")] += 1
        if j.duplicate:
            counts[("duplicate (at-least-once)", j.kind)] += 1
            counts[("duplicate (at-least-once)", "total")] += 1
        counts[("jobs", j.kind)] += 1
        counts[("jobs", "total")] += 1
    columns = [*KINDS, "total"]
    rows = ["jobs", *(v.value for v in Verdict), "duplicate (at-least-once)"]
    width = max(len(r) for r in rows)
    out = ["| " + "class".ljust(width) + " | " + " | ".join(c.rjust(6) for c in columns) + " |"]
    out.append("| " + "-" * width + " | " + " | ".join("-" * 6 for _ in columns) + " |")
    for row in rows:
        out.append(
            "| "
            + row.ljust(width)
            + " | "
            + " | ".join(str(counts[(row, c)]).rjust(6) for c in columns)
            + " |"
        )
    return "\n".join(out)
