"""JSON form of tariffs, disconnect policies and payment terms, and a JSON rendering of anything for audit records.

Pure: no I/O, no clock. The format (docs/tariff-format.md) is strict, because a typo in a price list or a
policy must stop the load, not change what customers pay or when their power is cut:

* every key is required (null where the value may be absent) and unknown keys are refused;
* prices are JSON strings holding an exact decimal ("0.5583"): a JSON number is refused, since a parser
  reads it as a binary float and 0.1 is not exactly representable;
* fen, Wh, months, days and seconds are JSON integers; true/false is not an integer here;
* times of day are "HH:MM", "HH:MM:SS" or "HH:MM:SS.ffffff"; dates "YYYY-MM-DD"; instants ISO 8601 with an
  offset; zones IANA names.

Every refusal is a `ConfigFormatError` whose message starts with the JSON path of the bad element
(`versions[0].tiers.bands[1].increment_yuan_per_kwh: ...`; `$` is the whole document). A refusal by the
dataclasses' own validation keeps its message behind the path of the object being built.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from enum import Enum, StrEnum
from typing import Any, NoReturn, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prepay_engine.calendar import DeclaredYear
from prepay_engine.payments import PaymentTerms
from prepay_engine.policy import FriendlyCreditWindows, PolicyConfig
from prepay_engine.tariffs import (
    CycleKind,
    DailySchedule,
    EnergyPrice,
    FlatPrice,
    Period,
    Tariff,
    TariffVersion,
    TierBand,
    TierSchedule,
    TimeOfUse,
    TimeRange,
)

__all__ = [
    "ConfigFormatError",
    "audit_json",
    "loads_strict",
    "policy_from_json",
    "policy_to_json",
    "tariff_from_json",
    "tariff_to_json",
    "terms_from_json",
    "terms_to_json",
]

_T = TypeVar("_T")
_E = TypeVar("_E", bound=StrEnum)
_ROOT = "$"
_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_TIME = re.compile(r"([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{6}))?)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{6})?)?"
    r"(?:Z|[+-][0-9]{2}:[0-9]{2}(?::[0-9]{2})?)"
)
_MAX_SHOWN = 80


class ConfigFormatError(ValueError):
    """A configuration document that cannot be loaded; the message starts with the JSON path of the problem."""


# --------------------------------------------------------------------------- reading helpers


def _show(value: object) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        # not JSON, or too big or deep to print (an int of thousands of digits refuses str() too)
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _fail(path: str, message: str) -> NoReturn:
    raise ConfigFormatError(f"{path}: {message}")


def _child(path: str, key: str) -> str:
    return key if path == _ROOT else f"{path}.{key}"


def _object(data: object, path: str, keys: tuple[str, ...]) -> dict[str, object]:
    """`data` as a JSON object with exactly `keys`."""
    if not isinstance(data, dict):
        _fail(path, f"expected an object, got {_show(data)}")
    for key in data:
        if not isinstance(key, str):
            _fail(path, f"object keys must be strings, got {_show(key)}")
        if key not in keys:
            _fail(_child(path, key), f"unknown key (expected {', '.join(keys)})")
    for key in keys:
        if key not in data:
            _fail(_child(path, key), "missing key")
    return data


def _list(data: object, path: str) -> list[object]:
    if not isinstance(data, list):
        _fail(path, f"expected a list, got {_show(data)}")
    return data


def _items(data: object, path: str, read: Callable[[object, str], _T]) -> tuple[_T, ...]:
    return tuple(read(item, f"{path}[{index}]") for index, item in enumerate(_list(data, path)))


def _str(data: object, path: str) -> str:
    if not isinstance(data, str):
        _fail(path, f"expected a string, got {_show(data)}")
    return data


def _int(data: object, path: str) -> int:
    # bool is an int subclass in Python; true/false is never an amount or a count
    if isinstance(data, bool) or not isinstance(data, int):
        _fail(path, f"expected an integer, got {_show(data)}")
    return data


def _bool(data: object, path: str) -> bool:
    if not isinstance(data, bool):
        _fail(path, f"expected true or false, got {_show(data)}")
    return data


def _optional(data: object, path: str, read: Callable[[object, str], _T]) -> _T | None:
    return None if data is None else read(data, path)


def _decimal(data: object, path: str) -> Decimal:
    if not isinstance(data, str) or not _DECIMAL.fullmatch(data):
        _fail(path, f'expected a decimal string like "0.05", got {_show(data)}')
    return Decimal(data)


def _time(data: object, path: str) -> dt.time:
    text = _str(data, path)
    match = _TIME.fullmatch(text)
    if match is None:
        _fail(path, f'expected a time "HH:MM" or "HH:MM:SS", got {_show(data)}')
    if text.startswith("24:00"):
        _fail(path, "24:00 is not a time of day; a range ending at midnight ends at 00:00")
    hour, minute, second, micro = match.groups()
    try:
        return dt.time(int(hour), int(minute), int(second or 0), int(micro or 0))
    except ValueError as exc:
        _fail(path, f"{_show(data)} is not a valid time: {exc}")


def _date(data: object, path: str) -> dt.date:
    text = _str(data, path)
    if not _DATE.fullmatch(text):
        _fail(path, f'expected a date "YYYY-MM-DD", got {_show(data)}')
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        _fail(path, f"{_show(data)} is not a valid date: {exc}")


def _date_or_instant(data: object, path: str) -> dt.date | dt.datetime:
    text = _str(data, path)
    if _DATE.fullmatch(text):
        return _date(text, path)
    if not _DATETIME.fullmatch(text):
        _fail(
            path,
            f'expected a date "YYYY-MM-DD" or an ISO 8601 instant with offset like "2024-01-01T00:00:00+08:00", '
            f"got {_show(data)}",
        )
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError as exc:
        _fail(path, f"{_show(data)} is not a valid instant: {exc}")


def _zone(data: object, path: str) -> ZoneInfo:
    name = _str(data, path)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        _fail(path, f'unknown time zone {_show(name)} (expected an IANA name like "Asia/Shanghai")')


def _choice(data: object, path: str, enum: type[_E]) -> _E:
    text = _str(data, path)
    try:
        return enum(text)
    except ValueError:
        _fail(path, f"expected one of {', '.join(m.value for m in enum)}, got {_show(data)}")


def _build(path: str, make: Callable[[], _T]) -> _T:
    """Run a dataclass constructor; its own validation errors get the path of the object it builds."""
    try:
        return make()
    except ConfigFormatError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigFormatError(f"{path}: {exc}") from exc


# --------------------------------------------------------------------------- writing helpers


def _time_text(value: dt.time) -> str:
    assert value.tzinfo is None, "times of day in configuration are local wall-clock times"
    text = f"{value.hour:02d}:{value.minute:02d}"
    if value.second or value.microsecond:
        text += f":{value.second:02d}"
    if value.microsecond:
        text += f".{value.microsecond:06d}"
    return text


def _decimal_text(value: Decimal) -> str:
    # fixed-point, never exponent notation ("1E-7"), so the text matches the format's decimal rule
    return format(value, "f")


def _zone_name(zone: ZoneInfo) -> str:
    if zone.key is None:
        raise ConfigFormatError(f"zone: {zone!r} has no IANA name (built from a file?)")
    return zone.key


# --------------------------------------------------------------------------- tariffs

_TARIFF_KEYS = ("code", "name", "zone", "versions")
_VERSION_KEYS = ("effective_from", "source", "energy_price", "tiers")
_FLAT_KEYS = ("kind", "price_yuan_per_kwh")
_TOU_KEYS = ("kind", "periods", "schedules")
_PERIOD_KEYS = ("name", "price_yuan_per_kwh")
_SCHEDULE_KEYS = ("months", "ranges")
_RANGE_KEYS = ("start", "end", "period")
_TIERS_KEYS = ("cycle", "cycle_start_month", "cycle_start_day", "bands")
_BAND_KEYS = ("upper_wh", "increment_yuan_per_kwh")
_FLAT = "flat"
_TIME_OF_USE = "time_of_use"


def tariff_to_json(tariff: Tariff) -> dict[str, Any]:
    """The tariff as a JSON-compatible dict, in the format `tariff_from_json` reads."""
    return {
        "code": tariff.code,
        "name": tariff.name,
        "zone": _zone_name(tariff.zone),
        "versions": [_version_to_json(v) for v in tariff.versions],
    }


def _version_to_json(version: TariffVersion) -> dict[str, Any]:
    return {
        "effective_from": version.effective_from.isoformat(),
        "source": version.source,
        "energy_price": _price_to_json(version.energy_price),
        "tiers": None if version.tiers is None else _tiers_to_json(version.tiers),
    }


def _price_to_json(price: EnergyPrice) -> dict[str, Any]:
    if isinstance(price, FlatPrice):
        return {"kind": _FLAT, "price_yuan_per_kwh": _decimal_text(price.price_yuan_per_kwh)}
    return {
        "kind": _TIME_OF_USE,
        "periods": [{"name": p.name, "price_yuan_per_kwh": _decimal_text(p.price_yuan_per_kwh)} for p in price.periods],
        "schedules": [
            {
                "months": sorted(schedule.months),
                "ranges": [
                    {"start": _time_text(r.start), "end": _time_text(r.end), "period": r.period}
                    for r in schedule.ranges
                ],
            }
            for schedule in price.schedules
        ],
    }


def _tiers_to_json(tiers: TierSchedule) -> dict[str, Any]:
    return {
        "cycle": tiers.cycle.value,
        "cycle_start_month": tiers.cycle_start_month,
        "cycle_start_day": tiers.cycle_start_day,
        "bands": [
            {"upper_wh": band.upper_wh, "increment_yuan_per_kwh": _decimal_text(band.increment_yuan_per_kwh)}
            for band in tiers.bands
        ],
    }


def tariff_from_json(data: object) -> Tariff:
    """Read a tariff from parsed JSON; ConfigFormatError (with the JSON path) for anything wrong."""
    obj = _object(data, _ROOT, _TARIFF_KEYS)
    code = _str(obj["code"], "code")
    name = _str(obj["name"], "name")
    zone = _zone(obj["zone"], "zone")
    versions = _items(obj["versions"], "versions", _version_from_json)
    return _build(_ROOT, lambda: Tariff(code=code, name=name, versions=versions, zone=zone))


def _version_from_json(data: object, path: str) -> TariffVersion:
    obj = _object(data, path, _VERSION_KEYS)
    effective_from = _date_or_instant(obj["effective_from"], _child(path, "effective_from"))
    source = _str(obj["source"], _child(path, "source"))
    energy_price = _price_from_json(obj["energy_price"], _child(path, "energy_price"))
    tiers = _optional(obj["tiers"], _child(path, "tiers"), _tiers_from_json)
    return _build(path, lambda: TariffVersion(effective_from, source, energy_price, tiers))


def _price_from_json(data: object, path: str) -> EnergyPrice:
    if not isinstance(data, dict):
        _fail(path, f"expected an object, got {_show(data)}")
    if "kind" not in data:
        _fail(_child(path, "kind"), f'missing key (expected "{_FLAT}" or "{_TIME_OF_USE}")')
    kind = data["kind"]
    if kind == _FLAT:
        obj = _object(data, path, _FLAT_KEYS)
        price = _decimal(obj["price_yuan_per_kwh"], _child(path, "price_yuan_per_kwh"))
        return _build(path, lambda: FlatPrice(price))
    if kind == _TIME_OF_USE:
        obj = _object(data, path, _TOU_KEYS)
        periods = _items(obj["periods"], _child(path, "periods"), _period_from_json)
        schedules = _items(obj["schedules"], _child(path, "schedules"), _schedule_from_json)
        return _build(path, lambda: TimeOfUse(periods, schedules))
    _fail(_child(path, "kind"), f'expected "{_FLAT}" or "{_TIME_OF_USE}", got {_show(kind)}')


def _period_from_json(data: object, path: str) -> Period:
    obj = _object(data, path, _PERIOD_KEYS)
    name = _str(obj["name"], _child(path, "name"))
    price = _decimal(obj["price_yuan_per_kwh"], _child(path, "price_yuan_per_kwh"))
    return _build(path, lambda: Period(name, price))


def _schedule_from_json(data: object, path: str) -> DailySchedule:
    obj = _object(data, path, _SCHEDULE_KEYS)
    months_path = _child(path, "months")
    months = _items(obj["months"], months_path, _int)
    seen: set[int] = set()
    for index, month in enumerate(months):
        if month in seen:
            _fail(f"{months_path}[{index}]", f"month {month} is listed twice")
        seen.add(month)
    ranges = _items(obj["ranges"], _child(path, "ranges"), _range_from_json)
    return _build(path, lambda: DailySchedule(ranges=ranges, months=frozenset(months)))


def _range_from_json(data: object, path: str) -> TimeRange:
    obj = _object(data, path, _RANGE_KEYS)
    start = _time(obj["start"], _child(path, "start"))
    end = _time(obj["end"], _child(path, "end"))
    period = _str(obj["period"], _child(path, "period"))
    return _build(path, lambda: TimeRange(start, end, period))


def _tiers_from_json(data: object, path: str) -> TierSchedule:
    obj = _object(data, path, _TIERS_KEYS)
    cycle = _choice(obj["cycle"], _child(path, "cycle"), CycleKind)
    start_month = _int(obj["cycle_start_month"], _child(path, "cycle_start_month"))
    start_day = _int(obj["cycle_start_day"], _child(path, "cycle_start_day"))
    bands = _items(obj["bands"], _child(path, "bands"), _band_from_json)
    return _build(path, lambda: TierSchedule(cycle, bands, start_month, start_day))


def _band_from_json(data: object, path: str) -> TierBand:
    obj = _object(data, path, _BAND_KEYS)
    upper_wh = _optional(obj["upper_wh"], _child(path, "upper_wh"), _int)
    increment = _decimal(obj["increment_yuan_per_kwh"], _child(path, "increment_yuan_per_kwh"))
    return _build(path, lambda: TierBand(upper_wh, increment))


# --------------------------------------------------------------------------- policy

_POLICY_KEYS = ("name", "warning_thresholds_fen", "disconnect_threshold_fen", "notice_period_s", "friendly")
_FRIENDLY_KEYS = ("night_start", "night_end", "weekends", "public_holidays", "eve_of_public_holidays")


def policy_to_json(policy: PolicyConfig) -> dict[str, Any]:
    """The policy as a JSON-compatible dict, in the format `policy_from_json` reads."""
    period = policy.notice_period
    if period.microseconds:
        raise ConfigFormatError(f"notice_period_s: {period} is not a whole number of seconds")
    friendly = policy.friendly
    return {
        "name": policy.name,
        "warning_thresholds_fen": list(policy.warning_thresholds_fen),
        "disconnect_threshold_fen": policy.disconnect_threshold_fen,
        "notice_period_s": period.days * 86_400 + period.seconds,
        "friendly": {
            "night_start": None if friendly.night_start is None else _time_text(friendly.night_start),
            "night_end": None if friendly.night_end is None else _time_text(friendly.night_end),
            "weekends": friendly.weekends,
            "public_holidays": friendly.public_holidays,
            "eve_of_public_holidays": friendly.eve_of_public_holidays,
        },
    }


def policy_from_json(data: object) -> PolicyConfig:
    """Read a disconnect policy from parsed JSON; ConfigFormatError (with the JSON path) for anything wrong."""
    obj = _object(data, _ROOT, _POLICY_KEYS)
    name = _str(obj["name"], "name")
    thresholds = _items(obj["warning_thresholds_fen"], "warning_thresholds_fen", _int)
    disconnect = _int(obj["disconnect_threshold_fen"], "disconnect_threshold_fen")
    seconds = _int(obj["notice_period_s"], "notice_period_s")
    try:
        notice_period = dt.timedelta(seconds=seconds)
    except OverflowError:
        _fail("notice_period_s", f"{seconds} seconds is out of range")
    friendly = _friendly_from_json(obj["friendly"], "friendly")
    return _build(_ROOT, lambda: PolicyConfig(name, thresholds, disconnect, notice_period, friendly))


def _friendly_from_json(data: object, path: str) -> FriendlyCreditWindows:
    obj = _object(data, path, _FRIENDLY_KEYS)
    night_start = _optional(obj["night_start"], _child(path, "night_start"), _time)
    night_end = _optional(obj["night_end"], _child(path, "night_end"), _time)
    weekends = _bool(obj["weekends"], _child(path, "weekends"))
    holidays = _bool(obj["public_holidays"], _child(path, "public_holidays"))
    eves = _bool(obj["eve_of_public_holidays"], _child(path, "eve_of_public_holidays"))
    return _build(path, lambda: FriendlyCreditWindows(night_start, night_end, weekends, holidays, eves))


# --------------------------------------------------------------------------- payment terms

_TERMS_KEYS = ("emergency_credit_fen", "debt_recovery_bps")


def terms_to_json(terms: PaymentTerms) -> dict[str, Any]:
    """The payment terms as a JSON-compatible dict, in the format `terms_from_json` reads."""
    return {"emergency_credit_fen": terms.emergency_credit_fen, "debt_recovery_bps": terms.debt_recovery_bps}


def terms_from_json(data: object) -> PaymentTerms:
    """Read payment terms from parsed JSON; ConfigFormatError (with the JSON path) for anything wrong."""
    obj = _object(data, _ROOT, _TERMS_KEYS)
    emergency = _int(obj["emergency_credit_fen"], "emergency_credit_fen")
    bps = _int(obj["debt_recovery_bps"], "debt_recovery_bps")
    return _build(_ROOT, lambda: PaymentTerms(emergency, bps))


_CALENDAR_KEYS = ("year", "source", "holidays", "makeup_working_days")


def calendar_year_to_json(declared: DeclaredYear) -> dict[str, Any]:
    """A declared calendar year as a JSON-compatible dict, in the format `calendar_year_from_json` reads."""
    return {
        "year": declared.year,
        "source": declared.source,
        "holidays": {d.isoformat(): name for d, name in sorted(declared.holidays.items())},
        "makeup_working_days": {d.isoformat(): name for d, name in sorted(declared.makeup_working_days.items())},
    }


def _named_days(data: object, path: str) -> dict[dt.date, str]:
    if not isinstance(data, dict):
        _fail(path, f'expected an object of "YYYY-MM-DD": name, got {_show(data)}')
    return {_date(day, _child(path, str(day))): _str(name, _child(path, str(day))) for day, name in data.items()}


def calendar_year_from_json(data: object) -> DeclaredYear:
    """Read a declared calendar year (a State Council holiday notice) from parsed JSON."""
    obj = _object(data, _ROOT, _CALENDAR_KEYS)
    year = _int(obj["year"], "year")
    source = _str(obj["source"], "source")
    holidays = _named_days(obj["holidays"], "holidays")
    makeup = _named_days(obj["makeup_working_days"], "makeup_working_days")
    return _build(_ROOT, lambda: DeclaredYear(year, source, holidays, makeup))


# --------------------------------------------------------------------------- JSON text


def _refuse_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ConfigFormatError(f"{_ROOT}: key {_show(key)} appears twice in one object")
        result[key] = value
    return result


def _refuse_constant(name: str) -> NoReturn:
    raise ConfigFormatError(f"{_ROOT}: {name} is not JSON")


def loads_strict(text: str | bytes) -> Any:
    """Parse JSON text, refusing what `json.loads` lets through: duplicate keys, NaN and Infinity."""
    try:
        return json.loads(text, object_pairs_hook=_refuse_pairs, parse_constant=_refuse_constant)
    except ConfigFormatError:
        raise
    except RecursionError:
        raise ConfigFormatError(f"{_ROOT}: nested too deeply") from None
    except ValueError as exc:
        raise ConfigFormatError(f"{_ROOT}: not valid JSON: {exc}") from None


# --------------------------------------------------------------------------- audit rendering


def audit_json(value: object) -> Any:
    """A deterministic JSON-compatible rendering of a value for audit records; TypeError for unsupported types."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, Enum):
        if isinstance(value, str | int):
            return value.value
        raise TypeError(f"audit_json cannot render {type(value).__qualname__} (an Enum without str or int values)")
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return _seconds(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, ZoneInfo):
        if value.key is None:
            raise TypeError(f"audit_json cannot render {value!r}: a ZoneInfo without an IANA name")
        return value.key
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # underscore fields are derived caches (e.g. a schedule's lookup tables), not facts
        return {f.name: audit_json(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name[0] != "_"}
    if isinstance(value, tuple | list):
        return [audit_json(item) for item in value]
    if isinstance(value, Mapping):
        return _audit_mapping(value)
    if isinstance(value, frozenset | set):
        return _sorted_items([audit_json(item) for item in value])
    raise TypeError(f"audit_json cannot render a value of type {type(value).__qualname__}")


def _sorted_items(items: list[Any]) -> list[Any]:
    # sets have no order of their own; sort so equal sets render equally (months as 1, 2, ... 10, not 1, 10, 2)
    try:
        return sorted(items)
    except TypeError:
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))


def _seconds(value: dt.timedelta) -> int | str:
    total_us = value // dt.timedelta(microseconds=1)
    whole, micro = divmod(abs(total_us), 1_000_000)
    if micro == 0:
        return total_us // 1_000_000
    sign = "-" if total_us < 0 else ""
    return f"{sign}{whole}.{micro:06d}".rstrip("0")


def _audit_mapping(value: Mapping[Any, Any]) -> dict[str, Any]:
    rendered: dict[str, Any] = {}
    for key, item in value.items():
        text = audit_json(key)
        if isinstance(text, int) and not isinstance(text, bool):
            text = str(text)
        if not isinstance(text, str):
            raise TypeError(f"audit_json cannot render a mapping key of type {type(key).__qualname__}")
        if text in rendered:
            raise TypeError(f"audit_json: two mapping keys render as {text!r}")
        rendered[text] = audit_json(item)
    # insertion order may depend on how the mapping was built; sorted keys do not
    return dict(sorted(rendered.items()))
