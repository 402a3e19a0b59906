"""The names of a re-read task's states, a meter's states in it, how a meter is asked, what a task covers.

Enums only, cheap to import: the command line builds its options from them (migration 0022 checks the same lists).
"""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    """Where a re-read task is."""

    PENDING = "pending"  # asked for, not taken by a runner yet
    RUNNING = "running"
    DONE = "done"  # every meter asked and accounted for (some may have failed: see the meters)
    FAILED = "failed"  # the task could not run (its detail says why)


class MeterState(StrEnum):
    """Where one meter of a re-read task is."""

    PENDING = "pending"
    REQUESTED = "requested"  # an MQTT `read_readings` command was handed to the broker; readings awaited
    RECOVERED = "recovered"  # every missing load point is stored now
    PARTIAL = "partial"  # some were recovered
    NOTHING_MISSING = "nothing_missing"  # no load point of the range was missing: not asked
    FAILED = "failed"  # nothing recovered: the detail says why (no answer, no data held …)


class RereadPath(StrEnum):
    """How a meter is asked for its missing load points."""

    POLL = "poll"  # a Modbus meter polled now (it holds no history: only the current load point can come back)
    DLT645_FROZEN = "dlt645_frozen"  # a DL/T 645 meter: its daily frozen data (05 06 xx nn) and a poll now
    MQTT_METER = "mqtt_meter"  # `read_readings` on the meter's own commands topic
    MQTT_CONCENTRATOR = "mqtt_concentrator"  # `read_readings` on its concentrator's commands topic


class Scope(StrEnum):
    """What a re-read task covers."""

    METER = "meter"
    CONCENTRATOR = "concentrator"  # every active meter behind it
    LIST = "list"  # meters named in a file or a request
