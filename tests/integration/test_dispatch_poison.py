"""A running dispatcher under a stream of hostile meter events (Hypothesis), on the real PostgreSQL and a Mosquitto.

Each example registers fresh meters, issues relay reads to two of them, opens an account on a third, and publishes
a generated mix of genuine events and poison — arbitrary bytes, arbitrary JSON, extreme numbers and times, NUL and
lone surrogates, deep nesting, huge strings, unknown meters, malformed topics, unknown or foreign command ids, forged
future and ancient clocks — to the events topics the dispatcher subscribes to (a broker of its own, so every message
on them is the test's). Then: every genuine event applied (relay positions, command states), every poison message a
dead letter with a reason, no relay position stamped outside the window, and the dispatcher alive.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from headend.db.text import storable
from headend.dispatch.dispatcher import DispatchStats
from headend.dispatch.operations import request_relay_read
from headend.dispatch.service import run_dispatcher
from headend.engine.accounts import open_account
from headend.engine.catalog import Catalog
from headend.mqtt.embedded_broker import free_port
from headend.settings import Settings
from prepay_engine.tariffs import SHANGHAI
from protocols.readings import is_valid_id
from tests.integration.conftest import MQTT_HOST, register, wait_for
from tests.integration.dispatch_support import listening
from tests.integration.engine_support import DAY_START, STRICT_POLICY, TARIFF, seed_catalog
from tests.integration.worker_support import private_mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

EXAMPLES = 300  # about a minute on a busy machine
FUTURE_TOLERANCE = timedelta(seconds=300)
MAX_AGE = timedelta(days=7)
ANSWER_SKEW = timedelta(hours=1)
RELAYS = ("open", "closed")
CAUSES = ("button_pressed", "local_operation", "power_restored")
RESULTS = ("executed", "rejected", "failed")
EVENT_FIELDS = ("command_id", "result", "relay", "ready_for_reconnection", "cause", "detail", "ts")

# --- what an example publishes, before it knows its meters' and commands' names ---------------------------------


@dataclass(frozen=True)
class Spontaneous:
    """A genuine spontaneous report of meter `meter` (0..2), stamped `offset` from now."""

    meter: int
    relay: str
    armed: bool
    cause: str
    offset: timedelta
    detail: str | None


@dataclass(frozen=True)
class Answer:
    """A genuine answer to the example's command `command` (0 or 1, of meter 0 or 1), stamped `offset` from now."""

    command: int
    result: str
    relay: str
    armed: bool
    offset: timedelta
    detail: str | None


@dataclass(frozen=True)
class Poison:
    """A message the dispatcher must refuse: its topic and payload, built once the example's names are known."""

    kind: str
    body: Any  # what `build` needs


Message = Spontaneous | Answer | Poison

# text the meter may legitimately send: anything but lone surrogates, NUL often
_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=120)
storable_text = _text | st.builds(lambda a, b: f"{a}\x00{b}", _text, _text)
# a field name nobody knows, often with what no text column takes
odd_names = st.one_of(
    st.text(min_size=1, max_size=50),
    st.builds(lambda a, c, b: a + c + b, _text, st.sampled_from(["\x00", "\ud800", "\udfff"]), _text),
).filter(lambda k: k not in EVENT_FIELDS)
# whatever a topic level can carry on the wire (the broker refuses control characters)
topic_level = st.text(
    st.characters(categories=["L", "N", "P", "S", "Zs"], exclude_characters="/+#"), min_size=1, max_size=40
).filter(lambda s: not is_valid_id(s))
recent = st.integers(-6 * 24 * 3600, 200).map(lambda s: timedelta(seconds=s))  # inside the window
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=25,
)
extreme_numbers = st.sampled_from([10**400, -(10**400), 1e308, -1e308, float("inf"), float("nan"), 0, -1, 2**63])
future_ts = st.one_of(
    st.integers(FUTURE_TOLERANCE.seconds + 60, 70 * 365 * 24 * 3600).map(lambda s: ("now", timedelta(seconds=s))),
    st.sampled_from(["2099-01-01T00:00:00+00:00", "9999-12-31T23:59:59.999999-23:59", "2999-06-01T00:00:00+08:00"]),
)
old_ts = st.one_of(
    st.integers(MAX_AGE.days * 24 * 3600 + 60, 2000 * 365 * 24 * 3600).map(lambda s: ("now", timedelta(seconds=-s))),
    st.sampled_from(["0001-01-01T00:00:00+23:59", "1970-01-01T00:00:00Z", "2000-01-01T00:00:00-12:00"]),
)

spontaneous = st.builds(
    Spontaneous,
    st.integers(0, 2),
    st.sampled_from(RELAYS),
    st.booleans(),
    st.sampled_from(CAUSES),
    recent,
    st.none() | storable_text,
)
answers = st.builds(
    Answer,
    st.integers(0, 1),
    st.sampled_from(RESULTS),
    st.sampled_from(RELAYS),
    st.booleans(),
    st.integers(-600, 200).map(lambda s: timedelta(seconds=s)),
    st.none() | storable_text,
)
poison = st.one_of(
    st.builds(Poison, st.just("bytes"), st.binary(max_size=600)),
    st.builds(Poison, st.just("json"), json_values.filter(lambda v: not (isinstance(v, dict) and "ts" in v))),
    st.builds(Poison, st.just("future"), st.tuples(future_ts, st.booleans())),  # (ts, as an answer)
    st.builds(Poison, st.just("old"), st.tuples(old_ts, st.booleans())),
    st.builds(Poison, st.just("early_answer"), st.integers(60, 30 * 24 * 3600)),
    st.builds(Poison, st.just("unknown_meter"), st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)),
    st.builds(Poison, st.just("bad_topic"), topic_level),
    st.builds(Poison, st.just("unknown_command"), st.from_regex(r"[A-Za-z0-9:_.-]{1,96}", fullmatch=True)),
    st.builds(Poison, st.just("foreign_command"), st.just(None)),
    st.builds(Poison, st.just("surrogate_detail"), st.tuples(storable_text, st.integers(0xD800, 0xDFFF))),
    st.builds(Poison, st.just("long_detail"), st.integers(257, 5000)),
    st.builds(Poison, st.just("odd_field"), odd_names),
    st.builds(
        Poison,
        st.just("bad_value"),
        st.tuples(
            st.sampled_from(["relay", "ts", "cause", "result", "command_id", "ready_for_reconnection", "detail"]),
            st.one_of(extreme_numbers, json_values, st.text(max_size=100)),
        ),
    ),
    st.builds(Poison, st.just("deep"), st.integers(100, 2000)),
    st.builds(Poison, st.just("shape"), st.sampled_from(["no_cause", "cause_and_answer", "result_only", "id_only"])),
)
plans = st.lists(st.one_of(spontaneous, answers, poison), min_size=1, max_size=16)


def _valid_value(key: str, value: Any) -> bool:
    """Whether a field's value could pass the codec (such a 'bad value' is no poison: left out)."""
    if key == "relay":
        return value in RELAYS
    if key == "cause":
        return value in CAUSES
    if key == "result":
        return value in RESULTS
    if key == "ready_for_reconnection":
        return isinstance(value, bool) or value is None
    if key == "detail":
        return value is None or (isinstance(value, str) and len(value) <= 256 and _utf8(value))
    if key == "command_id":
        return value is None or isinstance(value, str)  # (an id of the right shape answers an unknown command)
    if key == "ts":
        if not isinstance(value, str):
            return False
        try:
            return datetime.fromisoformat(value).utcoffset() is not None
        except ValueError:
            return False
    return False


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# --- the running system -----------------------------------------------------------------------------------------


@dataclass
class Expected:
    """What the published messages must have done, per meter and command."""

    relays: dict[str, tuple[datetime, str, bool]] = field(default_factory=dict)  # meter → (ts, relay, armed)
    states: dict[str, str] = field(default_factory=dict)  # command → state after its first genuine answer
    poison: set[tuple[str, bytes]] = field(default_factory=set)  # (topic, sha256)
    genuine: set[tuple[str, bytes]] = field(default_factory=set)


@dataclass
class World:
    """The database, a broker of its own, the running dispatcher and a meter-side publisher."""

    conn: psycopg.Connection[Any]
    client: mqtt.Client
    catalog: Catalog
    examples: int = 0
    published: int = 0
    refused: int = 0
    sentinel_at: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))
    all_poison: set[tuple[str, bytes]] = field(default_factory=set)

    def publish(self, messages: list[tuple[str, bytes]]) -> None:
        infos = [self.client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()
        self.published += len(messages)

    def settle(self) -> None:
        """Wait until the dispatcher has handled everything published so far (one subscriber: in order)."""
        self.sentinel_at += timedelta(milliseconds=1)
        stamp = self.sentinel_at
        payload = json.dumps({"cause": "power_restored", "relay": "closed", "ts": stamp.isoformat()}).encode()
        self.publish([("meters/sentinel/events", payload)])

        deadline = time.monotonic() + 10
        while True:
            row = self.conn.execute("SELECT reported_at FROM meter_relays WHERE meter_id = 'sentinel'").fetchone()
            if row is not None and row[0] == stamp:
                return
            assert time.monotonic() < deadline, "the dispatcher did not handle the example's messages within 10 s"
            time.sleep(0.005)


def _event(relay: str, ts: datetime | str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    body["relay"] = relay
    body["ts"] = ts if isinstance(ts, str) else ts.isoformat()
    return body


def _dump(body: Any, *, ascii_only: bool = True) -> bytes:
    return json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def build(world: World, plan: list[Message]) -> tuple[list[tuple[str, bytes]], Expected]:
    """Register the example's meters and commands; the messages of the plan, and what they must do."""
    world.examples += 1
    meters = [f"p{world.examples}x{n}" for n in range(3)]
    register(world.conn, meters)
    now = datetime.now(UTC)
    commands = [
        request_relay_read(world.conn, meters[n], by="test", now=now, ttl=timedelta(minutes=30)).command_id
        for n in range(2)
    ]
    open_account(
        world.conn,
        world.catalog,
        f"pa{world.examples}",
        meter_id=meters[2],
        tariff_code=TARIFF.code,
        policy_code=STRICT_POLICY.name,
        opened_at=DAY_START,
        opening_register_wh=1_000_000,
        zone=SHANGHAI,
    )
    expected = Expected()
    messages: list[tuple[str, bytes]] = []

    def note(meter: str, ts: datetime, relay: str, armed: bool) -> None:
        kept = expected.relays.get(meter)
        if kept is None or kept[0] <= ts:
            expected.relays[meter] = (ts, relay, armed)

    for item in plan:
        if isinstance(item, Spontaneous):
            ts = now + item.offset
            body = _event(item.relay, ts, cause=item.cause, detail=item.detail)
            if item.armed:
                body["ready_for_reconnection"] = True
            topic, payload = f"meters/{meters[item.meter]}/events", _dump(body, ascii_only=False)
            note(meters[item.meter], ts, item.relay, item.armed)
            expected.genuine.add((topic, _sha(payload)))
        elif isinstance(item, Answer):
            ts = now + item.offset
            body = _event(item.relay, ts, command_id=commands[item.command], result=item.result, detail=item.detail)
            if item.armed:
                body["ready_for_reconnection"] = True
            topic, payload = f"meters/{meters[item.command]}/events", _dump(body, ascii_only=False)
            note(meters[item.command], ts, item.relay, item.armed)
            expected.states.setdefault(commands[item.command], "confirmed" if item.result == "executed" else "failed")
            expected.genuine.add((topic, _sha(payload)))
        else:
            made = _poison(item, meters, commands, now)
            if made is None:
                continue
            topic, payload = made
            expected.poison.add((storable(topic), _sha(payload)))
        messages.append((topic, payload))
    return messages, expected


def _poison(item: Poison, meters: list[str], commands: list[str], now: datetime) -> tuple[str, bytes] | None:
    topic = f"meters/{meters[0]}/events"
    spontaneous_body = _event("open", now, cause="local_operation")
    match item.kind:
        case "bytes":
            return topic, item.body
        case "json":
            return topic, _dump(item.body, ascii_only=False)
        case "future" | "old":
            (ts, as_answer) = item.body
            stamp = now + ts[1] if isinstance(ts, tuple) else ts
            if as_answer:
                return topic, _dump(_event("open", stamp, command_id=commands[0], result="executed"))
            return topic, _dump(_event("closed", stamp, cause="power_restored"))
        case "early_answer":
            stamp = now - ANSWER_SKEW - timedelta(seconds=item.body)
            return topic, _dump(_event("open", stamp, command_id=commands[0], result="executed"))
        case "unknown_meter":
            return f"meters/u{item.body[:31]}/events", _dump(spontaneous_body)  # registered ids start with p
        case "bad_topic":
            return f"meters/{item.body}/events", _dump(spontaneous_body)
        case "unknown_command":
            return topic, _dump(_event("open", now, command_id=f"{item.body}"[:90] + "-none", result="executed"))
        case "foreign_command":
            return f"meters/{meters[1]}/events", _dump(_event("open", now, command_id=commands[0], result="executed"))
        case "surrogate_detail":
            text, surrogate = item.body
            return topic, _dump(spontaneous_body | {"detail": text[:100] + chr(surrogate)})
        case "long_detail":
            return topic, _dump(spontaneous_body | {"detail": "x" * item.body})
        case "odd_field":
            return topic, _dump(spontaneous_body | {item.body: 1}, ascii_only=False)
        case "bad_value":
            key, value = item.body
            if _valid_value(key, value):
                return None
            return topic, _dump(spontaneous_body | {key: value}, ascii_only=False)
        case "deep":
            depth = item.body
            return topic, b'{"relay": "open", "cause": "local_operation", "ts": ' + b"[" * depth + b"]" * depth + b"}"
        case "shape":
            shapes = {
                "no_cause": _event("open", now),
                "cause_and_answer": _event(
                    "open", now, cause="local_operation", command_id=commands[0], result="executed"
                ),
                "result_only": _event("open", now, result="executed"),
                "id_only": _event("open", now, command_id=commands[0]),
            }
            return topic, _dump(shapes[item.body])
    raise AssertionError(item.kind)


def _sha(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


def check(world: World, expected: Expected) -> None:
    """The example's genuine events applied, its poison refused with a reason, nothing else refused."""
    conn = world.conn
    hashes = [h for _, h in expected.poison | expected.genuine]
    refused = {
        (str(t), bytes(h)): str(r)
        for t, h, r in conn.execute(
            "SELECT topic, payload_sha256, reason FROM dead_letters WHERE payload_sha256 = ANY(%s)", (hashes,)
        )
    }
    for key in expected.poison:
        assert key in refused, f"a poison message on {key[0]} was not kept as a dead letter"
        assert refused[key].strip(), key
    for key in expected.genuine:
        assert key not in refused, f"a genuine event on {key[0]} was refused: {refused[key]}"
    for meter, (ts, relay, armed) in expected.relays.items():
        row = conn.execute(
            "SELECT reported_at, relay, ready_for_reconnection FROM meter_relays WHERE meter_id = %s", (meter,)
        ).fetchone()
        assert row is not None, meter
        assert tuple(row) == (ts, relay, armed), (meter, row)
    for command_id, state in expected.states.items():
        row = conn.execute("SELECT state FROM commands WHERE command_id = %s", (command_id,)).fetchone()
        assert row == (state,), (command_id, row, state)


def test_no_event_stops_the_dispatcher_or_pins_a_relay(database_url: str) -> None:
    port = free_port()
    with private_mosquitto(port), psycopg.connect(database_url, autocommit=True) as conn:
        catalog = seed_catalog(conn)
        register(conn, ["sentinel"])
        settings = Settings(
            database_url=database_url,
            mqtt_host=MQTT_HOST,
            mqtt_port=port,
            mqtt_shared_group=None,
            dispatch_client_id=f"test-poison-{uuid.uuid4().hex[:8]}",
            status_interval_s=0,
            # the relay reads go out once: nobody answers them but the test, and resends would only slow it down
            dispatch_retry_first_s=3600,
            dispatch_retry_cap_s=3600,
            future_tolerance_s=int(FUTURE_TOLERANCE.total_seconds()),
            dispatch_event_max_age_days=MAX_AGE.days,
            dispatch_answer_skew_s=int(ANSWER_SKEW.total_seconds()),
        )
        stop = threading.Event()
        totals: list[DispatchStats] = []
        thread = threading.Thread(target=lambda: totals.append(run_dispatcher(settings, database_url, stop)))
        thread.start()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-poison-meters-{uuid.uuid4().hex[:8]}")
        client.max_inflight_messages_set(100)
        client.connect(MQTT_HOST, port)
        client.loop_start()
        try:
            world = World(conn, client, catalog)
            # the dispatcher listens for command requests once it is subscribed to the events
            wait_for(lambda: listening(conn), 15, "the dispatcher subscribed")
            started = time.monotonic()
            _run_examples(world, thread)
            elapsed = time.monotonic() - started
            assert thread.is_alive()
            # no relay position stamped outside the window: a forged clock pins nothing
            outside = conn.execute(
                "SELECT count(*) FROM meter_relays WHERE reported_at > now() + %s OR reported_at < now() - %s",
                (FUTURE_TOLERANCE, MAX_AGE),
            ).fetchone()
            assert outside == (0,)
            dead = {(str(t), bytes(h)) for t, h in conn.execute("SELECT topic, payload_sha256 FROM dead_letters")}
            assert dead == world.all_poison  # nothing genuine refused, and nothing else arrived
        finally:
            client.disconnect()
            client.loop_stop()
            stop.set()
            thread.join(15)
    assert not thread.is_alive()
    [total] = totals
    assert (total.events, total.rejected_events) == (world.published, world.refused)
    print(f"{world.examples} examples, {world.published} messages, {world.refused} refused in {elapsed:.1f} s")


def _run_examples(world: World, thread: threading.Thread) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(plans)
    def example(plan: list[Message]) -> None:
        messages, expected = build(world, plan)
        world.publish(messages)
        world.settle()
        assert thread.is_alive(), "the dispatcher stopped"
        check(world, expected)
        world.all_poison |= expected.poison
        world.refused += sum(1 for topic, payload in messages if (storable(topic), _sha(payload)) in expected.poison)

    example()
