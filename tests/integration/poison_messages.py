"""Hostile and faulty MQTT messages for the ingest worker, valid readings among them, and what must become of each.

The strategies draw what an attacker or a broken device sends: arbitrary bytes, arbitrary JSON, extreme numbers and
times, NUL and lone surrogates, deep nesting, huge strings up to the size limits, wrong types, unknown and inactive
meters, times too old or in the future, on the topics the worker subscribes to. Every topic carries TOKEN, so that the
checks see only what this run sent. `Expectation` is the reference model: the readings that must be stored, and the
dead letters that must be recorded, with their reasons, as the unique key of `dead_letters` keeps them.

Used by tests/integration/test_ingest_poison.py and bench/ingest_poison.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from headend.db.text import storable
from headend.ingest.messages import (
    DeadLetter,
    Decoded,
    InboundMessage,
    SourcedReading,
    decode_message,
    reading_payload,
)
from headend.ingest.validation import TimeWindow
from headend.ingest.writer import REASON_MAX_CHARS, TOPIC_MAX_CHARS
from headend.settings import Settings
from protocols.mqtt_codec import (
    MAX_CONCENTRATOR_PAYLOAD_BYTES,
    MAX_METER_PAYLOAD_BYTES,
    encode_concentrator_batch,
    encode_meter_reading,
    reading_to_object,
)
from protocols.readings import MeterReading, RelayState

TOKEN = f"z{uuid.uuid4().hex[:7]}"
ACTIVE = [f"{TOKEN}m{i}" for i in range(6)]
INACTIVE = f"{TOKEN}mx"
DCU = f"{TOKEN}d"
MAX_AGE = timedelta(days=int(Settings.model_fields["reading_max_age_days"].default))
TOLERANCE = timedelta(seconds=int(Settings.model_fields["future_tolerance_s"].default))
# valid times keep this far inside the window, refused ones this far outside it: the worker's clock moves on
MARGIN = timedelta(days=2)

Message = tuple[str, bytes]


def now() -> datetime:
    """The clock the strategies draw times against."""
    return datetime.now(UTC)


# --------------------------------------------------------------------------------------------- building blocks

# what Mosquitto accepts in a topic: no control characters, surrogates or non-characters, no wildcards or levels
topic_text = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Cn"), blacklist_characters="/+#"), max_size=20)
any_text = st.text(st.characters(blacklist_categories=()), max_size=30)  # NUL and lone surrogates included
offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
NON_FINITE = [float("nan"), float("inf"), float("-inf")]  # json writes NaN and Infinity, and reads them back
extreme_numbers = st.sampled_from(
    [2**63, 2**63 - 1, -(2**63), 2**64, -1, 2**31, -(2**31) - 1, 1e308, -1e308, 5e-324, -0.0, *NON_FINITE]
) | st.builds(lambda sign: sign * 10**4000, st.sampled_from([1, -1]))  # 4001 digits: json writes up to 4300
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text | extreme_numbers,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=12,
)


def _valid_ts(days_ago: int, slot: int, zone: timezone) -> datetime:
    midnight = datetime.combine(now().date() - timedelta(days=days_ago), datetime.min.time(), UTC)
    return (midnight + timedelta(minutes=15 * slot)).astimezone(zone)


# days_ago ≥ 1 keeps a valid time at least a quarter of an hour in the past (MARGIN in days would be needless)
valid_times = st.builds(
    _valid_ts,
    st.integers(min_value=1, max_value=MAX_AGE.days - MARGIN.days - 1),
    st.integers(min_value=0, max_value=95),
    offsets | st.just(UTC),
)


def _clearly_outside(ts: datetime) -> bool:
    at = now()
    return ts < at - MAX_AGE - MARGIN or ts > at + timedelta(days=1)


out_of_window_texts = st.sampled_from(
    [
        "0001-01-01T00:00:00+14:00",
        "0001-01-01T00:00:00+23:59",
        "0001-01-01T00:00:00-23:59",
        "9999-12-31T23:59:59.999999-14:00",
        "9999-12-31T23:59:59.999999+23:59",
        "1970-01-01T00:00:00Z",
        "1990-06-01T00:00:00+08:00",
    ]
) | st.datetimes(timezones=offsets).filter(_clearly_outside).map(datetime.isoformat)
odd_ts_values = out_of_window_texts | json_values | st.sampled_from(["", "now", "2024-03-01T12:00:00", "2024-03-01"])

readings = st.builds(
    MeterReading,
    meter_id=st.sampled_from(ACTIVE),
    ts=valid_times,
    energy_import_wh=st.integers(min_value=0, max_value=2**63 - 1),
    energy_export_wh=st.none() | st.integers(min_value=0, max_value=2**63 - 1),
    power_w=st.none() | st.integers(min_value=-(2**31), max_value=2**31 - 1),
    voltage_v=st.none() | st.floats(min_value=0.0, max_value=100_000.0),
    relay=st.none() | st.sampled_from(RelayState),
    seq=st.none() | st.integers(min_value=0, max_value=2**63 - 1),
)
other_meters = st.sampled_from([INACTIVE, f"{TOKEN}u"]) | topic_text.map(lambda text: f"{TOKEN}{text}"[:40])
number_fields = st.sampled_from(["energy_import_wh", "energy_export_wh", "power_w", "voltage_v", "seq"])
reading_fields = number_fields | st.sampled_from(["meter_id", "ts", "relay"])


@st.composite
def _mutated(draw: st.DrawFn, obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` (a valid reading) with one thing wrong with it."""
    obj = dict(obj)
    change = draw(st.integers(min_value=0, max_value=6))
    if change == 0:  # a field of the contract set to anything
        obj[draw(reading_fields)] = draw(json_values)
    elif change == 1:  # a field the contract does not have, its name possibly with NUL or lone surrogates
        obj[draw(any_text.filter(lambda name: name not in obj))] = draw(json_values)
    elif change == 2:  # a time out of the window, at the edges of what can be represented, or not a time
        obj["ts"] = draw(odd_ts_values)
    elif change == 3:  # a number at or beyond the limits
        obj[draw(number_fields)] = draw(extreme_numbers)
    elif change == 4:  # a required field missing
        del obj[draw(st.sampled_from(["ts", "energy_import_wh"]))]
    elif change == 5:  # a huge string
        obj[draw(reading_fields)] = "x" * draw(st.sampled_from([100, 3000, 5000, 100_000]))
    else:  # nested deep
        depth = draw(st.sampled_from([20, 500, 900, 990, 2000]))
        value: Any = 1
        for _ in range(depth):
            value = [value]
        obj[draw(reading_fields)] = value
    return obj


def _dumps(obj: object, ascii_only: bool) -> bytes:
    try:
        text = json.dumps(obj, ensure_ascii=ascii_only)
    except (RecursionError, ValueError):  # deeper than json.dumps goes, or an integer too long to write
        return b"[" * 5000
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate sent raw: not even UTF-8


def _payload(obj: object) -> st.SearchStrategy[bytes]:
    return st.booleans().map(lambda ascii_only: _dumps(obj, ascii_only))


# --------------------------------------------------------------------------------------------------- messages


@st.composite
def valid_single(draw: st.DrawFn) -> Message:
    """A valid reading of an active meter, on its own topic."""
    reading = draw(readings)
    obj = reading_to_object(reading, with_meter_id=draw(st.booleans()))
    return f"meters/{reading.meter_id}/readings", draw(_payload(obj))


@st.composite
def entries(draw: st.DrawFn) -> Any:
    """One entry of a concentrator message: valid, of another meter, poisoned, or anything at all."""
    reading = draw(readings)
    obj = reading_to_object(reading, with_meter_id=True)
    kind = draw(st.integers(min_value=0, max_value=4))
    if kind == 0:
        return obj
    if kind == 1:
        return {**obj, "meter_id": draw(other_meters)}
    if kind == 2:
        return {**obj, "ts": draw(out_of_window_texts)}
    if kind == 3:
        return draw(_mutated(obj))
    return draw(json_values)


@st.composite
def concentrator_batch(draw: st.DrawFn) -> Message:
    """A concentrator message mixing good and bad entries; now and then more than a message may hold."""
    items = draw(st.lists(entries(), max_size=12))
    if draw(st.integers(min_value=0, max_value=30)) == 0:  # one more entry than a message may hold
        items = [reading_to_object(draw(readings), with_meter_id=True)] * 1025
    sent_at = draw(valid_times).isoformat()
    return f"concentrators/{DCU}/readings", draw(_payload({"sent_at": sent_at, "readings": items}))


@st.composite
def poisoned_single(draw: st.DrawFn) -> Message:
    """A reading with one thing wrong, of an active meter or another one."""
    reading = draw(readings)
    obj = draw(_mutated(reading_to_object(reading, with_meter_id=draw(st.booleans()))))
    meter_id = draw(st.sampled_from([reading.meter_id]) | other_meters)
    return f"meters/{meter_id}/readings", draw(_payload(obj))


@st.composite
def refused_reading(draw: st.DrawFn) -> Message:
    """A well-formed reading that is refused: too old, in the future, or of an unknown or inactive meter."""
    reading = draw(readings)
    obj = reading_to_object(reading, with_meter_id=False)
    if draw(st.booleans()):
        obj["ts"] = draw(out_of_window_texts)
        return f"meters/{reading.meter_id}/readings", draw(_payload(obj))
    return f"meters/{draw(other_meters)}/readings", draw(_payload(obj))


topics = st.builds(
    lambda kind, device: f"{kind}/{device}/readings",
    st.sampled_from(["meters", "concentrators"]),
    st.sampled_from([*ACTIVE, DCU])
    | topic_text.map(lambda text: TOKEN + text)
    | st.integers(min_value=600, max_value=3000).map(lambda n: TOKEN + "L" * n),  # longer than an index entry
)


@st.composite
def anything(draw: st.DrawFn) -> Message:
    """Any bytes, any JSON, deep nesting or a size at the limits, on a readings topic."""
    topic = draw(topics)
    kind = draw(st.integers(min_value=0, max_value=3))
    if kind == 0:
        return topic, draw(st.binary(max_size=300))
    if kind == 1:
        return topic, draw(json_values.flatmap(_payload))
    if kind == 2:
        return topic, draw(st.sampled_from([b"[", b'{"a":'])) * draw(st.sampled_from([100, 990, 4000, 100_000]))
    limit = MAX_METER_PAYLOAD_BYTES if topic.startswith("meters/") else MAX_CONCENTRATOR_PAYLOAD_BYTES
    body = draw(st.sampled_from([b"{}", b'{"ts": "' + b"x" * (limit - 40) + b'"}']))
    return topic, body.ljust(limit + draw(st.sampled_from([-1, 0, 1])))


message = st.one_of(valid_single(), concentrator_batch(), poisoned_single(), refused_reading(), anything())


@st.composite
def second_version(draw: st.DrawFn) -> list[Message]:
    """A valid reading, then another version of it (other registers, same meter and time) on its own or a batch."""
    first = draw(readings)
    other_wh = draw(st.integers(min_value=0, max_value=2**63 - 1).filter(lambda wh: wh != first.energy_import_wh))
    second = dataclasses.replace(first, ts=first.ts.astimezone(draw(offsets)), energy_import_wh=other_wh)
    sent = [(f"meters/{first.meter_id}/readings", encode_meter_reading(first))]
    if draw(st.booleans()):
        return [*sent, (f"meters/{second.meter_id}/readings", encode_meter_reading(second))]
    return [*sent, (f"concentrators/{DCU}/readings", encode_concentrator_batch(DCU, second.ts, [second]))]


@st.composite
def message_lists(draw: st.DrawFn, max_size: int = 25) -> list[Message]:
    """Messages of every kind interleaved, now and then a second version of a reading, some sent twice."""
    sent = draw(st.lists(message, min_size=1, max_size=max_size))
    sent += [m for pair in draw(st.lists(second_version(), max_size=2)) for m in pair]
    return sent + draw(st.lists(st.sampled_from(sent), max_size=3))


# --------------------------------------------------------------------------------------------- reference model


@dataclass
class Expectation:
    """What the database must hold after the messages given to `receive`: readings, and dead letters by key.

    The meters of ACTIVE are registered behind DCU, INACTIVE directly (the `expectation` fixture registers them).
    """

    readings: set[tuple[str, datetime]] = field(default_factory=set)
    dead: dict[tuple[str, bytes, int], str] = field(default_factory=dict)
    # the reading kept at each (meter, UTC time): the first stored; a later one with other registers is a dead letter
    kept: dict[tuple[str, datetime], SourcedReading] = field(default_factory=dict)

    def receive(self, topic: str, payload: bytes) -> None:
        """Account for one message, decoded as the worker decodes it and checked as the writer checks it."""
        at = now()
        decoded = Decoded()
        decode_message(InboundMessage(topic, payload, at), decoded)
        for dead in decoded.dead_letters:
            self._dead(dead)
        window = TimeWindow.around(at, MAX_AGE, TOLERANCE)
        for item in decoded.readings:
            meter_id = item.reading.meter_id
            reason = window.refusal(item.reading.ts)
            if reason is None and meter_id == INACTIVE:
                reason = f"meter {meter_id!r} is inactive, not active"
            elif reason is None and meter_id not in ACTIVE:
                reason = f"unknown meter {meter_id!r}"
            elif reason is None and item.concentrator_id not in (None, DCU):
                reason = (
                    f"meter {meter_id!r} is not behind concentrator {item.concentrator_id!r}: "
                    f"registered behind concentrator {DCU!r}"
                )
            if reason is None:
                reason = self._keep(item)
            if reason is not None:
                self._dead(DeadLetter(item.topic, reading_payload(item), reason, at, item.item_index))

    def _keep(self, item: SourcedReading) -> str | None:
        """Store `item`, or drop it as a repeat of the reading kept at its meter and time; why it is refused, if so."""
        r = item.reading
        at = r.ts.astimezone(UTC)
        first = self.kept.setdefault((r.meter_id, at), item)
        self.readings.add((r.meter_id, at))
        s = first.reading
        if first is item or (
            s.energy_import_wh == r.energy_import_wh
            and (s.energy_export_wh is None or r.energy_export_wh is None or s.energy_export_wh == r.energy_export_wh)
        ):
            return None  # stored, or a duplicate
        return (
            f"conflicts with the reading stored for meter {r.meter_id!r} at {at.isoformat()} "
            f"({_registers(s)}, from {first.source}): {_registers(r)}; the stored reading is kept"
        )

    def _dead(self, dead: DeadLetter) -> None:
        key = (
            storable(dead.topic, TOPIC_MAX_CHARS),
            hashlib.sha256(dead.payload).digest(),
            -1 if dead.item_index is None else dead.item_index,
        )
        # the first of equal dead letters is kept (ON CONFLICT DO NOTHING); equal ones have equal reasons
        self.dead.setdefault(key, storable(dead.reason, REASON_MAX_CHARS))


def _registers(reading: MeterReading) -> str:
    """A reading's registers as a conflict's dead letter names them."""
    export = "" if reading.energy_export_wh is None else f", energy_export_wh {reading.energy_export_wh}"
    return f"energy_import_wh {reading.energy_import_wh}{export}"
