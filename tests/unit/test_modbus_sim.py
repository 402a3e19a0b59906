"""Simulated Modbus meters without a network: register values from energy, energy under the load shape, relay writes,
the fleet's meters and registry rows, the pymodbus blocks of each model, and the faults' checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headend.registry.meter_import import read_registry_file
from protocols.readings import RelayState
from protocols.register_map import (
    RELAY_STATE,
    DataType,
    RegisterMap,
    RelayControlError,
    RelayWrite,
    Value,
    available_models,
    decode_values,
    load_register_map,
    parse_register_map,
    plan_reads,
    relay_write,
)
from simulators.clock import INTERVAL
from simulators.load_shapes import MeterKind, interval_energy_wh, meter_scale
from simulators.modbus_faults import ExceptionAnswer, ExceptionCode, SlowAnswer
from simulators.modbus_meter import ModbusMeterSim, ModbusMeterSpec, RelayRefusedError, is_three_phase
from simulators.modbus_server import register_blocks
from simulators.modbus_sim import START_REGISTER_MAX_WH, ModbusMeterFleet, plan_meters
from simulators.polled_registry import MODBUS_REGISTRY_COLUMNS
from simulators.relay_sim import RelayFault

MODELS = available_models()
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # a Monday, 16:00 in Shanghai
DDS238 = "hiking_dds238_2_znsr"

COIL_MAP = """\
schema = 1
model = "coil_meter"
manufacturer = "Test"
title = "A meter whose relay is a coil"

[[sources]]
id = "manual"
title = "Test meter manual"

[[registers]]
name = "energy_import"
function = 4
address = 0x0000
type = "uint32"
word_order = "big"
byte_order = "big"
scale = 1
unit = "Wh"
source = { doc = "manual", at = "table 1" }

[[registers]]
name = "relay_state"
function = 4
address = 0x0010
type = "uint16"
byte_order = "big"
scale = 1
unit = ""
source = { doc = "manual", at = "table 2" }

[relay]
control_function = 5
control_address = 0x0021
open_value = 0xFF00
close_value = 0x0000
status_open = [0]
status_closed = [1]
source = { doc = "manual", at = "table 3: coil 0021h ON trips the relay" }
"""


def meter(model: str, start_wh: int = 1_000_000, **kwargs: object) -> ModbusMeterSim:
    """A simulated meter of `model` at unit 1, started at T0."""
    register_map = load_register_map(model)
    kind = MeterKind.COMMERCIAL if is_three_phase(register_map) else MeterKind.RESIDENTIAL
    spec = ModbusMeterSpec("MB000001", 1, model, kind, start_wh)
    return ModbusMeterSim(spec, register_map, seed=7, started_at=T0, **kwargs)  # type: ignore[arg-type]


def counter_wh(register_map: RegisterMap) -> int:
    """The Wh one count of the model's energy register stands for (1 on float32 registers below 2^23 Wh)."""
    register = register_map.register("energy_import")
    return 1 if register.data_type is DataType.FLOAT32 else int(register.scale)


def served(register_map: RegisterMap, image: dict[int, dict[int, int]]) -> dict[str, Value]:
    """What a poller decodes from the register image, read with the map's own plan (gaps read zero)."""
    plan = plan_reads(register_map)
    responses = [[image.get(r.function, {}).get(a, 0) for a in range(r.address, r.end)] for r in plan]
    return decode_values(register_map, plan, responses)


def number(values: dict[str, Value], name: str) -> float:
    """A measured value (not the relay) of `values`."""
    value = values[name]
    assert isinstance(value, int | float)
    return value


# ---------------------------------------------------------------------------------------------------------------
# register values from energy


@pytest.mark.parametrize("model", MODELS)
def test_every_register_decodes_into_the_meters_truth(model: str) -> None:
    sim = meter(model)
    now = T0 + timedelta(hours=5, minutes=7, seconds=3)
    register_map = load_register_map(model)
    values = served(register_map, sim.words(now))
    truth_wh = sim.energy_wh(now)
    assert truth_wh > 1_000_000  # five hours of load on top of the start register
    # the truth to the register's resolution: every Wh on a float32 kWh register below 2^23 Wh, whole counts of an
    # integer counter (1/100 kWh on the DDS238-2), never more than the meter measured
    shown_wh = truth_wh - truth_wh % counter_wh(register_map)
    assert values["energy_import"] == shown_wh
    assert values.get("energy_export", 0) == 0
    assert values.get("energy_total", shown_wh) == shown_wh
    assert values["power"] == sim.power_w(now) > 0
    voltage = values["voltage"]
    assert isinstance(voltage, float)
    assert 200 <= voltage <= 240
    if "frequency" in values:
        assert values["frequency"] == pytest.approx(50.0, abs=0.06)
    if "current" in values:
        suffixes = ("", "_l2", "_l3") if is_three_phase(register_map) else ("",)
        apparent_va = sum(number(values, f"current{p}") * number(values, f"voltage{p}") for p in suffixes)
        # P = U I cos φ, the load's power factor 0.90..0.99 (the currents are rounded to the register's resolution)
        assert 0.88 <= number(values, "power") / apparent_va <= 1.0
    if is_three_phase(register_map):
        assert sum(number(values, f"power_l{phase}") for phase in (1, 2, 3)) == values["power"]
    if RELAY_STATE in register_map.names:
        assert values[RELAY_STATE] is RelayState.CLOSED
    assert sim.values(now) == values


def test_an_integer_counter_shows_whole_counts_never_more_than_measured() -> None:
    sim = meter(DDS238, start_wh=12_345)  # the DDS238-2 counts 1/100 kWh
    values = served(load_register_map(DDS238), sim.words(T0))
    assert sim.energy_wh(T0) == 12_345
    assert values["energy_import"] == values["energy_total"] == 12_340


def test_energy_follows_the_load_shape_interval_by_interval() -> None:
    sim = meter("eastron_sdm120", start_wh=0)
    scale = meter_scale("MB000001", MeterKind.RESIDENTIAL, 7)
    expected_wh = 0
    for k in range(1, 97):
        end = T0 + k * INTERVAL
        expected_wh += interval_energy_wh("MB000001", MeterKind.RESIDENTIAL, end, 7, scale=scale)
        assert sim.energy_wh(end) == expected_wh
    assert 1_000 < expected_wh < 40_000  # a day of a residential customer


def test_power_is_the_rate_at_which_energy_grows() -> None:
    sim = meter("chint_ddsu666", start_wh=0)
    start = T0 + timedelta(minutes=1)
    before_wh = sim.energy_wh(start)
    power_w = sim.power_w(start)
    after_wh = sim.energy_wh(start + timedelta(minutes=12))  # inside the same 15-minute interval
    assert after_wh - before_wh == pytest.approx(power_w * 12 / 60, abs=1)


@settings(max_examples=50, deadline=None)
@given(steps=st.lists(st.integers(min_value=-3_600, max_value=7_200), min_size=1, max_size=40))
def test_energy_registers_never_go_back(steps: list[int]) -> None:
    sim = meter("chint_dtsu666")
    register_map = load_register_map("chint_dtsu666")
    now = T0
    last_truth_wh, last_read_wh = 0, 0
    for seconds in steps:
        now += timedelta(seconds=seconds)  # the clock may even step back: energy stays where it was
        truth_wh = sim.energy_wh(now)
        read_wh = served(register_map, sim.words(now))["energy_import"]
        assert isinstance(read_wh, int)
        assert truth_wh >= last_truth_wh
        assert read_wh >= last_read_wh
        last_truth_wh, last_read_wh = truth_wh, read_wh


# ---------------------------------------------------------------------------------------------------------------
# relay


def test_a_relay_write_opens_the_relay_and_energy_stands_still_until_it_closes() -> None:
    sim = meter(DDS238)
    register_map = load_register_map(DDS238)
    opened_at = T0 + timedelta(minutes=20)
    assert sim.write_relay(relay_write(register_map, RelayState.OPEN), opened_at) is RelayState.OPEN
    at_open_wh = sim.energy_wh(opened_at)
    later = opened_at + timedelta(hours=3)
    assert sim.relay(later) is RelayState.OPEN
    assert sim.energy_wh(later) == at_open_wh
    assert sim.power_w(later) == 0
    values = served(register_map, sim.words(later))
    assert values[RELAY_STATE] is RelayState.OPEN
    assert values["power"] == 0
    assert values["current"] == 0
    sim.write_relay(relay_write(register_map, RelayState.CLOSED), later)
    assert sim.relay(later) is RelayState.CLOSED
    assert sim.power_w(later) > 0
    assert sim.energy_wh(later + timedelta(hours=1)) > at_open_wh


def test_a_stuck_relay_takes_the_write_and_does_not_move() -> None:
    sim = meter(DDS238)
    register_map = load_register_map(DDS238)
    sim.set_stuck(True)
    sim.write_relay(relay_write(register_map, RelayState.OPEN), T0)
    assert sim.relay(T0 + timedelta(minutes=5)) is RelayState.CLOSED
    assert served(register_map, sim.words(T0))[RELAY_STATE] is RelayState.CLOSED
    sim.set_stuck(False)
    sim.write_relay(relay_write(register_map, RelayState.OPEN), T0 + timedelta(minutes=5))
    assert sim.relay(T0 + timedelta(minutes=5)) is RelayState.OPEN


def test_a_slow_relay_moves_after_its_delay_and_meters_until_then() -> None:
    sim = meter(DDS238, relay_delay_s=(60.0, 60.0))
    sim.write_relay(relay_write(load_register_map(DDS238), RelayState.OPEN), T0)
    assert sim.relay(T0 + timedelta(seconds=59)) is RelayState.CLOSED
    assert sim.relay(T0 + timedelta(seconds=60)) is RelayState.OPEN
    moved_wh = sim.energy_wh(T0 + timedelta(seconds=60))
    assert moved_wh > sim.spec.start_register_wh  # a minute of load before the contacts opened
    assert sim.energy_wh(T0 + timedelta(hours=1)) == moved_wh


def test_writes_that_are_not_the_relay_control_are_refused() -> None:
    sim = meter(DDS238)
    with pytest.raises(RelayControlError, match="neither opens nor closes"):
        sim.write_relay(RelayWrite(16, 0x001A, 2), T0)
    with pytest.raises(RelayControlError, match="is not the relay control"):
        sim.write_relay(RelayWrite(6, 0x001A, 0), T0)
    with pytest.raises(RelayControlError, match="no remote relay control"):
        meter("eastron_sdm120").write_relay(RelayWrite(16, 0x001A, 0), T0)
    assert sim.relay(T0) is RelayState.CLOSED


def test_a_refusing_relay_raises() -> None:
    sim = meter(DDS238)
    sim._relay.set_fault(RelayFault.REJECT)
    with pytest.raises(RelayRefusedError):
        sim.write_relay(relay_write(load_register_map(DDS238), RelayState.OPEN), T0)
    assert sim.relay(T0) is RelayState.CLOSED


def test_meter_specs_are_checked() -> None:
    with pytest.raises(ValueError, match=r"unit id is 1..247"):
        ModbusMeterSpec("MB1", 248, DDS238, MeterKind.RESIDENTIAL, 0)
    with pytest.raises(ValueError, match="does not match"):
        ModbusMeterSpec("MB 1", 1, DDS238, MeterKind.RESIDENTIAL, 0)
    spec = ModbusMeterSpec("MB1", 1, DDS238, MeterKind.RESIDENTIAL, 0)
    with pytest.raises(ValueError, match="not a eastron_sdm120"):
        ModbusMeterSim(spec, load_register_map("eastron_sdm120"), seed=0, started_at=T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        ModbusMeterSim(spec, load_register_map(DDS238), seed=0, started_at=datetime(2026, 1, 1))  # noqa: DTZ001


# ---------------------------------------------------------------------------------------------------------------
# the fleet: meters, registry rows


def test_the_fleet_assigns_unit_ids_and_models_round_robin() -> None:
    specs = plan_meters(["eastron_sdm120", DDS238, "chint_dtsu666"], 7, meter_id_prefix="MB", seed=3)
    assert [s.unit_id for s in specs] == [1, 2, 3, 4, 5, 6, 7]
    assert [s.model for s in specs] == ["eastron_sdm120", DDS238, "chint_dtsu666"] * 2 + ["eastron_sdm120"]
    assert [s.meter_id for s in specs][:2] == ["MB000001", "MB000002"]
    assert {s.kind for s in specs if s.model == "chint_dtsu666"} == {MeterKind.COMMERCIAL}
    assert {s.kind for s in specs if s.model != "chint_dtsu666"} == {MeterKind.RESIDENTIAL}
    assert all(0 <= s.start_register_wh < START_REGISTER_MAX_WH for s in specs)
    assert plan_meters(["eastron_sdm120", DDS238, "chint_dtsu666"], 7, seed=3) == specs  # reproducible
    assert plan_meters(["eastron_sdm120", DDS238, "chint_dtsu666"], 7, seed=4) != specs


def test_fleet_sizes_models_and_prefixes_are_checked() -> None:
    with pytest.raises(ValueError, match=r"1..247 meters"):
        plan_meters(["eastron_sdm120"], 0)
    with pytest.raises(ValueError, match=r"1..247 meters"):
        plan_meters(["eastron_sdm120"], 248)
    assert len(plan_meters(["eastron_sdm120"], 247)) == 247
    with pytest.raises(ValueError, match="non-empty list"):
        plan_meters([], 1)
    with pytest.raises(ValueError, match="non-empty list"):
        plan_meters("eastron_sdm120", 1)
    with pytest.raises(ValueError, match="no register map for model 'sdm999'"):
        plan_meters(["sdm999"], 1)
    with pytest.raises(ValueError, match="does not match"):
        plan_meters(["eastron_sdm120"], 1, meter_id_prefix="bad prefix")
    with pytest.raises(ValueError, match="port must be"):
        ModbusMeterFleet("127.0.0.1", 70_000, ["eastron_sdm120"], 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        ModbusMeterFleet("127.0.0.1", 502, ["eastron_sdm120"], 1, clock=lambda: datetime(2026, 1, 1))  # noqa: DTZ001


def test_registry_rows_import_as_modbus_meters(tmp_path: Path) -> None:
    fleet = ModbusMeterFleet("127.0.0.1", 5020, list(MODELS), 12, region="east", clock=lambda: T0)
    rows = fleet.registry_rows()
    assert list(rows[0]) == list(MODBUS_REGISTRY_COLUMNS)
    assert rows[2] == {
        "meter_id": "MB000003",
        "protocol": "modbus",
        "concentrator_id": "",
        "region": "east",
        "model": MODELS[2],
        "endpoint": "127.0.0.1:5020",
        "unit_id": "3",
        "address": "",
        "bus": "",
        "framing": "tcp",
    }
    path = tmp_path / "modbus.csv"
    assert fleet.write_registry_csv(path) == 12
    assert path.read_text(encoding="utf-8").splitlines()[0] == ",".join(MODBUS_REGISTRY_COLUMNS)
    parsed = read_registry_file(path)
    assert parsed.errors == []
    assert [(r.meter_id, r.protocol, r.model, r.endpoint, r.unit_id, r.bus, r.framing) for r in parsed.rows] == [
        (s.meter_id, "modbus", s.model, "127.0.0.1:5020", s.unit_id, None, "tcp") for s in fleet.specs
    ]


def test_an_rtu_fleets_rows_import_as_meters_behind_a_transparent_gateway(tmp_path: Path) -> None:
    fleet = ModbusMeterFleet("127.0.0.1", 4001, list(MODELS), 3, clock=lambda: T0, framing="rtu")
    assert {row["framing"] for row in fleet.registry_rows()} == {"rtu"}
    path = tmp_path / "rtu.csv"
    assert fleet.write_registry_csv(path) == 3
    parsed = read_registry_file(path)
    assert parsed.errors == []
    assert [(r.endpoint, r.unit_id, r.framing) for r in parsed.rows] == [
        ("127.0.0.1:4001", u, "rtu") for u in (1, 2, 3)
    ]
    with pytest.raises(ValueError, match="framing must be one of tcp, rtu, got 'ascii'"):
        ModbusMeterFleet("127.0.0.1", 4001, list(MODELS), 3, clock=lambda: T0, framing="ascii")


def test_port_0_has_no_endpoint_until_the_server_listens() -> None:
    fleet = ModbusMeterFleet("127.0.0.1", 0, ["eastron_sdm120"], 1, clock=lambda: T0)
    with pytest.raises(RuntimeError, match="start it first"):
        fleet.registry_rows()


def test_the_fleet_keeps_the_truth_per_unit() -> None:
    now = [T0]
    fleet = ModbusMeterFleet("127.0.0.1", 5020, [DDS238], 2, clock=lambda: now[0])
    start_wh = fleet.energy_wh(1)
    assert start_wh == fleet.spec(1).start_register_wh
    now[0] += timedelta(hours=2)
    assert fleet.energy_wh(1) > start_wh
    assert fleet.relay(2) is RelayState.CLOSED
    assert fleet.values(2)[RELAY_STATE] is RelayState.CLOSED
    with pytest.raises(KeyError, match="no meter at unit id 3"):
        fleet.energy_wh(3)
    with pytest.raises(TypeError, match="not a Modbus fault"):
        fleet.set_fault(1, "silent")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# the blocks pymodbus serves, faults


def test_each_model_serves_the_span_of_its_registers_and_writes_only_its_relay_control() -> None:
    _, _, holding, inputs = register_blocks(load_register_map("eastron_sdm120"))
    assert [(d.address, d.count, d.readonly) for d in inputs] == [(0x0000, 0x0158, True)]
    assert [d.address for d in holding] == [0]  # one invalid address: function 3 is refused
    _, _, holding, inputs = register_blocks(load_register_map(DDS238))
    assert [(d.address, d.count, d.readonly) for d in holding] == [(0x0000, 0x001A, True), (0x001A, 1, False)]
    _, _, holding, _ = register_blocks(load_register_map("chint_dtsu666"))
    assert [(d.address, d.address + d.count) for d in holding] == [(0x101E, 0x2046)]
    coils, _, _, inputs = register_blocks(parse_register_map(COIL_MAP, origin="t.toml"))
    assert [(d.address, d.values) for d in coils] == [(0x0021, [False])]
    assert [(d.address, d.count) for d in inputs] == [(0x0000, 0x0011)]


def test_every_planned_read_lies_in_the_served_span() -> None:
    for model in MODELS:
        register_map = load_register_map(model)
        _, _, holding, inputs = register_blocks(register_map)
        for request in plan_reads(register_map):
            block = holding if request.function == 3 else inputs
            first, end = block[0].address, block[-1].address + block[-1].count
            assert first <= request.address
            assert request.end <= end, (model, request)
            assert request.count <= register_map.max_registers_per_read


def test_fault_parameters_are_checked() -> None:
    assert ExceptionAnswer().code == ExceptionCode.ILLEGAL_DATA_ADDRESS
    assert ExceptionAnswer(ExceptionCode.SERVER_DEVICE_FAILURE, frozenset({16})).applies_to(16)
    assert not ExceptionAnswer(ExceptionCode.SERVER_DEVICE_FAILURE, frozenset({16})).applies_to(3)
    assert ExceptionAnswer(6).applies_to(3)
    with pytest.raises(ValueError, match=r"exception code is 1..255"):
        ExceptionAnswer(0)
    with pytest.raises(ValueError, match=r"function codes are 1..127"):
        ExceptionAnswer(2, frozenset({200}))
    with pytest.raises(ValueError, match=r"0..3600 seconds"):
        SlowAnswer(-1.0)
    with pytest.raises(ValueError, match=r"0..3600 seconds"):
        SlowAnswer(float("nan"))
