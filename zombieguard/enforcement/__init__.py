"""Stopping a job: the one limit evaluator, the interrupts raised in a job, stack capture, the
watchdog thread, the slot a job's state is shared through, and the watchdog process."""
