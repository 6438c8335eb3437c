"""The interrupts a guarded worker raises in a job, and the signals that carry them."""

from __future__ import annotations

import os
import signal
import time

import pytest

from zombieguard.enforcement.interrupts import Interrupt, install_interrupt_handlers
from zombieguard.leases import Acquired, AcquireStatus, LeaseState
from zombieguard.worker import lifecycle
from zombieguard.worker.lifecycle import wait_out_recovery


def test_each_interrupt_comes_by_its_own_signal_and_reaches_the_handler_as_its_kind() -> None:
    assert len({kind.signal for kind in Interrupt}) == len(Interrupt)
    previous = {kind: signal.getsignal(kind.signal) for kind in Interrupt}
    received: list[Interrupt] = []
    try:
        install_interrupt_handlers(received.append)
        for kind in Interrupt:
            os.kill(os.getpid(), kind.signal)  # delivered before kill() returns, to this thread
        assert received == list(Interrupt)
    finally:
        for kind, handler in previous.items():
            signal.signal(kind.signal, handler)


def test_an_interrupt_reads_as_its_kind_in_logs_and_comparisons() -> None:
    assert str(Interrupt.HARD) == "hard"
    assert f"a {Interrupt.SOFT} interrupt" == "a soft interrupt"
    assert Interrupt.LOST == "lost"  # type: ignore[comparison-overlap]  # a str enum equals its value
    assert Interrupt("hung") is Interrupt.HUNG


RECOVERING = Acquired(AcquireStatus.BUSY, attempt=2, holder_state=LeaseState.RECOVERING)


def _recovering(acquired: Acquired) -> bool:
    return acquired.holder_state is LeaseState.RECOVERING


def test_a_delivery_asks_again_while_its_recovery_is_being_recorded_and_takes_the_lease_then() -> None:
    answers = iter([RECOVERING, RECOVERING, Acquired(AcquireStatus.ACQUIRED, token=9, attempt=2)])
    acquired = wait_out_recovery(RECOVERING, lambda: next(answers), _recovering)
    assert (acquired.status, acquired.token) == (AcquireStatus.ACQUIRED, 9)
    assert next(answers, None) is None  # asked three times, no more


def test_a_delivery_waits_out_a_recovery_for_recovering_wait_at_most(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "RECOVERING_WAIT", 0.2)
    asked: list[float] = []

    def again() -> Acquired:
        asked.append(time.monotonic())
        return RECOVERING

    t0 = time.monotonic()
    assert wait_out_recovery(RECOVERING, again, _recovering) is RECOVERING
    assert 0.2 <= time.monotonic() - t0 < 1.0
    assert 3 <= len(asked) <= 11  # every 20 ms


def test_an_answer_that_needs_no_wait_is_taken_as_it_is() -> None:
    busy = Acquired(AcquireStatus.BUSY, attempt=2, holder_state=LeaseState.RUNNING)
    assert wait_out_recovery(busy, lambda: pytest.fail("asked again"), _recovering) is busy
