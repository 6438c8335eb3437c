"""What the demo says about each zombie: from what it saw, in order, never a zombie for a queued job."""

from __future__ import annotations

from zombieguard.demo.story import JobSeen, RunSeen, job_cell, normal_cell, side_by_side


def test_a_job_never_started_is_said_to_be_queued_not_a_zombie() -> None:
    assert job_cell(JobSeen(), 20.06) == "never started: still queued at 20.1 s"


def test_a_job_that_ended_says_when_how_long_its_last_attempt_ran_and_its_exception() -> None:
    job = JobSeen(status="failed", started=0.8, ended=10.7, attempt=2, ran=4.1, error="E: past 4 s")
    assert job_cell(job, 12.0) == "failed at 10.7 s, 4.1 s after attempt 2 started, with E: past 4 s"
    pill = JobSeen(status="failed", started=9.0, ended=9.1, attempt=3, ran=0.01, error="JobDeadLettered")
    assert (
        job_cell(pill, 12.0) == "failed at 9.1 s, under 0.1 s after attempt 3 started, with JobDeadLettered"
    )


def test_a_job_whose_worker_was_killed_says_so_between_its_start_and_its_end() -> None:
    job = JobSeen(status="started", started=0.8, worker_killed=1.1)
    assert job_cell(job, 20.1) == "started at 0.8 s; its worker SIGKILLed at 1.1 s; still 'started' at 20.1 s"


def test_the_table_puts_each_run_in_a_column_of_its_own_and_the_normal_jobs_last() -> None:
    plain = RunSeen("RQ", False, 20.0, 24, normal_queued=24, zombies={"poison pill": JobSeen()})
    guarded = RunSeen("RQ", True, 9.5, 24, normal_finished=24, normal_done=9.5)
    guarded.zombies["poison pill"] = JobSeen(status="failed", ended=3.0, attempt=3)
    assert normal_cell(plain) == "0/24 finished; 24 still queued at 20.0 s"
    lines = side_by_side([plain, guarded])
    assert [cell.strip() for cell in lines[0].split("|")] == [
        "scenario",
        "what plain RQ did",
        "what zombieguard did",
    ]
    assert lines[2].startswith("poison pill    | never started: still queued at 20.0 s")
    assert lines[2].endswith("| failed at 3.0 s, on attempt 3")
    assert lines[3].startswith("24 normal jobs | 0/24 finished; 24 still queued at 20.0 s")
    assert lines[3].endswith("| 24/24 finished by 9.5 s")
