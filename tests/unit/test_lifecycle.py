"""The interrupts a guarded worker raises in a job, and the signals that carry them."""

from __future__ import annotations

import os
import signal

from zombieguard.lifecycle import Interrupt, install_interrupt_handlers


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
    assert Interrupt.LOST == "lost"
    assert Interrupt("hung") is Interrupt.HUNG
