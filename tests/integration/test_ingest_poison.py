"""Ingest probed as an attacker or a faulty device would: every message ends as stored rows or as a dead letter with a
reason, and is acknowledged; the worker neither dies, nor stalls, nor loops on a redelivery."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings

from headend.ingest.writer import REASON_MAX_CHARS, TOPIC_MAX_CHARS
from headend.settings import Settings
from protocols.mqtt_codec import encode_concentrator_batch, encode_meter_reading
from protocols.readings import MeterReading
from tests.integration import poison_messages as poison
from tests.integration.conftest import Publisher, count, register, wait_for
from tests.integration.ingest_support import RunningWorker, dead_letters, partition_days, superuser
from tests.integration.poison_messages import Expectation

pytestmark = pytest.mark.integration
TODAY = datetime.now(UTC).date()


def day_noon(day: date) -> datetime:
    """Noon UTC of `day`."""
    return datetime.combine(day, time(12), UTC)


RECENT = day_noon(TODAY - timedelta(days=1))


@pytest.fixture
def running(settings_for: Callable[..., Settings], database_url: str) -> Iterator[RunningWorker]:
    """A worker subscribed before the test publishes."""
    running = RunningWorker(settings_for(database_url), database_url)
    yield running
    running.stop()
    assert running.failure is None


def reading(meter_id: str, ts: datetime, wh: int = 1) -> tuple[str, bytes]:
    """Topic and payload of one valid single-meter reading."""
    return f"meters/{meter_id}/readings", encode_meter_reading(MeterReading(meter_id, ts, wh))


def stored(db: psycopg.Connection[Any], meter_id: str) -> int:
    """How many readings of `meter_id` are stored."""
    return count(db, "SELECT count(*) FROM readings WHERE meter_id = %s", meter_id)


def test_times_at_the_edges_of_the_representable_range_are_dead_letters(
    db: psycopg.Connection[Any], unique: str, running: RunningWorker, publisher: Publisher
) -> None:
    meter, dcu = f"e{unique}", f"d{unique}"
    register(db, [meter], concentrator=dcu)
    edges = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59.999999-14:00", "0001-01-01T00:00:00+23:59"]
    for ts in edges:
        publisher.publish(f"meters/{meter}/readings", json.dumps({"ts": ts, "energy_import_wh": 1}).encode())
    entries = [{"meter_id": meter, "ts": ts, "energy_import_wh": 2} for ts in edges]
    batch = json.dumps({"sent_at": edges[0], "readings": entries}).encode()
    publisher.publish(f"concentrators/{dcu}/readings", batch)
    publisher.publish(*reading(meter, RECENT))
    publisher.flush()

    running.wait_handled(5)
    wait_for(lambda: stored(db, meter) == 1, 10, "the good reading, sent last")
    too_old, future = "is more than 92 days old", "is more than 300 s in the future"
    expected = [f"ts {edges[0]} {too_old}", f"ts {edges[1]} {future}", f"ts {edges[2]} {too_old}"]
    got = dead_letters(db)
    assert sorted(r for _, _, i, r in got if i is None) == sorted(expected)
    assert sorted((i, r) for _, _, i, r in got if i is not None) == sorted(enumerate(expected))


def test_lone_surrogates_and_nul_in_ids_and_field_names_are_dead_letters(
    db: psycopg.Connection[Any], unique: str, running: RunningWorker, publisher: Publisher
) -> None:
    meter, dcu = f"s{unique}", f"d{unique}"
    register(db, [meter], concentrator=dcu)
    ts = RECENT.isoformat()
    topic = f"meters/{meter}/readings"
    sent = {
        b'{"ts": "%s", "energy_import_wh": 1, "\\ud800": 1}' % ts.encode(): "unknown field(s): \\ud800",
        b'{"ts": "%s", "energy_import_wh": 1, "a\\u0000b": 1}' % ts.encode(): "unknown field(s): a\\x00b",
        b'{"ts": "%s", "energy_import_wh": 1, "meter_id": "\\udfff\\u0000"}' % ts.encode(): (
            f"meter_id '\\udfff\\x00' in payload differs from topic '{meter}'"
        ),
        b'{"ts": "\\u0000\\ud800", "energy_import_wh": 1}': "ts '\\x00\\ud800' is not ISO 8601",
    }
    for payload in sent:
        publisher.publish(topic, payload)
    entries = (
        b'[{"meter_id": "\\ud800", "ts": "%s", "energy_import_wh": 1}, '
        b'{"meter_id": "%s", "ts": "%s", "energy_import_wh": 1, "\\u0000": "\\udc00"}]'
    ) % (ts.encode(), meter.encode(), ts.encode())
    publisher.publish(f"concentrators/{dcu}/readings", b'{"sent_at": "%s", "readings": %s}' % (ts.encode(), entries))
    publisher.publish(*reading(meter, RECENT, 5))
    publisher.flush()

    running.wait_handled(len(sent) + 2)
    wait_for(lambda: stored(db, meter) == 1, 10, "the good reading, sent last")
    assert [(p, r) for _, p, _, r in dead_letters(db, topic)] == list(sent.items())
    batch_letters = dead_letters(db, f"concentrators/{dcu}/%")
    assert [(i, r) for _, _, i, r in batch_letters] == [
        (0, "meter_id '\\ud800' does not match [A-Za-z0-9_-]{1,32}"),
        (1, "unknown field(s): \\x00"),
    ]
    # each entry kept as JSON that reads back as what was sent
    assert [json.loads(p) for _, p, _, _ in batch_letters] == json.loads(entries)


def test_a_topic_too_long_for_the_dead_letter_index_is_kept_cut(
    db: psycopg.Connection[Any], unique: str, running: RunningWorker, publisher: Publisher
) -> None:
    meter = f"t{unique}"
    register(db, [meter])
    # a B-tree entry holds at most 2704 bytes: these topics alone are longer
    long_ids = [f"{unique}" + "x" * 3000, f"{unique}" + "电" * 1000]
    for device_id in long_ids:
        publisher.publish(f"meters/{device_id}/readings", b"{}")
        publisher.publish(f"concentrators/{device_id}/readings", b"{}")
    publisher.publish(*reading(meter, RECENT))
    publisher.flush()

    running.wait_handled(5)
    wait_for(lambda: stored(db, meter) == 1, 10, "the good reading, sent last")
    got = dead_letters(db, f"%{unique}%")
    assert len(got) == 4
    for topic, payload, _, reason in got:
        assert len(topic) == TOPIC_MAX_CHARS
        assert topic.endswith("…")
        assert payload == b"{}"
        assert reason.startswith("device id ")
        assert len(reason) <= REASON_MAX_CHARS


def test_unregistered_meters_and_times_out_of_the_window_create_no_partition(
    db: psycopg.Connection[Any], unique: str, running: RunningWorker, publisher: Publisher
) -> None:
    stranger, known = f"u{unique}", f"k{unique}"
    register(db, [known])
    before = partition_days(db)
    # the probe of the issue: an unknown meter, one reading a day going back years; here inside the window ...
    for days_ago in range(2, 60):
        publisher.publish(*reading(stranger, day_noon(TODAY - timedelta(days=days_ago))))
    # ... and far beyond it
    for year in range(1990, TODAY.year - 1):
        publisher.publish(*reading(stranger, datetime(year, 6, 1, tzinfo=UTC)))
    publisher.publish(*reading(known, day_noon(TODAY - timedelta(days=93))))  # just too old
    publisher.publish(*reading(known, day_noon(TODAY + timedelta(days=30))))  # future
    inside = TODAY - timedelta(days=50)
    publisher.publish(*reading(known, day_noon(inside)))
    publisher.flush()

    running.wait_handled(58 + (TODAY.year - 1 - 1990) + 3)
    wait_for(lambda: stored(db, known) == 1, 10, "the good reading, sent last")
    assert partition_days(db) - before == ({inside} - before)
    reasons = [r for _, _, _, r in dead_letters(db)]
    assert sum(r == f"unknown meter '{stranger}'" for r in reasons) == 58
    assert sum(r.endswith("is more than 92 days old") for r in reasons) == TODAY.year - 1 - 1990 + 1
    assert sum(r.endswith("in the future") for r in reasons) == 1


def test_a_message_the_database_refuses_is_a_dead_letter_and_the_rest_is_stored(
    db: psycopg.Connection[Any], unique: str, running: RunningWorker, publisher: Publisher
) -> None:
    meters = [f"c{unique}{i:02d}" for i in range(20)]
    dcu = f"d{unique}"
    register(db, meters, concentrator=dcu)
    # stand-ins for whatever data error the decoders do not foresee: a check constraint and a division by zero
    with superuser(db) as admin:
        admin.execute("ALTER TABLE readings ADD CONSTRAINT test_poison CHECK (energy_import_wh <> 666)")
        admin.execute("ALTER TABLE readings ADD CONSTRAINT test_division CHECK (1 / (coalesce(power_w, 0) - 13) <> 7)")
    base = RECENT
    for i, meter in enumerate(meters):
        publisher.publish(*reading(meter, base, 1000 + i))
    poison = MeterReading(meters[3], base + timedelta(minutes=15), 666)
    division = MeterReading(meters[5], base + timedelta(minutes=15), 1, power_w=13)
    publisher.publish(f"meters/{meters[3]}/readings", encode_meter_reading(poison))
    publisher.publish(f"meters/{meters[5]}/readings", encode_meter_reading(division))
    later = base + timedelta(minutes=30)
    entries = [MeterReading(m, later, 2000) for m in meters[:4]]
    entries[2] = MeterReading(meters[2], later, 666)
    publisher.publish(f"concentrators/{dcu}/readings", encode_concentrator_batch(dcu, later, entries))
    for i, meter in enumerate(meters):
        publisher.publish(*reading(meter, base + timedelta(hours=1), 3000 + i))
    publisher.flush()

    running.wait_handled(43)
    wait_for(lambda: count(db, "SELECT count(*) FROM readings") == 20 + 3 + 20, 10, "every reading not at fault")
    assert count(db, "SELECT sum(readings_count) FROM meter_day_collection") == 43
    got = {(t, i): r for t, _, i, r in dead_letters(db)}
    assert set(got) == {
        (f"meters/{meters[3]}/readings", None),
        (f"meters/{meters[5]}/readings", None),
        (f"concentrators/{dcu}/readings", 2),
    }
    assert got[f"meters/{meters[3]}/readings", None].startswith("refused by the database: new row for relation")
    assert got[f"meters/{meters[3]}/readings", None].endswith(
        'violates check constraint "test_poison" (SQLSTATE 23514)'
    )
    assert got[f"meters/{meters[5]}/readings", None] == "refused by the database: division by zero (SQLSTATE 22012)"
    payload = db.execute("SELECT payload FROM dead_letters WHERE item_index = 2").fetchone()
    assert payload is not None
    assert json.loads(bytes(payload[0]))["energy_import_wh"] == 666


# ------------------------------------------------------------------------------------ the property, over Hypothesis

EXAMPLES = int(os.environ.get("HEADEND_TEST_POISON_EXAMPLES", "100"))


@pytest.fixture
def expectation(db: psycopg.Connection[Any]) -> Expectation:
    """The reference model, the meters of poison_messages registered."""
    register(db, poison.ACTIVE, concentrator=poison.DCU)
    register(db, [poison.INACTIVE], status="inactive")
    return Expectation()


def _stored(db: psycopg.Connection[Any]) -> set[tuple[str, datetime]]:
    rows = db.execute("SELECT meter_id, ts FROM readings WHERE meter_id LIKE %s", (f"{poison.TOKEN}%",)).fetchall()
    return {(meter_id, ts.astimezone(UTC)) for meter_id, ts in rows}


def _dead(db: psycopg.Connection[Any]) -> dict[tuple[str, bytes, int], str]:
    rows = db.execute(
        "SELECT topic, payload_sha256, coalesce(item_index, -1), reason FROM dead_letters WHERE strpos(topic, %s) > 0",
        (poison.TOKEN,),
    ).fetchall()
    return {(topic, bytes(sha), index): reason for topic, sha, index, reason in rows}


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(sent=poison.message_lists())
def test_every_message_ends_stored_or_as_a_dead_letter_and_the_worker_goes_on(
    db: psycopg.Connection[Any],
    running: RunningWorker,
    publisher: Publisher,
    expectation: Expectation,
    sent: list[tuple[str, bytes]],
) -> None:
    for topic, payload in sent:
        publisher.publish(topic, payload)
        expectation.receive(topic, payload)
    publisher.flush()

    running.wait_handled(len(sent))
    wait_for(
        lambda: _stored(db) == expectation.readings and _dead(db) == expectation.dead,
        20,
        "the readings and dead letters of the reference model",
    )
    assert count(
        db,
        "SELECT coalesce(sum(readings_count), 0) FROM meter_day_collection WHERE meter_id LIKE %s",
        f"{poison.TOKEN}%",
    ) == len(expectation.readings)
    today = datetime.now(UTC).date()
    oldest = today - poison.MAX_AGE - timedelta(days=1)
    latest = today + timedelta(days=Settings().partitions_ahead_days + 1)
    assert all(oldest <= day <= latest for day in partition_days(db)), sorted(partition_days(db))
