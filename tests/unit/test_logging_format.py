"""Log lines of every `headend` process: text by default, one JSON object a line with --log-format json."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from headend.runtime.logging import LogFormat, LogLevel, configure_logging


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    """Put the root logger back as the test found it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_time_level_logger_message_and_extras(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogLevel.INFO, LogFormat.JSON)
    before = datetime.now(UTC)
    logging.getLogger("headend.ingest.worker").info(
        "ingest: %d messages", 12, extra={"worker": "ingest", "period": {"messages": 12}}
    )
    logging.getLogger("headend.ingest.worker").debug("not at info")
    [line] = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["time"].endswith("Z")
    at = datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
    assert at.utcoffset() is not None
    assert abs((at - before).total_seconds()) < 5
    assert {k: v for k, v in entry.items() if k != "time"} == {
        "level": "INFO",
        "logger": "headend.ingest.worker",
        "message": "ingest: 12 messages",
        "worker": "ingest",
        "period": {"messages": 12},
    }


def test_json_lines_carry_the_exception(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogLevel.INFO, LogFormat.JSON)
    try:
        raise ValueError("bad 电表 value")
    except ValueError:
        logging.getLogger("headend.engine.runner").exception("account a1 could not be charged")
    [line] = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["level"] == "ERROR"
    assert entry["message"] == "account a1 could not be charged"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].endswith("ValueError: bad 电表 value")


def test_text_is_the_format_by_default_and_a_second_call_replaces_the_first(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(LogLevel.INFO, LogFormat.JSON)
    configure_logging(LogLevel.WARNING, LogFormat.TEXT)
    log = logging.getLogger("headend.dispatch.service")
    log.info("not at warning")
    log.warning("dispatch: %s", "not connected")
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith(" WARNING headend.dispatch.service: dispatch: not connected")
    datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")  # noqa: DTZ007 (text lines are in local time)
