"""Ingest checks who speaks for a meter: a concentrator only for the meters registered behind it, and a second,
different version of a stored reading is kept as a dead letter, never dropped without a word."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, time, timedelta
from typing import Any

import psycopg
import pytest

from headend.settings import Settings
from protocols.mqtt_codec import encode_concentrator_batch, encode_meter_reading
from protocols.readings import MeterReading
from tests.integration.conftest import Publisher, count, register, wait_for
from tests.integration.ingest_support import RunningWorker, dead_letters

pytestmark = pytest.mark.integration
SLOT = datetime.combine(datetime.now(UTC).date() - timedelta(days=1), time(12), UTC)


@pytest.fixture
def running(settings_for: Callable[..., Settings], database_url: str) -> Iterator[RunningWorker]:
    """A worker subscribed before the test publishes."""
    running = RunningWorker(settings_for(database_url), database_url)
    yield running
    running.stop()
    assert running.failure is None


def stored(db: psycopg.Connection[Any], meter_id: str) -> list[tuple[datetime, int, str]]:
    """Time, import register and source of the stored readings of `meter_id`."""
    rows = db.execute(
        "SELECT ts, energy_import_wh, source FROM readings WHERE meter_id = %s ORDER BY ts", (meter_id,)
    ).fetchall()
    return [(ts, wh, source) for ts, wh, source in rows]


def test_a_concentrator_speaks_only_for_the_meters_registered_behind_it(
    db: psycopg.Connection[Any], unique: str, running: RunningWorker, publisher: Publisher
) -> None:
    own, other_dcu_meter, direct, retired = (f"{kind}{unique}" for kind in "ofdr")
    dcu, other_dcu = f"c{unique}", f"x{unique}"
    register(db, [own], concentrator=dcu)
    register(db, [other_dcu_meter], concentrator=other_dcu)
    register(db, [direct])
    register(db, [retired], concentrator=dcu, status="removed")
    readings = [MeterReading(m, SLOT, 1_000) for m in (other_dcu_meter, own, direct, retired, f"u{unique}")]
    publisher.publish(f"concentrators/{dcu}/readings", encode_concentrator_batch(dcu, SLOT, readings))
    publisher.flush()
    running.wait_handled(1)

    assert [wh for _, wh, _ in stored(db, own)] == [1_000]
    assert stored(db, other_dcu_meter) == stored(db, direct) == []
    assert [(i, r) for _, _, i, r in dead_letters(db, f"concentrators/{dcu}/%")] == [
        (
            0,
            f"meter '{other_dcu_meter}' is not behind concentrator '{dcu}': registered behind concentrator "
            f"'{other_dcu}'",
        ),
        (2, f"meter '{direct}' is not behind concentrator '{dcu}': a direct meter"),
        (3, f"meter '{retired}' is removed, not active"),
        (4, f"unknown meter 'u{unique}'"),
    ]
    # each refused entry is kept as what the concentrator sent for it
    kept = [json.loads(p) for _, p, _, _ in dead_letters(db, f"concentrators/{dcu}/%")]
    assert [entry["meter_id"] for entry in kept] == [other_dcu_meter, direct, retired, f"u{unique}"]

    # the meters' own concentrator and the direct meter's own topic are heard
    batch = encode_concentrator_batch(other_dcu, SLOT, [MeterReading(other_dcu_meter, SLOT, 2_000)])
    publisher.publish(f"concentrators/{other_dcu}/readings", batch)
    publisher.publish(f"meters/{direct}/readings", encode_meter_reading(MeterReading(direct, SLOT, 3_000)))
    publisher.flush()
    running.wait_handled(2)
    assert stored(db, other_dcu_meter) == [(SLOT, 2_000, f"mqtt:dcu:{other_dcu}")]
    assert stored(db, direct) == [(SLOT, 3_000, "mqtt:meter")]
    assert count(db, "SELECT count(*) FROM dead_letters") == 4


def test_a_different_second_version_of_a_stored_reading_is_a_dead_letter(
    db: psycopg.Connection[Any], unique: str, running: RunningWorker, publisher: Publisher
) -> None:
    meter, dcu = f"m{unique}", f"c{unique}"
    register(db, [meter], concentrator=dcu)
    topic = f"meters/{meter}/readings"
    genuine = encode_meter_reading(MeterReading(meter, SLOT, 5_000, energy_export_wh=7))
    publisher.publish(topic, genuine)
    publisher.flush()
    running.wait_handled(1)
    # the same reading again (a redelivery), then another version of it from the concentrator, and one of its
    # export register only; the batch also carries a new reading and, twice, two versions of another
    later = SLOT + timedelta(minutes=15)
    latest = SLOT + timedelta(minutes=30)
    publisher.publish(topic, genuine)
    batch = [
        MeterReading(meter, SLOT, 4_000),
        MeterReading(meter, SLOT, 5_000, energy_export_wh=8),
        MeterReading(meter, later, 5_100),
        MeterReading(meter, latest, 5_200),
        MeterReading(meter, latest, 5_300),
    ]
    publisher.publish(f"concentrators/{dcu}/readings", encode_concentrator_batch(dcu, later, batch))
    publisher.flush()
    running.wait_handled(2)

    assert [(ts, wh) for ts, wh, _ in stored(db, meter)] == [(SLOT, 5_000), (later, 5_100), (latest, 5_200)]
    slot, last = SLOT.isoformat(), latest.isoformat()
    kept = "; the stored reading is kept"
    assert [(i, r) for _, _, i, r in dead_letters(db)] == [
        (
            0,
            f"conflicts with the reading stored for meter '{meter}' at {slot} (energy_import_wh 5000, "
            f"energy_export_wh 7, from mqtt:meter): energy_import_wh 4000{kept}",
        ),
        (
            1,
            f"conflicts with the reading stored for meter '{meter}' at {slot} (energy_import_wh 5000, "
            f"energy_export_wh 7, from mqtt:meter): energy_import_wh 5000, energy_export_wh 8{kept}",
        ),
        (
            4,
            f"conflicts with the reading stored for meter '{meter}' at {last} (energy_import_wh 5200, "
            f"from mqtt:dcu:{dcu}): energy_import_wh 5300{kept}",
        ),
    ]
    assert running.worker.stats.duplicates == 1  # the redelivered one: identical, nothing to say about it
    wait_for(lambda: running.worker.stats.dead_letters == 3, 5, "three dead letters counted")
