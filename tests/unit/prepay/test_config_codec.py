"""JSON codec of tariffs, policies and payment terms: exact round-trips, strict refusals with paths, audit rendering."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import enum
import inspect
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prepay_engine import tariffs
from prepay_engine.calendar import ChinaMainlandCalendar
from prepay_engine.config_codec import (
    ConfigFormatError,
    audit_json,
    loads_strict,
    policy_from_json,
    policy_to_json,
    tariff_from_json,
    tariff_to_json,
    terms_from_json,
    terms_to_json,
)
from prepay_engine.payments import BPS_PER_UNIT, PaymentTerms
from prepay_engine.policy import (
    AccountSnapshot,
    Decision,
    DisconnectDeferred,
    FriendlyCreditWindows,
    PolicyConfig,
    ReasonCode,
    SendZeroBalanceNotice,
    SentWarning,
    SupplyState,
    decide,
)
from prepay_engine.tariffs import (
    ALL_MONTHS,
    CycleKind,
    DailySchedule,
    FlatPrice,
    Period,
    Tariff,
    TariffVersion,
    TierBand,
    TierSchedule,
    TimeOfUse,
    TimeRange,
    example_jiangsu_residential,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
SH = ZoneInfo("Asia/Shanghai")
CAL = ChinaMainlandCalendar()

DEFAULT_POLICY = PolicyConfig(
    name="default",
    warning_thresholds_fen=(3000, 1000),
    disconnect_threshold_fen=0,
    notice_period=dt.timedelta(hours=2),
    friendly=FriendlyCreditWindows(
        night_start=dt.time(22), night_end=dt.time(8), weekends=True, public_holidays=True, eve_of_public_holidays=True
    ),
)


def through_text(data: Any) -> Any:
    """Prove the value is plain JSON: serialise it and parse it back."""
    return loads_strict(json.dumps(data, ensure_ascii=False))


def example_tariffs() -> list[Callable[[], Tariff]]:
    return [f for name, f in inspect.getmembers(tariffs, inspect.isfunction) if name.startswith("example_")]


def refusal(read: Callable[[object], object], data: object) -> str:
    with pytest.raises(ConfigFormatError) as info:
        read(data)
    return str(info.value)


# --------------------------------------------------------------------------- tariffs: round-trips


def test_every_example_tariff_is_found() -> None:
    names = {f.__name__ for f in example_tariffs()}
    assert {"example_jiangsu_residential", "example_commercial_tou_with_summer_critical_peak"} <= names


@pytest.mark.parametrize("make", example_tariffs(), ids=lambda f: f.__name__)
def test_example_tariff_round_trips(make: Callable[[], Tariff]) -> None:
    tariff = make()
    data = tariff_to_json(tariff)
    assert through_text(data) == data
    assert tariff_from_json(through_text(data)) == tariff
    assert tariff_to_json(tariff_from_json(data)) == data


def test_jiangsu_prices_are_strings_and_times_are_hh_mm() -> None:
    data = tariff_to_json(example_jiangsu_residential())
    price = data["versions"][0]["energy_price"]
    assert price["kind"] == "time_of_use"
    assert price["periods"][0] == {"name": "peak", "price_yuan_per_kwh": "0.5583"}
    assert price["schedules"][0]["ranges"][1] == {"start": "21:00", "end": "08:00", "period": "valley"}
    assert price["schedules"][0]["months"] == list(range(1, 13))
    assert data["versions"][0]["tiers"]["bands"][0] == {"upper_wh": 2_760_000, "increment_yuan_per_kwh": "0.00"}
    assert data["versions"][0]["effective_from"] == "2012-07-01"
    assert data["zone"] == "Asia/Shanghai"


def test_flat_monthly_aware_instant_and_seconds_round_trip() -> None:
    tariff = Tariff(
        code="T",
        name="flat then tiered",
        zone=ZoneInfo("Asia/Urumqi"),
        versions=(
            TariffVersion(dt.date(2020, 1, 1), "first", FlatPrice(Decimal("0.0000001"))),
            TariffVersion(
                dt.datetime(2021, 3, 15, 12, 30, 15, 250, tzinfo=dt.timezone(dt.timedelta(hours=6))),
                "second",
                TimeOfUse(
                    periods=(Period("day", Decimal("1.25")), Period("night", Decimal("0"))),
                    schedules=(
                        DailySchedule(
                            ranges=(
                                TimeRange(dt.time(7, 30, 5), dt.time(19, 0, 0, 1), "day"),
                                TimeRange(dt.time(19, 0, 0, 1), dt.time(7, 30, 5), "night"),
                            )
                        ),
                    ),
                ),
                TierSchedule(CycleKind.MONTHLY, (TierBand(100, Decimal("0")), TierBand(None, Decimal("1E-3"))), 1, 28),
            ),
        ),
    )
    data = through_text(tariff_to_json(tariff))
    assert data["versions"][0]["energy_price"] == {"kind": "flat", "price_yuan_per_kwh": "0.0000001"}
    assert data["versions"][1]["effective_from"] == "2021-03-15T12:30:15.000250+06:00"
    assert data["versions"][1]["energy_price"]["schedules"][0]["ranges"][0]["start"] == "07:30:05"
    assert data["versions"][1]["energy_price"]["schedules"][0]["ranges"][0]["end"] == "19:00:00.000001"
    assert data["versions"][1]["tiers"]["bands"][1]["increment_yuan_per_kwh"] == "0.001"
    assert tariff_from_json(data) == tariff


prices = st.decimals(min_value=0, max_value=100, allow_nan=False, allow_infinity=False)
naive_times = st.times()


@st.composite
def energy_prices(draw: st.DrawFn) -> FlatPrice | TimeOfUse:
    if draw(st.booleans()):
        return FlatPrice(draw(prices))
    a, b = draw(st.lists(naive_times, min_size=2, max_size=2, unique=True))
    ranges = (TimeRange(a, b, "a"), TimeRange(b, a, "b"))
    periods = (Period("a", draw(prices)), Period("b", draw(prices)))
    summer = draw(st.frozensets(st.integers(1, 12), max_size=11))
    if not summer:
        return TimeOfUse(periods, (DailySchedule(ranges),))
    other = (TimeRange(a, b, "b"), TimeRange(b, a, "a"))
    return TimeOfUse(periods, (DailySchedule(ranges, ALL_MONTHS - summer), DailySchedule(other, summer)))


@st.composite
def tier_schedules(draw: st.DrawFn) -> TierSchedule:
    uppers = sorted(draw(st.sets(st.integers(1, 10**12), max_size=4)))
    bands = (*(TierBand(u, draw(prices)) for u in uppers), TierBand(None, draw(prices)))
    day = draw(st.integers(1, 28))
    if draw(st.booleans()):
        return TierSchedule(CycleKind.MONTHLY, bands, 1, day)
    return TierSchedule(CycleKind.YEARLY, bands, draw(st.integers(1, 12)), day)


@st.composite
def generated_tariffs(draw: st.DrawFn) -> Tariff:
    start = draw(st.dates(min_value=dt.date(2000, 1, 1), max_value=dt.date(2050, 1, 1)))
    versions = []
    for index in range(draw(st.integers(1, 3))):
        day = start + dt.timedelta(days=400 * index)
        effective: dt.date | dt.datetime = day
        if draw(st.booleans()):
            offset = dt.timezone(dt.timedelta(minutes=draw(st.integers(-12 * 60, 14 * 60))))
            effective = dt.datetime.combine(day, draw(naive_times), tzinfo=offset)
        tiers = draw(st.none() | tier_schedules())
        versions.append(
            TariffVersion(effective, draw(st.text(min_size=1).filter(str.strip)), draw(energy_prices()), tiers)
        )
    zone = ZoneInfo(draw(st.sampled_from(["Asia/Shanghai", "UTC", "Asia/Urumqi", "Europe/London"])))
    return Tariff(draw(st.text(min_size=1).filter(str.strip)), draw(st.text()), tuple(versions), zone)


@given(generated_tariffs())
def test_generated_tariffs_round_trip(tariff: Tariff) -> None:
    assert tariff_from_json(through_text(tariff_to_json(tariff))) == tariff


# --------------------------------------------------------------------------- tariffs: refusals


def jiangsu() -> dict[str, Any]:
    return tariff_to_json(example_jiangsu_residential())


def test_float_price_is_refused_with_its_path() -> None:
    data = jiangsu()
    data["versions"][0]["tiers"]["bands"][1]["increment_yuan_per_kwh"] = 0.05
    assert refusal(tariff_from_json, data) == (
        'versions[0].tiers.bands[1].increment_yuan_per_kwh: expected a decimal string like "0.05", got 0.05'
    )


@pytest.mark.parametrize("bad", [0.5583, 1, "5.583E-1", "NaN", "Infinity", " 0.5583", "0,5583", ".5", "+0.5", "", None])
def test_period_price_must_be_a_plain_decimal_string(bad: object) -> None:
    data = jiangsu()
    data["versions"][0]["energy_price"]["periods"][0]["price_yuan_per_kwh"] = bad
    message = refusal(tariff_from_json, data)
    assert message.startswith("versions[0].energy_price.periods[0].price_yuan_per_kwh: expected a decimal string")


def test_negative_price_is_refused_by_the_dataclass_with_its_message() -> None:
    data = jiangsu()
    data["versions"][0]["energy_price"]["periods"][1]["price_yuan_per_kwh"] = "-0.10"
    message = refusal(tariff_from_json, data)
    assert message.startswith("versions[0].energy_price: price of period 'valley' must be a finite Decimal >= 0")


def test_unknown_keys_are_refused_at_every_level() -> None:
    data = jiangsu()
    data["versions"][0]["sorce"] = "typo"
    assert refusal(tariff_from_json, data).startswith("versions[0].sorce: unknown key (expected effective_from,")
    data = jiangsu()
    data["zones"] = "Asia/Shanghai"
    assert refusal(tariff_from_json, data).startswith("zones: unknown key")
    data = jiangsu()
    data["versions"][0]["energy_price"]["schedules"][0]["ranges"][0]["colour"] = "red"
    assert refusal(tariff_from_json, data).startswith(
        "versions[0].energy_price.schedules[0].ranges[0].colour: unknown key"
    )
    data = jiangsu()
    data["versions"][0]["energy_price"]["price_yuan_per_kwh"] = "0.5"  # a flat price key on a time-of-use price
    assert refusal(tariff_from_json, data).startswith("versions[0].energy_price.price_yuan_per_kwh: unknown key")


@pytest.mark.parametrize(
    ("where", "key", "path"),
    [
        ((), "zone", "zone"),
        (("versions", 0), "tiers", "versions[0].tiers"),
        (("versions", 0), "effective_from", "versions[0].effective_from"),
        (("versions", 0, "energy_price"), "kind", "versions[0].energy_price.kind"),
        (("versions", 0, "tiers"), "cycle_start_day", "versions[0].tiers.cycle_start_day"),
        (("versions", 0, "tiers", "bands", 2), "upper_wh", "versions[0].tiers.bands[2].upper_wh"),
    ],
)
def test_missing_keys_are_named(where: tuple[str | int, ...], key: str, path: str) -> None:
    data = jiangsu()
    node: Any = data
    for step in where:
        node = node[step]
    del node[key]
    assert refusal(tariff_from_json, data).startswith(f"{path}: missing key")


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ("8:00", 'expected a time "HH:MM" or "HH:MM:SS", got "8:00"'),
        ("08h00", 'expected a time "HH:MM" or "HH:MM:SS", got "08h00"'),
        ("08:00+08:00", 'expected a time "HH:MM" or "HH:MM:SS", got "08:00+08:00"'),
        ("25:00", '"25:00" is not a valid time: hour must be in 0..23'),
        ("08:60", '"08:60" is not a valid time: minute must be in 0..59'),
        ("24:00", "24:00 is not a time of day; a range ending at midnight ends at 00:00"),
        (800, "expected a string, got 800"),
    ],
)
def test_bad_times_are_refused(bad: object, expected: str) -> None:
    data = jiangsu()
    data["versions"][0]["energy_price"]["schedules"][0]["ranges"][0]["start"] = bad
    assert refusal(tariff_from_json, data) == f"versions[0].energy_price.schedules[0].ranges[0].start: {expected}"


def test_schedule_gap_is_refused_by_the_dataclass_with_its_message() -> None:
    data = jiangsu()
    data["versions"][0]["energy_price"]["schedules"][0]["ranges"][0]["start"] = "09:00"
    assert refusal(tariff_from_json, data) == (
        "versions[0].energy_price.schedules[0]: time-of-use schedule has a gap from 08:00 to 09:00 (no period)"
    )


@pytest.mark.parametrize("bad", ["Mars/Olympus_Mons", "", "Asia", "../../etc/passwd", "/etc/localtime", "zone.tab"])
def test_unknown_zone_is_refused(bad: str) -> None:
    data = jiangsu()
    data["zone"] = bad
    assert refusal(tariff_from_json, data).startswith(f"zone: unknown time zone {json.dumps(bad)}")


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ("2012-7-1", "expected a date"),
        ("2012-02-30", '"2012-02-30" is not a valid date'),
        ("2012-07-01T00:00:00", "expected a date"),  # naive: which midnight?
        ("2012-07-01 00:00:00+08:00", "expected a date"),
        (20120701, "expected a string"),
    ],
)
def test_bad_effective_from_is_refused(bad: object, expected: str) -> None:
    data = jiangsu()
    data["versions"][0]["effective_from"] = bad
    assert refusal(tariff_from_json, data).startswith(f"versions[0].effective_from: {expected}")


def test_aware_effective_from_is_read_with_its_offset() -> None:
    data = jiangsu()
    data["versions"][0]["effective_from"] = "2012-06-30T16:00:00Z"
    version = tariff_from_json(data).versions[0]
    assert version.effective_from == dt.datetime(2012, 7, 1, tzinfo=SH)


def test_versions_out_of_order_are_refused_at_the_top() -> None:
    data = jiangsu()
    data["versions"].append(copy.deepcopy(data["versions"][0]))
    assert refusal(tariff_from_json, data).startswith(
        "$: tariff 'EXAMPLE-JS-RES-TIERED-TOU': versions must be in strictly increasing order"
    )


def test_tier_and_schedule_shapes() -> None:
    data = jiangsu()
    data["versions"][0]["tiers"]["cycle"] = "weekly"
    assert refusal(tariff_from_json, data) == 'versions[0].tiers.cycle: expected one of yearly, monthly, got "weekly"'
    data = jiangsu()
    data["versions"][0]["tiers"]["bands"][0]["upper_wh"] = True
    assert refusal(tariff_from_json, data) == "versions[0].tiers.bands[0].upper_wh: expected an integer, got true"
    data = jiangsu()
    data["versions"][0]["tiers"]["bands"][0]["upper_wh"] = 2760000.0
    assert refusal(tariff_from_json, data) == "versions[0].tiers.bands[0].upper_wh: expected an integer, got 2760000.0"
    data = jiangsu()
    data["versions"][0]["tiers"]["cycle"] = "monthly"
    data["versions"][0]["tiers"]["cycle_start_day"] = 31
    assert refusal(tariff_from_json, data) == "versions[0].tiers: a monthly cycle must start on day 1..28, got 31"
    data = jiangsu()
    data["versions"][0]["energy_price"]["schedules"][0]["months"].append(3)
    assert (
        refusal(tariff_from_json, data) == "versions[0].energy_price.schedules[0].months[12]: month 3 is listed twice"
    )
    data = jiangsu()
    data["versions"][0]["energy_price"]["kind"] = "tou"
    assert refusal(tariff_from_json, data) == (
        'versions[0].energy_price.kind: expected "flat" or "time_of_use", got "tou"'
    )
    data = jiangsu()
    data["versions"] = {"0": data["versions"][0]}
    assert refusal(tariff_from_json, data).startswith("versions: expected a list, got {")


def test_values_too_big_to_print_are_still_refused_cleanly() -> None:
    data = jiangsu()
    data["code"] = 10**5000
    assert refusal(tariff_from_json, data) == "code: expected a string, got <int>"


def test_top_level_must_be_an_object() -> None:
    assert refusal(tariff_from_json, []) == "$: expected an object, got []"
    assert refusal(policy_from_json, "default") == '$: expected an object, got "default"'
    assert refusal(terms_from_json, None) == "$: expected an object, got null"


# --------------------------------------------------------------------------- policy


@st.composite
def policies(draw: st.DrawFn) -> PolicyConfig:
    disconnect = draw(st.integers(-(10**12), 0))
    thresholds = sorted(draw(st.sets(st.integers(disconnect + 1, 10**12), max_size=5)), reverse=True)
    night = draw(st.none() | st.lists(naive_times, min_size=2, max_size=2, unique=True))
    friendly = FriendlyCreditWindows(
        night_start=None if night is None else night[0],
        night_end=None if night is None else night[1],
        weekends=draw(st.booleans()),
        public_holidays=draw(st.booleans()),
        eve_of_public_holidays=draw(st.booleans()),
    )
    notice = dt.timedelta(seconds=draw(st.integers(0, 10**10)))
    return PolicyConfig(draw(st.text(min_size=1)), tuple(thresholds), disconnect, notice, friendly)


@given(policies())
def test_policy_round_trips(policy: PolicyConfig) -> None:
    data = policy_to_json(policy)
    assert through_text(data) == data
    assert policy_from_json(through_text(data)) == policy


def test_policy_shape() -> None:
    assert policy_to_json(DEFAULT_POLICY) == {
        "name": "default",
        "warning_thresholds_fen": [3000, 1000],
        "disconnect_threshold_fen": 0,
        "notice_period_s": 7200,
        "friendly": {
            "night_start": "22:00",
            "night_end": "08:00",
            "weekends": True,
            "public_holidays": True,
            "eve_of_public_holidays": True,
        },
    }


def default_policy_json() -> dict[str, Any]:
    return policy_to_json(DEFAULT_POLICY)


def test_thresholds_not_descending_are_refused_with_the_dataclass_message() -> None:
    data = default_policy_json()
    data["warning_thresholds_fen"] = [1000, 3000]
    assert refusal(policy_from_json, data) == "$: warning thresholds must be strictly descending"
    data["warning_thresholds_fen"] = [3000, -5]
    assert refusal(policy_from_json, data) == "$: every warning threshold must be above the disconnect threshold"


@pytest.mark.parametrize("bad", [True, 10.0, "1000", None])
def test_threshold_must_be_an_integer_not_a_bool(bad: object) -> None:
    data = default_policy_json()
    data["warning_thresholds_fen"] = [3000, bad]
    assert refusal(policy_from_json, data) == f"warning_thresholds_fen[1]: expected an integer, got {json.dumps(bad)}"


def test_other_policy_refusals() -> None:
    data = default_policy_json()
    data["disconnect_threshold_fen"] = False
    assert refusal(policy_from_json, data) == "disconnect_threshold_fen: expected an integer, got false"
    data = default_policy_json()
    data["notice_period_s"] = -1
    assert refusal(policy_from_json, data) == "$: notice_period must be a non-negative timedelta"
    data["notice_period_s"] = 10**20
    assert refusal(policy_from_json, data) == f"notice_period_s: {10**20} seconds is out of range"
    data = default_policy_json()
    data["notice_period"] = 0
    assert refusal(policy_from_json, data).startswith("notice_period: unknown key")
    data = default_policy_json()
    data["friendly"]["weekends"] = "yes"
    assert refusal(policy_from_json, data) == 'friendly.weekends: expected true or false, got "yes"'
    data = default_policy_json()
    data["friendly"]["night_end"] = None
    assert refusal(policy_from_json, data) == "friendly: night_start and night_end are both set or both None"
    data = default_policy_json()
    data["friendly"]["night_end"] = "22:00"
    assert refusal(policy_from_json, data).startswith("friendly: an empty or all-day night window is ambiguous")
    data = default_policy_json()
    data["friendly"]["night_start"] = "10pm"
    assert refusal(policy_from_json, data).startswith("friendly.night_start: expected a time")
    data = default_policy_json()
    del data["friendly"]["eve_of_public_holidays"]
    assert refusal(policy_from_json, data) == "friendly.eve_of_public_holidays: missing key"
    data = default_policy_json()
    data["name"] = ""
    assert refusal(policy_from_json, data) == "$: a policy needs a name"


def test_a_notice_period_with_microseconds_cannot_be_written() -> None:
    policy = dataclasses.replace(DEFAULT_POLICY, notice_period=dt.timedelta(seconds=1.5))
    with pytest.raises(ConfigFormatError, match=r"^notice_period_s: 0:00:01.500000 is not a whole number of seconds"):
        policy_to_json(policy)


# --------------------------------------------------------------------------- payment terms


@given(st.builds(PaymentTerms, st.integers(0, 10**15), st.integers(0, BPS_PER_UNIT)))
def test_terms_round_trip(terms: PaymentTerms) -> None:
    data = terms_to_json(terms)
    assert through_text(data) == data
    assert terms_from_json(through_text(data)) == terms


def test_terms_refusals() -> None:
    assert terms_to_json(PaymentTerms(5000, 2500)) == {"emergency_credit_fen": 5000, "debt_recovery_bps": 2500}
    assert refusal(terms_from_json, {"emergency_credit_fen": 0}) == "debt_recovery_bps: missing key"
    assert refusal(terms_from_json, {"emergency_credit_fen": -1, "debt_recovery_bps": 0}) == (
        "$: emergency_credit_fen must be >= 0, got -1"
    )
    assert refusal(terms_from_json, {"emergency_credit_fen": 0, "debt_recovery_bps": 10_001}) == (
        "$: debt_recovery_bps must be in 0..10000, got 10001"
    )
    assert refusal(terms_from_json, {"emergency_credit_fen": True, "debt_recovery_bps": 0}) == (
        "emergency_credit_fen: expected an integer, got true"
    )
    assert refusal(terms_from_json, {"emergency_credit_fen": 0, "debt_recovery_bps": 0, "bps": 1}).startswith(
        "bps: unknown key"
    )


# --------------------------------------------------------------------------- JSON text and example files


def test_loads_strict_refuses_duplicate_keys_and_non_json_constants() -> None:
    with pytest.raises(ConfigFormatError, match=r'^\$: key "notice_period_s" appears twice'):
        loads_strict('{"notice_period_s": 0, "notice_period_s": 3600}')
    with pytest.raises(ConfigFormatError, match=r"^\$: NaN is not JSON"):
        loads_strict('{"x": NaN}')
    with pytest.raises(ConfigFormatError, match=r"^\$: not valid JSON"):
        loads_strict('{"x": 1,}')


def test_example_tariff_file_is_the_jiangsu_example() -> None:
    data = loads_strict((EXAMPLES / "tariffs" / "jiangsu_residential.json").read_text(encoding="utf-8"))
    assert tariff_from_json(data) == example_jiangsu_residential()
    assert data == tariff_to_json(example_jiangsu_residential())


def test_example_policy_file_is_the_default_policy() -> None:
    policy = policy_from_json(loads_strict((EXAMPLES / "policies" / "default.json").read_text(encoding="utf-8")))
    assert policy == DEFAULT_POLICY
    assert policy.warning_thresholds_fen == (3000, 1000)
    assert policy.disconnect_threshold_fen == 0
    assert policy.notice_period <= dt.timedelta(hours=6)
    friendly = policy.friendly
    assert (friendly.night_start, friendly.night_end) == (dt.time(22), dt.time(8))
    assert friendly.weekends
    assert friendly.public_holidays
    assert friendly.eve_of_public_holidays


# --------------------------------------------------------------------------- audit rendering


def exhausted_decision(now: dt.datetime) -> Decision:
    snapshot = AccountSnapshot(
        account_id="C-0001",
        balance_fen=-15,
        emergency_credit_available_fen=0,
        emergency_credit_outstanding_fen=0,
        protected=False,
        keep_supply=False,
        supply=SupplyState.CONNECTED,
        pending_command=None,
    )
    notices = (SentWarning(3000, now - dt.timedelta(days=2)), SentWarning(1000, now - dt.timedelta(days=1)))
    return decide(DEFAULT_POLICY, snapshot, notices, now, SH, CAL)


def test_audit_json_of_a_real_decision_is_plain_and_deterministic() -> None:
    now = dt.datetime(2026, 2, 17, 10, 0, tzinfo=SH)  # Spring Festival break: a public holiday
    decision = exhausted_decision(now)
    assert decision.of(SendZeroBalanceNotice)
    (deferred,) = decision.of(DisconnectDeferred)
    texts = []
    for action in decision.actions:
        rendered = {"reasons": audit_json(action.reasons), "evidence": audit_json(action.evidence)}
        text = json.dumps(rendered, ensure_ascii=False)
        assert json.loads(text) == rendered
        texts.append(text)
    again = exhausted_decision(now)
    assert [
        json.dumps({"reasons": audit_json(a.reasons), "evidence": audit_json(a.evidence)}, ensure_ascii=False)
        for a in again.actions
    ] == texts
    assert json.dumps(audit_json(decision)) == json.dumps(audit_json(again))

    reasons = audit_json(deferred.reasons)
    assert reasons[0]["code"] == "credit_exhausted"
    assert {r["code"] for r in reasons} >= {ReasonCode.FRIENDLY_PUBLIC_HOLIDAY.value, "notice_period_running"}
    evidence = audit_json(deferred.evidence)
    assert evidence["now"] == "2026-02-17T10:00:00+08:00"
    assert evidence["zone"] == "Asia/Shanghai"
    assert evidence["config"]["notice_period"] == 7200
    assert evidence["config"]["friendly"]["night_start"] == "22:00:00"
    assert evidence["snapshot"]["supply"] == "connected"
    assert evidence["snapshot"]["pending_command"] is None
    assert evidence["notices_considered"][0] == {"threshold_fen": 3000, "sent_at": "2026-02-15T10:00:00+08:00"}
    assert evidence["today"]["day"] == "2026-02-17"
    assert evidence["today"]["public_holiday"] is True
    assert evidence["friendly_windows_now"][0]["kind"] == "public_holiday"
    assert audit_json(decision)["actions"][1]["until"] == (
        None if deferred.until is None else deferred.until.isoformat()
    )


def test_audit_json_of_a_decision_on_an_unknown_day() -> None:
    decision = exhausted_decision(dt.datetime(2200, 3, 3, 10, 0, tzinfo=SH))
    (deferred,) = decision.of(DisconnectDeferred)
    evidence = audit_json(deferred.evidence)
    assert evidence["today"]["day"] == "2200-03-03"
    assert "last_known_year" in evidence["today"]
    assert "calendar_unknown" in {r["code"] for r in audit_json(deferred.reasons)}
    json.dumps(audit_json(decision))


class Colour(enum.Enum):
    RED = (255, 0, 0)


class Level(enum.IntEnum):
    LOW = 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (-7, -7),
        ("¥30", "¥30"),
        (Level.LOW, 1),
        (ReasonCode.KEEP_SUPPLY, "keep_supply"),
        (dt.datetime(2026, 1, 1, 8, tzinfo=SH), "2026-01-01T08:00:00+08:00"),
        (dt.date(2026, 1, 1), "2026-01-01"),
        (dt.time(8, 30), "08:30:00"),
        (dt.timedelta(hours=2), 7200),
        (dt.timedelta(days=-1), -86400),
        (dt.timedelta(milliseconds=1500), "1.5"),
        (dt.timedelta(microseconds=-1), "-0.000001"),
        (Decimal("0.5583"), "0.5583"),
        (SH, "Asia/Shanghai"),
        ((1, (2, [3])), [1, [2, [3]]]),
        ({"b": 1, "a": Decimal("2")}, {"a": "2", "b": 1}),
        (MappingProxyType({2: "x", 10: "y"}), {"10": "y", "2": "x"}),
        (frozenset({3, 1, 12, 2}), [1, 2, 3, 12]),
        (frozenset({1, "a"}), ["a", 1]),
    ],
)
def test_audit_json_values(value: object, expected: object) -> None:
    assert audit_json(value) == expected
    json.dumps(audit_json(value))


def test_audit_json_renders_dataclasses_without_derived_fields() -> None:
    rendered = audit_json(example_jiangsu_residential())
    assert set(rendered) == {"code", "name", "versions", "zone"}
    schedule = rendered["versions"][0]["energy_price"]["schedules"][0]
    assert schedule == {
        "ranges": [
            {"start": "08:00:00", "end": "21:00:00", "period": "peak"},
            {"start": "21:00:00", "end": "08:00:00", "period": "valley"},
        ],
        "months": list(range(1, 13)),
    }
    json.dumps(rendered)


@pytest.mark.parametrize(
    ("value", "name"),
    [(0.5, "float"), (object(), "object"), (Colour.RED, "Colour"), (b"x", "bytes"), ({(1, 2): 3}, "tuple")],
)
def test_audit_json_refuses_other_types_by_name(value: object, name: str) -> None:
    with pytest.raises(TypeError, match=name):
        audit_json(value)
    with pytest.raises(TypeError):
        audit_json([{"nested": value}])
