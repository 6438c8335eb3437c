"""The checker on hand-made histories: each verdict, and the rules that decide between them."""

from __future__ import annotations

import json

import pytest

from tests.chaos import history
from tests.chaos.history import (
    Copy,
    DeadLetter,
    EndedAttempt,
    Execution,
    FrameworkState,
    JobFinal,
    LeaseState,
    Verdict,
    executions,
    judge,
    judge_all,
    parse_lines,
    table,
    unsettled,
)

MAX_STALLS = 3

FINISHED = FrameworkState("finished", completed=True, failed=False)
FAILED_HUNG = FrameworkState(
    "failed", completed=False, failed=True, failure="zombieguard.JobHung: no progress"
)
FAILED_LOST = FrameworkState("failed", completed=False, failed=True, failure="zombieguard.JobDeadLettered: x")


def run(
    run_id: str, token: int, started: float | None, committed: float | None, attempt: int = 1
) -> Execution:
    """One execution of a body."""
    return Execution(
        run_id, pid=100 + token, attempt=attempt, token=token, started=started, committed=committed
    )


def stalled(times: int) -> tuple[EndedAttempt, ...]:
    """A history of ``times`` stalled attempts."""
    return tuple(EndedAttempt(n + 1, "stalled") for n in range(times))


def verdict_of(final: JobFinal, runs: list[Execution], guarded: bool = True) -> Verdict:
    """The verdict on one job."""
    return judge(final, runs, guarded=guarded, max_stalls=MAX_STALLS).verdict


def test_a_job_completed_once_is_ok() -> None:
    assert verdict_of(JobFinal("j", "normal", FINISHED), [run("a", 1, 1.0, 2.0)]) is Verdict.OK


def test_two_commits_of_attempts_one_after_the_other_are_a_duplicate_not_a_failure() -> None:
    # The first attempt committed, its worker died before the framework recorded it; recovered, the
    # second attempt ran and committed too: at-least-once.
    judgement = judge(
        JobFinal("j", "normal", FINISHED),
        [run("a", 1, 1.0, 2.0), run("b", 5, 6.0, 7.0, attempt=2)],
        guarded=True,
        max_stalls=MAX_STALLS,
    )
    assert judgement.verdict is Verdict.OK
    assert judgement.duplicate
    assert judgement.commits == 2


def test_a_commit_after_a_newer_attempt_started_is_a_zombie_commit() -> None:
    # Attempt 1 (token 3) froze, attempt 2 (token 8) started at 5.0, attempt 1 woke and committed at 9.0.
    runs = [run("old", 3, 1.0, 9.0), run("new", 8, 5.0, 6.0, attempt=2)]
    judgement = judge(JobFinal("j", "normal", FINISHED), runs, guarded=True, max_stalls=MAX_STALLS)
    assert judgement.verdict is Verdict.ZOMBIE_COMMIT
    assert judgement.commits == 1, "the zombie's commit does not count"
    assert "run old" in judgement.problems[0]


def test_a_commit_before_the_newer_attempt_started_is_no_zombie() -> None:
    runs = [run("old", 3, 1.0, 4.0), run("new", 8, 5.0, 6.0, attempt=2)]
    assert verdict_of(JobFinal("j", "normal", FINISHED), runs) is Verdict.OK


def test_tokens_decide_which_attempt_is_newer_even_when_clocks_say_otherwise() -> None:
    # The higher token started first by the wall clock: it is still the newer attempt, so the lower
    # token's commit after it is a zombie's.
    runs = [run("low", 2, 5.0, 9.0), run("high", 9, 4.0, None, attempt=2)]
    assert verdict_of(JobFinal("j", "normal", FINISHED), runs) is Verdict.ZOMBIE_COMMIT


def test_without_tokens_the_later_start_is_the_newer_attempt() -> None:
    # Plain runs: no tokens, so a commit after a later execution of the same job started is a zombie's.
    runs = [run("first", 0, 1.0, 9.0), run("second", 0, 5.0, 6.0)]
    assert verdict_of(JobFinal("j", "normal", FINISHED), runs, guarded=False) is Verdict.ZOMBIE_COMMIT


def test_success_without_a_commit_is_a_phantom() -> None:
    assert verdict_of(JobFinal("j", "normal", FINISHED), [run("a", 1, 1.0, None)]) is Verdict.PHANTOM


def test_a_job_nowhere_is_lost() -> None:
    final = JobFinal("j", "normal", FrameworkState("started", completed=False, failed=False))
    assert verdict_of(final, [run("a", 1, 1.0, None)]) is Verdict.LOST


@pytest.mark.parametrize("place", ["queue", "intermediate", "started", "unacked"])
def test_a_job_not_ended_but_held_somewhere_is_stuck(place: str) -> None:
    final = JobFinal("j", "normal", FrameworkState("started", False, False, copies=(Copy(place),)))
    assert verdict_of(final, []) is Verdict.STUCK


def test_a_job_whose_lease_is_still_being_recovered_is_stuck() -> None:
    final = JobFinal("j", "normal", FrameworkState("PENDING", False, False), lease=LeaseState("recovering"))
    assert verdict_of(final, []) is Verdict.STUCK


def test_an_ended_rq_job_left_in_the_started_registry_is_stuck() -> None:
    # RQ's cleanup would fail it later, over its success.
    final = JobFinal("j", "normal", FrameworkState("finished", True, False, copies=(Copy("started"),)))
    assert verdict_of(final, [run("a", 1, 1.0, 2.0)]) is Verdict.STUCK


def test_a_stale_celery_copy_the_tombstone_refuses_is_only_a_note() -> None:
    lease = LeaseState("done", "completed", attempt=2)
    framework = FrameworkState("SUCCESS", True, False, copies=(Copy("unacked", attempt=1),))
    judgement = judge(
        JobFinal("j", "normal", framework, lease),
        [run("b", 5, 6.0, 7.0, 2)],
        guarded=True,
        max_stalls=MAX_STALLS,
    )
    assert judgement.verdict is Verdict.OK
    assert judgement.notes


def test_a_celery_copy_with_no_tombstone_to_refuse_it_is_stuck() -> None:
    # A first attempt that completed leaves no lease: the copy, once restored, runs the job again.
    framework = FrameworkState("SUCCESS", True, False, copies=(Copy("unacked", attempt=1),))
    assert verdict_of(JobFinal("j", "normal", framework), [run("a", 1, 1.0, 2.0)]) is Verdict.STUCK


def test_finished_and_failed_is_two_ways() -> None:
    final = JobFinal("j", "normal", FrameworkState("failed", completed=True, failed=True, failure="boom"))
    judgement = judge(final, [run("a", 1, 1.0, 2.0)], guarded=True, max_stalls=MAX_STALLS)
    assert judgement.verdict is Verdict.WRONG_TERMINAL
    assert "two ways" in judgement.problems[0]


def test_finished_and_dead_lettered_is_two_ways() -> None:
    final = JobFinal("j", "normal", FINISHED, dead_letter=DeadLetter("poison", stalled(4)))
    assert verdict_of(final, [run("a", 1, 1.0, 2.0)]) is Verdict.WRONG_TERMINAL


def test_a_success_whose_lease_says_it_hung_is_two_ways() -> None:
    lease = LeaseState("done", "hung", attempt=1, history=(EndedAttempt(1, "hung"),))
    assert (
        verdict_of(JobFinal("j", "normal", FINISHED, lease), [run("a", 1, 1.0, 2.0)])
        is Verdict.WRONG_TERMINAL
    )


def test_a_success_whose_lease_the_sweeper_closed_as_ended_is_ok() -> None:
    # The worker died after Celery recorded the success and before the lease's release was written:
    # the sweeper found the success and closed the lease ("ended"), its attempt reading "stalled".
    lease = LeaseState("done", "ended", attempt=1, stalls=1, history=(EndedAttempt(1, "stalled"),))
    assert verdict_of(JobFinal("j", "normal", FINISHED, lease), [run("a", 1, 1.0, 2.0)]) is Verdict.OK


def test_a_normal_job_that_failed_is_wrong() -> None:
    final = JobFinal(
        "j", "normal", FrameworkState("failed", False, True, "Work-horse terminated unexpectedly")
    )
    assert verdict_of(final, [run("a", 1, 1.0, None)]) is Verdict.WRONG_TERMINAL


def test_a_hung_job_that_failed_as_hung_is_ok() -> None:
    lease = LeaseState("done", "hung", history=(EndedAttempt(1, "hung"),))
    assert verdict_of(JobFinal("j", "hung", FAILED_HUNG, lease), [run("a", 1, 1.0, None)]) is Verdict.OK


def test_a_hung_job_that_timed_out_instead_is_wrong_when_guarded() -> None:
    lease = LeaseState("done", "timed_out", history=(EndedAttempt(1, "timed_out"),))
    final = JobFinal("j", "hung", FrameworkState("failed", False, True, "HardTimeLimitExceeded"), lease)
    assert verdict_of(final, []) is Verdict.WRONG_TERMINAL


def test_a_plain_hung_job_failed_by_the_frameworks_time_limit_is_ok() -> None:
    final = JobFinal("j", "hung", FrameworkState("FAILURE", False, True, "TimeLimitExceeded: 5.0"))
    assert verdict_of(final, [], guarded=False) is Verdict.OK


def test_a_poison_job_dead_lettered_after_max_stalls_is_ok() -> None:
    lease = LeaseState("done", "dead_lettered", attempt=4, stalls=4, history=stalled(4))
    final = JobFinal("j", "poison", FAILED_LOST, lease, DeadLetter("poison", stalled(4)))
    assert verdict_of(final, [run(str(n), n, float(n), None) for n in range(1, 5)]) is Verdict.OK


def test_a_guarded_poison_job_only_failed_is_wrong() -> None:
    final = JobFinal("j", "poison", FrameworkState("failed", False, True, "Work-horse terminated"))
    assert verdict_of(final, []) is Verdict.WRONG_TERMINAL


def test_a_plain_poison_job_failed_once_is_the_best_a_plain_framework_does() -> None:
    final = JobFinal("j", "poison", FrameworkState("failed", False, True, "Work-horse terminated"))
    assert verdict_of(final, [], guarded=False) is Verdict.OK


def test_a_normal_job_dead_lettered_after_enough_stalls_is_ok() -> None:
    # Its workers were killed under it max_stalls + 1 times: rightly dead-lettered.
    final = JobFinal(
        "j", "normal", FAILED_LOST, LeaseState("done", "dead_lettered", stalls=4), DeadLetter("x", stalled(4))
    )
    assert verdict_of(final, []) is Verdict.OK


def test_a_normal_job_dead_lettered_without_enough_stalls_is_wrong() -> None:
    final = JobFinal(
        "j", "normal", FAILED_LOST, LeaseState("done", "dead_lettered", stalls=2), DeadLetter("x", stalled(2))
    )
    assert verdict_of(final, []) is Verdict.WRONG_TERMINAL


def test_two_ways_outranks_stuck_and_stuck_outranks_a_wrong_end() -> None:
    both = JobFinal("j", "normal", FrameworkState("failed", True, True, copies=(Copy("started"),)))
    assert verdict_of(both, [run("a", 1, 1.0, 2.0)]) is Verdict.WRONG_TERMINAL
    failed_and_held = JobFinal(
        "j", "normal", FrameworkState("failed", False, True, "x", copies=(Copy("started"),))
    )
    assert verdict_of(failed_and_held, []) is Verdict.STUCK


def test_history_lines_make_executions_with_the_commits_token() -> None:
    text = "\n".join(
        json.dumps(line)
        for line in [
            {"event": "start", "job": "j", "run": "a", "attempt": 1, "token": 0, "pid": 7, "time": 1.0},
            {"event": "commit", "job": "j", "run": "a", "attempt": 1, "token": 4, "pid": 7, "time": 2.0},
            {"event": "start", "job": "k", "run": "b", "attempt": 2, "token": 9, "pid": 8, "time": 1.5},
        ]
    )
    torn = '{"event": "start", "job": "j", "ru'
    found = executions(parse_lines(text + "\n" + torn))
    assert found["j"] == [Execution("a", 7, 1, 4, 1.0, 2.0)]
    assert found["k"] == [Execution("b", 8, 2, 9, 1.5, None)]


def test_judge_all_unsettled_and_table() -> None:
    lines = parse_lines(
        json.dumps(
            {"event": "commit", "job": "done", "run": "a", "attempt": 1, "token": 1, "pid": 1, "time": 2.0}
        )
    )
    finals = [
        JobFinal("done", "normal", FINISHED),
        JobFinal("waiting", "long", FrameworkState("queued", False, False, copies=(Copy("queue"),))),
    ]
    judgements = judge_all(finals, lines, guarded=True, max_stalls=MAX_STALLS)
    assert [j.verdict for j in judgements] == [Verdict.OK, Verdict.STUCK]
    assert [j.job_id for j in unsettled(judgements)] == ["waiting"]
    rendered = table(judgements)
    assert "| ok " in rendered
    assert "| stuck " in rendered


def test_a_job_sent_just_after_a_worker_froze_that_was_killed_frozen_is_the_broker_s_loss() -> None:
    # kombu's BRPOP, pending when the worker froze, popped the message for it; it never read it.
    killed = history.Freeze("w1", start=10.0, end=18.0, killed=12.0)
    assert history.lost_to_a_frozen_worker(10.4, [killed]) is not None
    woken = history.Freeze("w1", start=10.0, end=18.0, killed=None)  # it read the message on waking
    assert history.lost_to_a_frozen_worker(10.4, [woken]) is None
    assert history.lost_to_a_frozen_worker(13.0, [killed]) is None  # its read had timed out by then
    assert history.lost_to_a_frozen_worker(9.5, [killed]) is None  # sent before: it could read it


def test_a_queued_job_popped_as_a_worker_froze_then_killed_frozen_is_the_broker_s_loss() -> None:
    # Sent before the freeze, but the jobs ahead of it were received until the freeze began and
    # the ones behind it only after: the frozen worker's pending read took it.
    killed = history.Freeze("w1", start=10.0, end=18.0, killed=16.6)
    assert history.lost_to_a_frozen_worker(8.0, [killed], span=(9.9, 11.1)) is not None
    woken = history.Freeze("w1", start=10.0, end=18.0, killed=None)
    assert history.lost_to_a_frozen_worker(8.0, [woken], span=(9.9, 11.1)) is None
    assert history.lost_to_a_frozen_worker(8.0, [killed], span=(12.0, 13.0)) is None  # popped after its read
    assert history.lost_to_a_frozen_worker(8.0, [killed], span=(7.0, 9.0)) is None  # popped before the freeze
    assert history.lost_to_a_frozen_worker(8.0, [killed], span=(4.0, 11.0)) is None  # too wide to tell
    assert history.lost_to_a_frozen_worker(8.0, [killed]) is None  # no span known


def test_only_a_lost_job_that_no_worker_received_is_attributed_to_the_broker() -> None:
    freeze = [history.Freeze("w1", start=10.0, end=18.0, killed=12.0)]
    lost = [history.Judgement("a", "normal", Verdict.LOST), history.Judgement("b", "normal", Verdict.LOST)]
    out = history.attribute_broker_losses(lost, {"a": 10.2, "b": 10.3}, freeze, {"b": 10.5})
    assert [j.verdict for j in out] == [Verdict.LOST_IN_BROKER, Verdict.LOST]
    assert Verdict.LOST_IN_BROKER not in history.BROKEN


def test_a_lost_job_is_the_broker_s_loss_when_a_worker_was_killed_in_the_span_it_was_popped_in() -> None:
    # Sent in the order a, b, c: b was popped after a's receipt and before c's, when w2 was killed.
    sent = {"a": 1.0, "b": 1.1, "c": 1.2}
    lost = [history.Judgement("b", "normal", Verdict.LOST)]
    killed_then = [history.Death("w2", seen=20.3)]
    out = history.attribute_broker_losses(lost, sent, [], {"a": 20.0, "c": 20.4}, deaths=killed_then)
    assert out[0].verdict is Verdict.LOST_IN_BROKER
    assert "w2" in out[0].problems[-1]
    killed_later = [history.Death("w2", seen=25.0)]
    assert history.attribute_broker_losses(lost, sent, [], {"a": 20.0, "c": 20.4}, deaths=killed_later)[
        0
    ].verdict is (Verdict.LOST)
    killed_before = [history.Death("w2", seen=18.0)]
    assert history.attribute_broker_losses(lost, sent, [], {"a": 20.0, "c": 20.4}, deaths=killed_before)[
        0
    ].verdict is (Verdict.LOST)
    # A span too wide to tell (no receipt for a long while): not blamed on a death in it.
    wide = history.attribute_broker_losses(lost, sent, [], {"a": 20.0, "c": 30.0}, deaths=killed_then)
    assert wide[0].verdict is Verdict.LOST
    # Not popped before it was sent: a death before the send explains nothing.
    sent_late = {"a": 1.0, "b": 19.9, "c": 20.35}
    killed_early = [history.Death("w2", seen=19.5)]
    assert history.attribute_broker_losses(lost, sent_late, [], {"a": 19.0, "c": 20.4}, deaths=killed_early)[
        0
    ].verdict is (Verdict.LOST)
    # A worker killed frozen read nothing then: only the freeze rule can blame it.
    frozen = [history.Freeze("w2", start=12.0, end=22.0, killed=20.2)]
    assert history.attribute_broker_losses(lost, sent, frozen, {"a": 20.0, "c": 20.4}, deaths=killed_then)[
        0
    ].verdict is (Verdict.LOST)
    # No receipt on one side: no span.
    assert (
        history.attribute_broker_losses(lost, sent, [], {"a": 20.0}, deaths=killed_then)[0].verdict
        is Verdict.LOST
    )


def test_a_job_is_popped_between_the_last_receipt_of_those_sent_before_and_the_first_after() -> None:
    sent = ["a", "b", "c", "d", "e"]
    received = {"a": 5.0, "b": 4.0, "d": 7.0, "e": 6.5}
    assert history.pop_span("c", sent, received) == (5.0, 6.5)
