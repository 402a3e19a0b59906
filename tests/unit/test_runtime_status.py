"""Status lines and rate-limited warnings of long-running workers (headend.runtime.status), on a fake clock."""

from __future__ import annotations

import logging

import pytest

from headend.runtime.status import LimitedLog, Status, StatusReporter

LABELS = {"messages": "messages", "dead_letters": "dead letters"}


class FakeClock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def logger() -> logging.Logger:
    return logging.getLogger("tests.status")


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [r.getMessage() for r in caplog.records]
    caplog.clear()
    return lines


def test_one_line_a_period_with_the_period_s_counts_and_the_totals(
    clock: FakeClock, logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger.name)
    reporter = StatusReporter(logger, "ingest", 10.0, LABELS, clock=clock)
    totals = {"messages": 0, "dead_letters": 0}
    asked: list[int] = []

    def status() -> Status:
        asked.append(1)
        return Status(dict(totals), {"backlog": 3})

    totals.update(messages=1200, dead_letters=2)
    clock.now_s += 9.9
    reporter.tick(status)
    assert _lines(caplog) == []
    assert asked == []  # before the period ends, a tick reads nothing
    clock.now_s += 0.1
    reporter.tick(status)
    totals.update(messages=1500, dead_letters=2)
    clock.now_s += 10
    reporter.tick(status)
    assert _lines(caplog) == [
        "ingest: last 10 s: 1,200 messages, 2 dead letters; since start: 1,200 messages, 2 dead letters; 3 backlog",
        "ingest: last 10 s: 300 messages, 0 dead letters; since start: 1,500 messages, 2 dead letters; 3 backlog",
    ]


def test_the_counters_are_fields_of_the_record_for_json_logs(
    clock: FakeClock, logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger.name)
    reporter = StatusReporter(logger, "engine", 10.0, LABELS, clock=clock)
    clock.now_s += 10
    reporter.tick(lambda: Status({"messages": 5, "dead_letters": 1}))
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert vars(record)["worker"] == "engine"
    assert vars(record)["state"] == "running"
    assert vars(record)["period"] == {"messages": 5, "dead_letters": 1}
    assert vars(record)["totals"] == {"messages": 5, "dead_letters": 1}
    assert vars(record)["period_s"] == 10.0


def test_idle_is_said_once_until_something_happens(
    clock: FakeClock, logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger.name)
    reporter = StatusReporter(logger, "dispatch", 10.0, LABELS, clock=clock)
    totals = {"messages": 0, "dead_letters": 0}
    said: list[list[str]] = []
    for messages in (0, 0, 0, 7, 7, 7):
        totals["messages"] = messages
        clock.now_s += 10
        reporter.tick(lambda: Status(dict(totals)))
        said.append(_lines(caplog))
    assert said == [
        ["dispatch: idle for 10 s; since start: 0 messages, 0 dead letters"],
        [],
        [],
        ["dispatch: last 10 s: 7 messages, 0 dead letters; since start: 7 messages, 0 dead letters"],
        ["dispatch: idle for 10 s; since start: 7 messages, 0 dead letters"],
        [],
    ]


def test_a_problem_is_reported_every_period_at_warning(
    clock: FakeClock, logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger.name)
    reporter = StatusReporter(logger, "ingest", 10.0, LABELS, clock=clock)
    for _ in range(3):
        clock.now_s += 10
        reporter.tick(lambda: Status({"messages": 0, "dead_letters": 0}, problem="broker out of reach"))
    assert [r.levelno for r in caplog.records] == [logging.WARNING] * 3
    assert all(r.getMessage().startswith("ingest: broker out of reach; idle for 10 s") for r in caplog.records)
    assert vars(caplog.records[0])["state"] == "problem"


def test_an_interval_of_zero_turns_status_lines_off(
    clock: FakeClock, logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger.name)
    reporter = StatusReporter(logger, "ingest", 0, LABELS, clock=clock)
    clock.now_s += 1000
    reporter.tick(lambda: Status({"messages": 1}, problem="broker out of reach"))
    assert caplog.records == []
    assert not reporter.enabled


def test_a_flood_logs_the_limit_then_one_summary_line(
    clock: FakeClock, logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger.name)
    limited = LimitedLog(logger, "dead letters", limit=3, period_s=10.0, clock=clock)
    for n in range(1000):
        limited.log("dead letter %d", n)
    assert _lines(caplog) == ["dead letter 0", "dead letter 1", "dead letter 2"]
    clock.now_s += 4
    limited.flush()
    assert _lines(caplog) == ["… and 997 more dead letters in the last 4 s, not logged one by one"]
    limited.flush()
    assert _lines(caplog) == []  # nothing left out since
    limited.log("dead letter %d", 1000)
    assert _lines(caplog) == ["dead letter 1000"]


def test_a_flood_rolls_over_into_the_next_period_by_itself(
    clock: FakeClock, logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger.name)
    limited = LimitedLog(logger, "dead letters", limit=2, period_s=10.0, clock=clock)
    for n in range(5):
        limited.log("dead letter %d", n)
    clock.now_s += 10
    limited.log("dead letter %d", 5)
    assert _lines(caplog) == [
        "dead letter 0",
        "dead letter 1",
        "… and 3 more dead letters in the last 10 s, not logged one by one",
        "dead letter 5",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_the_status_line_comes_after_the_summary_of_its_period(
    clock: FakeClock, logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger.name)
    limited = LimitedLog(logger, "dead letters", limit=1, period_s=10.0, clock=clock)
    reporter = StatusReporter(logger, "ingest", 10.0, LABELS, limited=[limited], clock=clock)
    limited.log("dead letter a")
    limited.log("dead letter b")
    clock.now_s += 10
    reporter.tick(lambda: Status({"messages": 2, "dead_letters": 2}))
    assert _lines(caplog) == [
        "dead letter a",
        "… and 1 more dead letters in the last 10 s, not logged one by one",
        "ingest: last 10 s: 2 messages, 2 dead letters; since start: 2 messages, 2 dead letters",
    ]
