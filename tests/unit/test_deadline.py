"""deadline(): a total wall-clock allowance for a block of code."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from zombieguard import DeadlineExceeded, deadline


def test_a_half_open_socket_in_the_main_thread_is_cut_at_the_deadline() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    conn = socket.create_connection(server.getsockname())
    t0 = time.monotonic()
    try:
        with pytest.raises(DeadlineExceeded, match=r"0\.3 s"), deadline(0.3):
            conn.recv(1)  # the peer never answers
    finally:
        conn.close()
        server.close()
    assert 0.3 <= time.monotonic() - t0 < 0.8


def test_a_slow_drip_that_keeps_a_per_read_timeout_happy_is_still_cut() -> None:
    left, right = socket.socketpair()
    left.settimeout(1.0)
    stop = threading.Event()

    def drip() -> None:
        while not stop.wait(0.1):
            right.send(b".")

    dripper = threading.Thread(target=drip)
    dripper.start()

    def read_forever() -> None:
        while True:
            left.recv(1)

    t0 = time.monotonic()
    try:
        with pytest.raises(DeadlineExceeded), deadline(0.5):
            read_forever()
    finally:
        stop.set()
        dripper.join()
        left.close()
        right.close()
    assert time.monotonic() - t0 < 1.0


@contextlib.contextmanager
def outer_alarm(handler: Callable[[int, Any], None], delay: float, interval: float = 0.0) -> Iterator[None]:
    """An outer ``SIGALRM`` timer with ``handler``, as a program may have armed one; undone after."""
    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, delay, interval)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_an_outer_alarm_is_kept_and_fires_after_the_block() -> None:
    fired: list[float] = []
    t0 = time.monotonic()
    with outer_alarm(lambda s, f: fired.append(time.monotonic()), 0.6):
        with deadline(5):
            time.sleep(0.1)
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0.3
        deadline_end = time.monotonic() + 2
        while not fired and time.monotonic() < deadline_end:
            time.sleep(0.02)
        assert fired
        assert 0.55 <= fired[0] - t0 < 0.9


def test_an_outer_alarm_that_comes_first_runs_its_handler_inside_the_block_once() -> None:
    calls: list[float] = []

    def outer(signum: int, frame: object) -> None:
        calls.append(time.monotonic())
        raise TimeoutError("outer")

    with outer_alarm(outer, 0.2):
        with pytest.raises(TimeoutError, match="outer"), deadline(5):
            time.sleep(2)
        assert signal.getitimer(signal.ITIMER_REAL)[0] == 0  # spent: not armed again
        time.sleep(0.2)
        assert len(calls) == 1


def test_a_repeating_outer_alarm_keeps_its_rhythm_inside_the_block() -> None:
    calls: list[float] = []
    t0 = time.monotonic()
    with outer_alarm(lambda s, f: calls.append(time.monotonic()), 0.2, 0.3):
        with deadline(5):
            while time.monotonic() - t0 < 1.0:
                time.sleep(0.01)
        assert len(calls) == 3
        assert all(abs(c - t0 - due) < 0.1 for c, due in zip(calls, (0.2, 0.5, 0.8), strict=True))
        assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 0.3  # due again at 1.1 s


def test_an_outer_handler_that_arms_its_own_timer_neither_delays_the_deadline_nor_loses_its_timer() -> None:
    calls: list[float] = []

    def rearming(signum: int, frame: object) -> None:
        calls.append(time.monotonic())
        signal.setitimer(signal.ITIMER_REAL, 0.3)  # due again in 0.3 s, as its own code says

    t0 = time.monotonic()
    with outer_alarm(rearming, 0.2):
        with pytest.raises(DeadlineExceeded), deadline(0.6):
            time.sleep(2)
        assert 0.55 <= time.monotonic() - t0 < 0.8  # not 0.3 s after the handler's last arming
        assert len(calls) == 2  # at 0.2 s and 0.5 s
        assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 0.3  # its timer armed again: 0.8 s
        time.sleep(0.35)
        assert len(calls) == 3


def test_nested_deadlines_each_end_the_block_at_its_own_moment() -> None:
    t0 = time.monotonic()
    inner_ended: list[float] = []

    def body() -> None:
        with pytest.raises(DeadlineExceeded, match=r"0\.2 s"), deadline(0.2):
            time.sleep(2)
        inner_ended.append(time.monotonic() - t0)
        with deadline(5):  # the enclosing deadline comes first, inside this one
            time.sleep(2)

    with pytest.raises(DeadlineExceeded, match=r"0\.6 s"), deadline(0.6):
        body()
    assert 0.15 <= inner_ended[0] < 0.4
    assert 0.55 <= time.monotonic() - t0 < 0.8
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0


def test_a_block_that_swallows_the_exception_is_ended_when_it_leaves() -> None:
    def careless() -> None:
        with contextlib.suppress(Exception):  # user code with a careless `except Exception: pass`
            time.sleep(1)

    with pytest.raises(DeadlineExceeded), deadline(0.2):
        careless()


def test_in_another_thread_python_code_is_interrupted_at_the_deadline() -> None:
    result: list[tuple[float, str]] = []

    def work() -> None:
        t0 = time.monotonic()
        try:
            with deadline(0.3):
                while True:
                    sum(range(100))
        except DeadlineExceeded as exc:
            result.append((time.monotonic() - t0, str(exc)))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(5)
    assert result
    elapsed, message = result[0]
    assert 0.3 <= elapsed < 0.8
    assert "0.3 s" in message


def test_a_block_that_ends_in_time_is_untouched_and_leaves_no_alarm() -> None:
    with deadline(1):
        time.sleep(0.01)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    time.sleep(0.05)


@pytest.mark.parametrize("seconds", [0, -1, float("inf"), True])
def test_a_nonsense_allowance_is_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match="positive number of seconds"), deadline(seconds):
        pass
