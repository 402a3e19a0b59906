"""`headend.ingest.faults`: the data's faults told from the database's, and a refused batch split until the guilty
messages are found."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import psycopg
import psycopg.errors
import pytest

from headend.db.faults import is_data_fault
from headend.ingest.faults import write_isolating
from headend.ingest.messages import Decoded, InboundMessage, decode_message
from headend.ingest.writer import WriteResult

RECEIVED = datetime(2026, 11, 20, 4, 1, tzinfo=UTC)
POISON_WH = 666
CHECK = psycopg.errors.CheckViolation('new row for relation "readings_p20261120" violates check constraint "poison"')


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.DivisionByZero("division by zero"),  # 22012: class 22, data exception
        psycopg.errors.CharacterNotInRepertoire("invalid byte sequence"),  # 22021
        CHECK,  # 23514: class 23, integrity constraint violation
        psycopg.errors.ProgramLimitExceeded("index row size 3000 exceeds btree version 4 maximum 2704"),  # 54000
        psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),  # refused before sending
        UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
        OverflowError("date value out of range"),
        ValueError("whatever a dumper says"),
        TypeError("not a number"),
        RecursionError("maximum recursion depth exceeded"),
    ],
    ids=type,
)
def test_errors_of_the_data_are_data_faults(error: BaseException) -> None:
    assert is_data_fault(error)


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError("connection refused"),  # no SQLSTATE: the connection, not a statement
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),  # 57P01
        psycopg.errors.CannotConnectNow("the database system is starting up"),  # 57P03
        psycopg.errors.DiskFull("could not extend file"),  # 53100
        psycopg.errors.SerializationFailure("could not serialize access"),  # 40001
        psycopg.errors.DeadlockDetected("deadlock detected"),  # 40P01
        psycopg.errors.UndefinedTable('relation "readings" does not exist'),  # 42P01: not migrated yet
        psycopg.InterfaceError("the connection is closed"),
        AssertionError("a bug"),
        KeyError("a bug"),
    ],
    ids=type,
)
def test_errors_of_the_database_or_of_the_code_are_not(error: BaseException) -> None:
    assert not is_data_fault(error)


def _messages(energies: Sequence[int | None]) -> list[InboundMessage]:
    """One single-meter message per value: a reading of that many Wh, or a payload that does not decode (None)."""
    return [
        InboundMessage(
            f"meters/m-{i}/readings",
            b"{" if wh is None else json.dumps({"ts": "2026-11-20T12:00:00+08:00", "energy_import_wh": wh}).encode(),
            RECEIVED,
            mid=i + 1,
            qos=1,
        )
        for i, wh in enumerate(energies)
    ]


def _decode(messages: Sequence[InboundMessage]) -> Decoded:
    decoded = Decoded()
    for message in messages:
        decode_message(message, decoded)
    return decoded


class FakeStore:
    """Stands in for the database: refuses any write holding a reading of POISON_WH Wh with `error`."""

    def __init__(self, error: BaseException = CHECK) -> None:
        self.error = error
        self.readings: list[str] = []
        self.dead: list[tuple[str, str]] = []
        self.writes = 0

    def write(self, decoded: Decoded) -> WriteResult | None:
        self.writes += 1
        if any(item.reading.energy_import_wh == POISON_WH for item in decoded.readings):
            raise self.error
        self.readings += [item.reading.meter_id for item in decoded.readings]
        self.dead += [(d.topic, d.reason) for d in decoded.dead_letters]
        n = len(decoded.readings)
        return WriteResult(n, n, len(decoded.dead_letters), tuple(decoded.dead_letters))


def test_a_batch_without_fault_is_written_once() -> None:
    messages = _messages([1, 2, None])
    store = FakeStore()

    result = write_isolating(messages, _decode(messages), store.write)

    assert result == WriteResult(2, 2, 1, result.dead if result else ())
    assert store.writes == 1


def test_the_messages_the_database_refuses_become_dead_letters_and_the_others_are_stored() -> None:
    energies: list[int | None] = [10, 11, 12, POISON_WH, 14, None, 16, POISON_WH, 18, 19, 20, 21, 22, 23, 24, 25]
    messages = _messages(energies)
    store = FakeStore()

    result = write_isolating(messages, _decode(messages), store.write)

    assert result is not None
    guilty = [i for i, wh in enumerate(energies) if wh == POISON_WH]
    assert sorted(store.readings) == sorted(
        f"m-{i}" for i, wh in enumerate(energies) if wh is not None and i not in guilty
    )
    reason = (
        'refused by the database: new row for relation "readings_p20261120" violates check constraint "poison" '
        "(SQLSTATE 23514)"
    )
    assert sorted(t for t, _ in store.dead) == sorted(f"meters/m-{i}/readings" for i in [*guilty, 5])
    assert [r for t, r in store.dead if t != "meters/m-5/readings"] == [reason, reason]
    assert dict(store.dead)["meters/m-5/readings"].startswith("payload is not valid JSON")  # recorded once
    assert (result.inserted, result.offered, result.dead_letters) == (13, 13, 3)
    assert len(result.dead) == 3
    assert store.writes <= 2 * len(guilty) * 5 + 1  # halving: a few writes per guilty message, not one per message


def test_a_dead_letter_made_from_a_non_database_error_names_it() -> None:
    messages = _messages([1, POISON_WH])
    store = FakeStore(OverflowError("date value out of range"))

    result = write_isolating(messages, _decode(messages), store.write)

    assert result is not None
    assert store.readings == ["m-0"]
    assert store.dead == [("meters/m-1/readings", "could not be stored: OverflowError: date value out of range")]


@pytest.mark.parametrize(
    "error", [psycopg.errors.AdminShutdown("terminating connection"), AssertionError("a bug")], ids=type
)
def test_a_fault_that_is_not_the_datas_is_raised_as_it_is(error: BaseException) -> None:
    messages = _messages([1, POISON_WH])
    store = FakeStore(error)

    with pytest.raises(type(error)):
        write_isolating(messages, _decode(messages), store.write)
    assert store.readings == []


def test_stopping_during_the_search_gives_up_without_a_result() -> None:
    messages = _messages([1, 2, POISON_WH, 4])
    store = FakeStore()
    original = store.write

    def stop_after_two(decoded: Decoded) -> WriteResult | None:
        return None if store.writes >= 2 else original(decoded)

    assert write_isolating(messages, _decode(messages), stop_after_two) is None
