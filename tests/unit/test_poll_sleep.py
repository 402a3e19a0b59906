"""The poll worker's wait for its next load point, on clocks that run at real speed, faster, or in steps."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta

from headend.poll.service import CLOCK_CHECK_S, sleep_until

START = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)


class FastClock:
    """Simulated time from START, `speed` simulated seconds a real second."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.origin = time.monotonic()

    def __call__(self) -> datetime:
        return START + timedelta(seconds=(time.monotonic() - self.origin) * self.speed)


def test_a_due_time_already_reached_returns_at_once() -> None:
    started = time.monotonic()
    assert asyncio.run(sleep_until(START, lambda: START, threading.Event()))
    assert time.monotonic() - started < 0.1


def test_a_clock_at_real_speed_is_waited_for_in_real_time() -> None:
    clock = FastClock(1.0)
    due = clock() + timedelta(seconds=0.3)
    assert asyncio.run(sleep_until(due, clock, threading.Event()))
    assert timedelta(0) <= clock() - due < timedelta(seconds=0.2)


def test_a_fast_clock_is_looked_at_often_enough_not_to_overshoot_its_load_point() -> None:
    # 3600x: a 15-minute interval lasts a quarter of a real second; waiting the time left as real seconds (up to
    # CLOCK_CHECK_S) would wake the poller a whole interval late, past the next load point
    clock = FastClock(3600.0)
    due = clock() + timedelta(minutes=15)
    assert asyncio.run(sleep_until(due, clock, threading.Event(), check_s=0.01))
    assert timedelta(0) <= clock() - due < timedelta(minutes=3)
    assert CLOCK_CHECK_S * clock.speed > timedelta(minutes=15).total_seconds()  # why the default is not enough


def test_a_clock_moved_in_steps_by_another_thread_is_seen_within_the_check_period() -> None:
    now = [START]
    due = START + timedelta(minutes=15)
    moved_at: list[float] = []

    def move() -> None:
        time.sleep(0.2)
        moved_at.append(time.monotonic())
        now[0] = due

    mover = threading.Thread(target=move)
    mover.start()
    assert asyncio.run(sleep_until(due, lambda: now[0], threading.Event(), check_s=0.01))
    seen_at = time.monotonic()
    mover.join()
    assert seen_at - moved_at[0] < 0.1


def test_a_stop_ends_the_wait() -> None:
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    assert not asyncio.run(sleep_until(START + timedelta(days=1), lambda: START, stop, check_s=0.05))
    assert time.monotonic() - started < 1.0
