"""Modbus register maps of real meter models, kept as data: load and check a map, plan reads, decode and encode words.

A map is a TOML file in `protocols/register_maps/`, one per model (see docs/modbus.md). Addresses are 0-based
protocol addresses, the number sent in the request PDU: the manuals' register 30073 (input) or 40001 (holding) is
address 0x0048 or 0x0000 here. Values are in our units after the register's scale: energy in Wh, power in W,
voltage in V, current in A, frequency in Hz.
"""

from __future__ import annotations

import itertools
import math
import re
import struct
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from fractions import Fraction
from functools import cache
from importlib import resources
from typing import Any, Final

from protocols.errors import ProtocolError
from protocols.mqtt_codec import MAX_REGISTER_WH, MAX_VOLTAGE_V
from protocols.readings import MeterReading, RelayState

SCHEMA_VERSION: Final = 1
MAX_REGISTERS_PER_READ: Final = 125  # Modbus application protocol: read holding / input registers, 1..125
MAX_MAP_FILE_BYTES: Final = 256 * 1024
MAX_REGISTERS_PER_MAP: Final = 256
MAX_TEXT_CHARS: Final = 1000
MAX_POWER_W: Final = 2**31 - 1  # power_w is stored in a 32-bit column
MAX_CURRENT_A: Final = 1_000_000.0
MAX_FREQUENCY_HZ: Final = 1_000.0
COIL_ON: Final = 0xFF00  # write single coil (function 5): the only two values the protocol allows
COIL_OFF: Final = 0x0000
MAP_DIRECTORY: Final = "register_maps"
MODEL_PATTERN: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_SOURCE_ID_PATTERN: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
READ_FUNCTIONS: Final = frozenset({3, 4})
WRITE_FUNCTIONS: Final = frozenset({5, 6, 16})
RELAY_STATE: Final = "relay_state"


class RegisterMapError(ProtocolError):
    """A register map file that breaks the format; `reason` names the file, the entry and the rule."""


class UnknownModelError(RegisterMapError):
    """A model name for which no register map is shipped."""


class RegisterDecodeError(ProtocolError):
    """Words read from a meter that do not decode into the values its map promises."""


class RegisterEncodeError(ProtocolError):
    """A value that a register of the map cannot hold."""


class RelayControlError(ProtocolError):
    """A relay operation on a model whose map has no relay control or status, or a write it does not define."""


class DataType(StrEnum):
    """How the bits of one or two registers are read as a number."""

    FLOAT32 = "float32"
    INT32 = "int32"
    UINT32 = "uint32"
    INT16 = "int16"
    UINT16 = "uint16"

    @property
    def words(self) -> int:
        """Registers (16-bit words) the type takes."""
        return 1 if self in (DataType.INT16, DataType.UINT16) else 2


class Order(StrEnum):
    """Which half comes first: `big` the most significant (the Modbus default), `little` the least."""

    BIG = "big"
    LITTLE = "little"


@dataclass(frozen=True, slots=True)
class Quantity:
    """One of our quantity names: its unit, whether it decodes to an integer, and the bounds a value must keep."""

    unit: str
    integral: bool
    low: float
    high: float


QUANTITIES: Final[Mapping[str, Quantity]] = {
    "energy_import": Quantity("Wh", True, 0, MAX_REGISTER_WH),
    "energy_export": Quantity("Wh", True, 0, MAX_REGISTER_WH),
    "energy_total": Quantity("Wh", True, 0, MAX_REGISTER_WH),
    "power": Quantity("W", True, -MAX_POWER_W - 1, MAX_POWER_W),
    "power_l1": Quantity("W", True, -MAX_POWER_W - 1, MAX_POWER_W),
    "power_l2": Quantity("W", True, -MAX_POWER_W - 1, MAX_POWER_W),
    "power_l3": Quantity("W", True, -MAX_POWER_W - 1, MAX_POWER_W),
    "voltage": Quantity("V", False, 0.0, MAX_VOLTAGE_V),
    "voltage_l2": Quantity("V", False, 0.0, MAX_VOLTAGE_V),
    "voltage_l3": Quantity("V", False, 0.0, MAX_VOLTAGE_V),
    "current": Quantity("A", False, -MAX_CURRENT_A, MAX_CURRENT_A),
    "current_l2": Quantity("A", False, -MAX_CURRENT_A, MAX_CURRENT_A),
    "current_l3": Quantity("A", False, -MAX_CURRENT_A, MAX_CURRENT_A),
    "frequency": Quantity("Hz", False, 0.0, MAX_FREQUENCY_HZ),
}
QUANTITY_NAMES: Final = frozenset(QUANTITIES) | {RELAY_STATE}

Value = int | float | RelayState


@dataclass(frozen=True, slots=True)
class Source:
    """A document a map's numbers come from: the manufacturer's manual, or a public reference that checks it."""

    id: str
    title: str
    url: str | None = None
    where: str | None = None


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where one number is written: a source of the map and the table, row or page in it."""

    doc: str
    at: str


@dataclass(frozen=True, slots=True)
class Register:
    """One quantity of a meter: where it is read, how its words make a number, and the scale to our unit."""

    name: str
    function: int
    address: int
    data_type: DataType
    word_order: Order
    byte_order: Order
    scale: Fraction
    unit: str
    source: SourceRef
    note: str | None = None

    @property
    def count(self) -> int:
        """Registers the value takes."""
        return self.data_type.words

    @property
    def end(self) -> int:
        """The first address after the value."""
        return self.address + self.count


@dataclass(frozen=True, slots=True)
class RelayControl:
    """How the relay is switched: the write's function code and address, and the value for each position."""

    function: int
    address: int
    open_value: int
    close_value: int


@dataclass(frozen=True, slots=True)
class RelaySpec:
    """A model's relay: its control write (if the model can be switched remotely) and its status words."""

    control: RelayControl | None
    status_open: frozenset[int]
    status_closed: frozenset[int]
    source: SourceRef


@dataclass(frozen=True, slots=True)
class RegisterMap:
    """The registers of one meter model, sorted by function code and address, with the sources of their numbers."""

    model: str
    manufacturer: str
    title: str
    notes: tuple[str, ...]
    sources: tuple[Source, ...]
    registers: tuple[Register, ...]
    relay: RelaySpec | None
    max_registers_per_read: int = MAX_REGISTERS_PER_READ
    max_gap: int = 0

    def register(self, name: str) -> Register:
        """The register called `name`; KeyError when the model has none."""
        for register in self.registers:
            if register.name == name:
                return register
        raise KeyError(f"{self.model} has no register {name!r}")

    @property
    def names(self) -> frozenset[str]:
        """Names of the quantities the model has."""
        return frozenset(register.name for register in self.registers)


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read: function code 3 (holding) or 4 (input), first address, number of registers."""

    function: int
    address: int
    count: int

    @property
    def end(self) -> int:
        """The first address after the read."""
        return self.address + self.count


@dataclass(frozen=True, slots=True)
class RelayWrite:
    """The write that moves a relay: function 5 (coil), 6 or 16 (one holding register), address and value."""

    function: int
    address: int
    value: int

    @property
    def words(self) -> tuple[int, ...]:
        """The register values a function 16 write carries (one register)."""
        return (self.value,)


# ---------------------------------------------------------------------------------------------------------------
# loading and checking


class _Entry:
    """Typed access to one TOML table, naming the file and the entry in every reason."""

    def __init__(self, table: Mapping[str, Any], where: str) -> None:
        self.table = table
        self.where = where

    def fail(self, message: str) -> RegisterMapError:
        return RegisterMapError(f"{self.where}: {message}")

    def only(self, required: Iterable[str], optional: Iterable[str] = ()) -> None:
        allowed = set(required) | set(optional)
        unknown = sorted(set(self.table) - allowed)
        if unknown:
            listed = ", ".join(repr(key) for key in unknown)
            raise self.fail(f"unknown key(s) {listed}; allowed: {', '.join(sorted(allowed))}")
        missing = [key for key in required if key not in self.table]
        if missing:
            raise self.fail(f"missing key(s) {', '.join(repr(k) for k in missing)}")

    def text(self, key: str, *, optional: bool = False) -> str | None:
        value = self.table.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{key} must be a non-empty string, got {_shown(value)}")
        if len(value) > MAX_TEXT_CHARS or not value.isprintable():
            raise self.fail(f"{key} must be printable text of at most {MAX_TEXT_CHARS} characters")
        return value

    def required_text(self, key: str) -> str:
        value = self.text(key)
        assert value is not None
        return value

    def integer(self, key: str, low: int, high: int) -> int:
        value = self.table.get(key)
        # bool is an int subclass in Python; true/false is never an address or a code
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{key} must be an integer, got {_shown(value)}")
        if not low <= value <= high:
            raise self.fail(f"{key} {value} is outside {low}..{high}")
        return value

    def choice(self, key: str, choices: Iterable[str]) -> str:
        value = self.table.get(key)
        options = sorted(choices)
        if value not in options:
            raise self.fail(f"{key} must be one of {', '.join(options)}, got {_shown(value)}")
        assert isinstance(value, str)
        return value

    def table_at(self, key: str, where: str) -> _Entry:
        value = self.table.get(key)
        if not isinstance(value, dict):
            raise self.fail(f"{key} must be a table, got {_shown(value)}")
        return _Entry(value, where)

    def tables(self, key: str) -> list[dict[str, Any]]:
        value = self.table.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(item, dict) for item in value):
            raise self.fail(f"{key} must be a non-empty array of tables ([[{key}]])")
        return value


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _source_ref(entry: _Entry, key: str, source_ids: frozenset[str]) -> SourceRef:
    ref = entry.table_at(key, f"{entry.where}.{key}")
    ref.only(("doc", "at"))
    doc = ref.required_text("doc")
    if doc not in source_ids:
        raise ref.fail(f"doc {doc!r} is not one of the map's sources ({', '.join(sorted(source_ids))})")
    return SourceRef(doc=doc, at=ref.required_text("at"))


def _scale(entry: _Entry) -> Fraction:
    value = entry.table.get("scale")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise entry.fail(f"scale must be a number, got {_shown(value)}")
    if not math.isfinite(value) or value <= 0:
        raise entry.fail(f"scale must be a finite number above 0, got {value!r}")
    # through its shortest decimal text, so that 0.1 is exactly one tenth and integer registers decode exactly
    scale = Fraction(repr(value)) if isinstance(value, float) else Fraction(value)
    if not Fraction(1, 10**9) <= scale <= 10**9:
        raise entry.fail(f"scale {value!r} is outside 1e-9..1e9")
    return scale


def _register(table: Mapping[str, Any], where: str, source_ids: frozenset[str]) -> Register:
    entry = _Entry(table, where)
    label = entry.table.get("name")
    if isinstance(label, str) and label.isprintable() and len(label) <= 64:
        entry.where = f"{where} ({label})"
    data_type_text = entry.table.get("type")
    is_16_bit = data_type_text in (DataType.INT16, DataType.UINT16)
    base = ("name", "function", "address", "type", "byte_order", "scale", "unit", "source")
    if is_16_bit:
        # one register has no word order; stating one would suggest a choice that does not exist
        entry.only(base, ("note",))
    else:
        entry.only((*base, "word_order"), ("note",))
    name = entry.choice("name", QUANTITY_NAMES)
    function = entry.integer("function", 0, 255)
    if function not in READ_FUNCTIONS:
        raise entry.fail(f"function {function} is not a register read (3 holding, 4 input)")
    data_type = DataType(entry.choice("type", (t.value for t in DataType)))
    address = entry.integer("address", 0, 0xFFFF - (data_type.words - 1))
    word_order = Order.BIG if is_16_bit else Order(entry.choice("word_order", (o.value for o in Order)))
    byte_order = Order(entry.choice("byte_order", (o.value for o in Order)))
    scale = _scale(entry)
    unit = entry.table.get("unit")
    if name == RELAY_STATE:
        if not is_16_bit or scale != 1 or unit != "":
            raise entry.fail("relay_state is a 16-bit integer register with scale 1 and unit ''")
    else:
        expected = QUANTITIES[name].unit
        if unit != expected:
            raise entry.fail(f"unit must be {expected!r} for {name} (the scale converts to it), got {_shown(unit)}")
    return Register(
        name=name,
        function=function,
        address=address,
        data_type=data_type,
        word_order=word_order,
        byte_order=byte_order,
        scale=scale,
        unit=str(unit),
        source=_source_ref(entry, "source", source_ids),
        note=entry.text("note", optional=True),
    )


def _relay(entry: _Entry, source_ids: frozenset[str], has_status_register: bool) -> RelaySpec:
    control_keys = ("control_function", "control_address", "open_value", "close_value")
    status_keys = ("status_open", "status_closed")
    entry.only(("source",), (*control_keys, *status_keys, "note"))
    present = [key for key in control_keys if key in entry.table]
    control = None
    if present:
        if len(present) != len(control_keys):
            raise entry.fail(f"relay control needs all of {', '.join(control_keys)}")
        function = entry.integer("control_function", 0, 255)
        if function not in WRITE_FUNCTIONS:
            raise entry.fail(f"control_function {function} is not a write (5 coil, 6 or 16 register)")
        open_value = entry.integer("open_value", 0, 0xFFFF)
        close_value = entry.integer("close_value", 0, 0xFFFF)
        if open_value == close_value:
            raise entry.fail("open_value and close_value must differ")
        if function == 5 and {open_value, close_value} != {COIL_ON, COIL_OFF}:
            raise entry.fail("a coil (function 5) is written 0xFF00 or 0x0000 only")
        control = RelayControl(function, entry.integer("control_address", 0, 0xFFFF), open_value, close_value)
    status_open: frozenset[int] = frozenset()
    status_closed: frozenset[int] = frozenset()
    if any(key in entry.table for key in status_keys):
        status_open = _word_set(entry, "status_open")
        status_closed = _word_set(entry, "status_closed")
        if status_open & status_closed:
            raise entry.fail(f"status values {sorted(status_open & status_closed)} are both open and closed")
    if has_status_register and not status_open:
        raise entry.fail("the relay_state register needs status_open and status_closed")
    if status_open and not has_status_register:
        raise entry.fail("status_open and status_closed need a relay_state register")
    if control is None and not status_open:
        raise entry.fail("a relay table needs a control write, status values, or both")
    return RelaySpec(control, status_open, status_closed, _source_ref(entry, "source", source_ids))


def _word_set(entry: _Entry, key: str) -> frozenset[int]:
    value = entry.table.get(key)
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= 16
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFF for v in value)
    ):
        raise entry.fail(f"{key} must be an array of 1..16 register values 0..65535, got {_shown(value)}")
    return frozenset(value)


def _check_overlaps(registers: Sequence[Register], origin: str) -> None:
    for before, after in itertools.pairwise(registers):
        if before.function == after.function and before.end > after.address:
            raise RegisterMapError(
                f"{origin}: registers {before.name} (function {before.function}, "
                f"0x{before.address:04X}..0x{before.end - 1:04X}) and {after.name} "
                f"(0x{after.address:04X}..0x{after.end - 1:04X}) overlap"
            )


def parse_register_map(text: str, *, origin: str, expect_model: str | None = None) -> RegisterMap:
    """The register map in TOML `text`, checked strictly; RegisterMapError says where and why when it is not valid."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_MAP_FILE_BYTES:
        raise RegisterMapError(f"{origin}: larger than {MAX_MAP_FILE_BYTES} bytes")
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegisterMapError(f"{origin}: not valid TOML: {exc}") from None
    top = _Entry(document, origin)
    top.only(("schema", "model", "manufacturer", "title", "sources", "registers"), ("notes", "reads", "relay"))
    schema = top.integer("schema", 0, 1_000_000)
    if schema != SCHEMA_VERSION:
        raise top.fail(f"schema {schema} is not supported (this version reads schema {SCHEMA_VERSION})")
    model = top.required_text("model")
    if not MODEL_PATTERN.fullmatch(model):
        raise top.fail(f"model {model!r} must be 1..64 of a-z, 0-9 and _, starting with a letter")
    if expect_model is not None and model != expect_model:
        raise top.fail(f"model {model!r} does not match the file name {expect_model!r}")
    notes_value = document.get("notes", [])
    if not isinstance(notes_value, list) or not all(isinstance(n, str) and n.strip() for n in notes_value):
        raise top.fail("notes must be an array of non-empty strings")

    sources: list[Source] = []
    for index, table in enumerate(top.tables("sources")):
        entry = _Entry(table, f"{origin}: sources[{index}]")
        entry.only(("id", "title"), ("url", "where"))
        source_id = entry.required_text("id")
        if not _SOURCE_ID_PATTERN.fullmatch(source_id):
            raise entry.fail(f"id {source_id!r} must be 1..64 of a-z, 0-9 and _, starting with a letter")
        if any(s.id == source_id for s in sources):
            raise entry.fail(f"id {source_id!r} is used twice")
        url = entry.text("url", optional=True)
        if url is not None and not url.startswith(("https://", "http://")):
            raise entry.fail(f"url must start with https:// or http://, got {_shown(url)}")
        sources.append(Source(source_id, entry.required_text("title"), url, entry.text("where", optional=True)))
    source_ids = frozenset(s.id for s in sources)

    max_registers, max_gap = MAX_REGISTERS_PER_READ, 0
    if "reads" in document:
        reads = top.table_at("reads", f"{origin}: reads")
        reads.only(("source",), ("max_registers", "max_gap"))
        if "max_registers" in reads.table:
            max_registers = reads.integer("max_registers", 2, MAX_REGISTERS_PER_READ)
        if "max_gap" in reads.table:
            max_gap = reads.integer("max_gap", 0, MAX_REGISTERS_PER_READ - 2)
        _source_ref(reads, "source", source_ids)

    tables = top.tables("registers")
    if len(tables) > MAX_REGISTERS_PER_MAP:
        raise top.fail(f"{len(tables)} registers exceed the limit of {MAX_REGISTERS_PER_MAP}")
    registers: list[Register] = []
    for index, table in enumerate(tables):
        register = _register(table, f"{origin}: registers[{index}]", source_ids)
        if any(r.name == register.name for r in registers):
            raise RegisterMapError(f"{origin}: registers[{index}]: {register.name} is defined twice")
        registers.append(register)
    registers.sort(key=lambda r: (r.function, r.address))
    _check_overlaps(registers, origin)
    names = {r.name for r in registers}
    if "energy_import" not in names:
        raise top.fail("a map needs an energy_import register (every reading carries it)")

    relay = None
    if "relay" in document:
        relay = _relay(top.table_at("relay", f"{origin}: relay"), source_ids, RELAY_STATE in names)
    elif RELAY_STATE in names:
        raise top.fail("the relay_state register needs a [relay] table with its status values")

    return RegisterMap(
        model=model,
        manufacturer=top.required_text("manufacturer"),
        title=top.required_text("title"),
        notes=tuple(notes_value),
        sources=tuple(sources),
        registers=tuple(registers),
        relay=relay,
        max_registers_per_read=max_registers,
        max_gap=max_gap,
    )


def _map_files() -> dict[str, Any]:
    directory = resources.files("protocols").joinpath(MAP_DIRECTORY)
    return {item.name.removesuffix(".toml"): item for item in directory.iterdir() if item.name.endswith(".toml")}


def available_models() -> tuple[str, ...]:
    """Names of the models whose register maps ship with the package, sorted."""
    return tuple(sorted(name for name in _map_files() if MODEL_PATTERN.fullmatch(name)))


@cache
def load_register_map(model: str) -> RegisterMap:
    """The shipped register map of `model` (e.g. 'eastron_sdm120'); UnknownModelError when there is none."""
    if not isinstance(model, str) or not MODEL_PATTERN.fullmatch(model):
        raise UnknownModelError(f"{_shown(model)} is not a model name (a-z, 0-9 and _)")
    files = _map_files()
    if model not in files:
        raise UnknownModelError(f"no register map for model {model!r}; known: {', '.join(available_models())}")
    text = files[model].read_text(encoding="utf-8")
    return parse_register_map(text, origin=f"{MAP_DIRECTORY}/{model}.toml", expect_model=model)


# ---------------------------------------------------------------------------------------------------------------
# read planning


def plan_reads(register_map: RegisterMap, names: Iterable[str] | None = None) -> tuple[ReadRequest, ...]:
    """The fewest reads that cover the named registers (all by default), per function code, in address order.

    Registers of one function code are merged into one read while the read stays within the map's
    max_registers_per_read and the unread stretch between two registers is at most the map's max_gap.
    """
    chosen = register_map.registers if names is None else [register_map.register(name) for name in set(names)]
    wanted = sorted(chosen, key=lambda r: (r.function, r.address))
    requests: list[ReadRequest] = []
    current: ReadRequest | None = None
    for register in wanted:
        if (
            current is not None
            and current.function == register.function
            and register.address - current.end <= register_map.max_gap
            and register.end - current.address <= register_map.max_registers_per_read
        ):
            current = ReadRequest(current.function, current.address, register.end - current.address)
            continue
        if current is not None:
            requests.append(current)
        current = ReadRequest(register.function, register.address, register.count)
    if current is not None:
        requests.append(current)
    return tuple(requests)


def relay_status_read(register_map: RegisterMap) -> ReadRequest:
    """The read that returns the relay's status word; RelayControlError when the model reports none."""
    if RELAY_STATE not in register_map.names:
        raise RelayControlError(f"{register_map.model} reports no relay status")
    (request,) = plan_reads(register_map, (RELAY_STATE,))
    return request


# ---------------------------------------------------------------------------------------------------------------
# words and numbers


def _swap(word: int) -> int:
    return ((word & 0xFF) << 8) | (word >> 8)


def _raw_from_words(register: Register, words: Sequence[int]) -> int:
    ordered = [_swap(w) if register.byte_order is Order.LITTLE else w for w in words]
    if register.word_order is Order.LITTLE:
        ordered.reverse()
    raw = 0
    for word in ordered:
        raw = (raw << 16) | word
    return raw


def _words_from_raw(register: Register, raw: int) -> tuple[int, ...]:
    words = [(raw >> (16 * shift)) & 0xFFFF for shift in reversed(range(register.count))]
    if register.word_order is Order.LITTLE:
        words.reverse()
    return tuple(_swap(w) if register.byte_order is Order.LITTLE else w for w in words)


def _number_from_raw(data_type: DataType, raw: int) -> int | float:
    if data_type is DataType.FLOAT32:
        return float(struct.unpack(">f", raw.to_bytes(4, "big"))[0])
    bits = 16 * data_type.words
    if data_type in (DataType.INT16, DataType.INT32) and raw >> (bits - 1):
        return raw - (1 << bits)
    return raw


def _check_words(words: Sequence[int], count: int, what: str) -> None:
    if len(words) != count:
        raise RegisterDecodeError(f"{what}: {len(words)} word(s) where {count} were expected")
    for word in words:
        if isinstance(word, bool) or not isinstance(word, int) or not 0 <= word <= 0xFFFF:
            raise RegisterDecodeError(f"{what}: {_shown(word)} is not a 16-bit register value")


def _relay_from_word(register_map: RegisterMap, word: int) -> RelayState:
    relay = register_map.relay
    assert relay is not None  # the loader demands [relay] status values for a relay_state register
    if word in relay.status_closed:
        return RelayState.CLOSED
    if word in relay.status_open:
        return RelayState.OPEN
    raise RegisterDecodeError(f"relay_state word {word} (0x{word:04X}) means neither open nor closed")


def decode_register(register_map: RegisterMap, name: str, words: Sequence[int]) -> Value:
    """The value of register `name` from its words: int Wh or W, float V, A or Hz, or a RelayState.

    Energy and power are rounded to the nearest Wh or W, halves to even, from the exact product of the register
    and its scale. A float32 kWh register above 8,192 kWh is coarser than 1 Wh (its resolution), which no
    rounding can recover. NaN, infinity, a negative energy and a value outside its quantity's bounds raise
    RegisterDecodeError.
    """
    register = register_map.register(name)
    _check_words(words, register.count, name)
    raw = _raw_from_words(register, words)
    if name == RELAY_STATE:
        return _relay_from_word(register_map, raw)
    number = _number_from_raw(register.data_type, raw)
    if not math.isfinite(number):
        raise RegisterDecodeError(f"{name}: the register holds {number!r}, not a number")
    exact = Fraction(number) * register.scale
    quantity = QUANTITIES[name]
    value: int | float = round(exact) if quantity.integral else float(exact)
    if not quantity.low <= value <= quantity.high:
        raise RegisterDecodeError(
            f"{name} decodes to {value:g} {quantity.unit}, outside {quantity.low:g}..{quantity.high:g}"
        )
    return value


def decode_values(
    register_map: RegisterMap, plan: Sequence[ReadRequest], responses: Sequence[Sequence[int]]
) -> dict[str, Value]:
    """The value of every register the reads of `plan` cover, from the words each read returned (in plan order)."""
    if len(responses) != len(plan):
        raise RegisterDecodeError(f"{len(responses)} response(s) for {len(plan)} read(s)")
    values: dict[str, Value] = {}
    for index, (request, words) in enumerate(zip(plan, responses, strict=True)):
        what = f"read {index} (function {request.function}, 0x{request.address:04X}, {request.count} registers)"
        _check_words(words, request.count, what)
        for register in register_map.registers:
            if (
                register.function == request.function
                and request.address <= register.address
                and register.end <= request.end
            ):
                offset = register.address - request.address
                values[register.name] = decode_register(
                    register_map, register.name, words[offset : offset + register.count]
                )
    return values


def decode_reading(
    register_map: RegisterMap,
    plan: Sequence[ReadRequest],
    responses: Sequence[Sequence[int]],
    *,
    meter_id: str,
    ts: datetime,
) -> MeterReading:
    """The MeterReading the reads of `plan` make: energy in integer Wh, power in W, voltage in V, the relay."""
    values = decode_values(register_map, plan, responses)
    energy_import_wh = values.get("energy_import")
    if not isinstance(energy_import_wh, int):
        raise RegisterDecodeError("the reads do not cover energy_import")
    energy_export_wh = values.get("energy_export")
    power_w = values.get("power")
    voltage_v = values.get("voltage")
    relay = values.get(RELAY_STATE)
    return MeterReading(
        meter_id=meter_id,
        ts=ts,
        energy_import_wh=energy_import_wh,
        energy_export_wh=energy_export_wh if isinstance(energy_export_wh, int) else None,
        power_w=power_w if isinstance(power_w, int) else None,
        voltage_v=voltage_v if isinstance(voltage_v, float) else None,
        relay=relay if isinstance(relay, RelayState) else None,
    )


def decode_relay_state(register_map: RegisterMap, words: Sequence[int]) -> RelayState:
    """The relay position from the words of relay_status_read(register_map)."""
    if RELAY_STATE not in register_map.names:
        raise RelayControlError(f"{register_map.model} reports no relay status")
    value = decode_register(register_map, RELAY_STATE, words)
    assert isinstance(value, RelayState)
    return value


# ---------------------------------------------------------------------------------------------------------------
# encoding: what a simulated meter serves


def encode_register(register_map: RegisterMap, name: str, value: Value) -> tuple[int, ...]:
    """The words register `name` holds for `value`, rounded to the register's resolution (halves to even).

    decode_register(encode_register(v)) == v for every value decode_register can return.
    """
    register = register_map.register(name)
    if name == RELAY_STATE:
        if not isinstance(value, RelayState):
            raise RegisterEncodeError(f"relay_state must be a RelayState, got {_shown(value)}")
        relay = register_map.relay
        assert relay is not None
        return _words_from_raw(register, min(relay.status_closed if value is RelayState.CLOSED else relay.status_open))
    if isinstance(value, bool | RelayState) or not isinstance(value, int | float):
        raise RegisterEncodeError(f"{name} must be a number, got {_shown(value)}")
    quantity = QUANTITIES[name]
    if not (math.isfinite(value) and quantity.low <= value <= quantity.high):
        raise RegisterEncodeError(f"{name} {value!r} is outside {quantity.low:g}..{quantity.high:g} {quantity.unit}")
    exact = Fraction(value) / register.scale
    if register.data_type is DataType.FLOAT32:
        try:
            raw = int.from_bytes(struct.pack(">f", float(exact)), "big")
        except OverflowError:
            raise RegisterEncodeError(f"{name} {value!r} is beyond the range of a float32 register") from None
        return _words_from_raw(register, raw)
    number = round(exact)
    bits = 16 * register.count
    signed = register.data_type in (DataType.INT16, DataType.INT32)
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not low <= number <= high:
        raise RegisterEncodeError(f"{name} {value!r} needs {number}, beyond {register.data_type.value} ({low}..{high})")
    return _words_from_raw(register, number % (1 << bits))


def encode_values(register_map: RegisterMap, values: Mapping[str, Value]) -> dict[int, dict[int, int]]:
    """The register image for `values`: function code → address → word, as a simulated meter serves them."""
    image: dict[int, dict[int, int]] = {}
    for name, value in values.items():
        if name not in register_map.names:
            raise RegisterEncodeError(f"{register_map.model} has no register {name!r}")
        register = register_map.register(name)
        words = encode_register(register_map, name, value)
        block = image.setdefault(register.function, {})
        for offset, word in enumerate(words):
            block[register.address + offset] = word
    return image


def values_from_reading(register_map: RegisterMap, reading: MeterReading) -> dict[str, Value]:
    """The values of `reading` that the model has registers for, by quantity name."""
    candidates: dict[str, Value | None] = {
        "energy_import": reading.energy_import_wh,
        "energy_export": reading.energy_export_wh,
        "power": reading.power_w,
        "voltage": reading.voltage_v,
        RELAY_STATE: reading.relay,
    }
    return {name: value for name, value in candidates.items() if value is not None and name in register_map.names}


# ---------------------------------------------------------------------------------------------------------------
# relay control


def relay_write(register_map: RegisterMap, target: RelayState) -> RelayWrite:
    """The write that opens (disconnects) or closes (reconnects) the relay; RelayControlError without control."""
    relay = register_map.relay
    if relay is None or relay.control is None:
        raise RelayControlError(f"{register_map.model} has no remote relay control")
    control = relay.control
    value = control.close_value if target is RelayState.CLOSED else control.open_value
    return RelayWrite(control.function, control.address, value)


def relay_target(register_map: RegisterMap, write: RelayWrite) -> RelayState:
    """The position a received write asks for (what a simulated meter does with it); RelayControlError otherwise."""
    relay = register_map.relay
    if relay is None or relay.control is None:
        raise RelayControlError(f"{register_map.model} has no remote relay control")
    control = relay.control
    if (write.function, write.address) != (control.function, control.address):
        raise RelayControlError(
            f"function {write.function} at 0x{write.address:04X} is not the relay control "
            f"(function {control.function} at 0x{control.address:04X})"
        )
    if write.value == control.close_value:
        return RelayState.CLOSED
    if write.value == control.open_value:
        return RelayState.OPEN
    raise RelayControlError(f"value {write.value} neither opens nor closes the relay")
