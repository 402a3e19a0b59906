"""A simulated fleet: meters (direct MQTT or behind concentrators) and concentrators, built from a seed."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field, replace
from datetime import date
from os import PathLike
from types import MappingProxyType
from typing import Literal

from protocols.readings import is_valid_id
from simulators.load_shapes import MeterKind

REGISTRY_HEADER = ("meter_id", "protocol", "concentrator_id", "region", "model", "multiplier")
# Single-phase (DDZY) and three-phase (DTZY) prepaid smart meters as sold to Chinese grid companies.
MODELS: MappingProxyType[MeterKind, tuple[str, ...]] = MappingProxyType(
    {
        MeterKind.RESIDENTIAL: ("DDZY1710-Z", "DDZY71-Z", "DDZY866-Z"),
        MeterKind.COMMERCIAL: ("DTZY1710-Z", "DTZY341-Z"),
    }
)
# Register a meter already shows when the simulation starts: years of use, not a new meter.
START_REGISTER_MAX_WH: MappingProxyType[MeterKind, int] = MappingProxyType(
    {MeterKind.RESIDENTIAL: 40_000_000, MeterKind.COMMERCIAL: 400_000_000}
)


@dataclass(frozen=True, slots=True)
class SimMeter:
    """One simulated meter; `concentrator_id` is None when it publishes over MQTT itself."""

    meter_id: str
    concentrator_id: str | None
    region: str
    model: str
    kind: MeterKind
    start_register_wh: int
    protocol: Literal["mqtt"] = "mqtt"
    multiplier: int = 1
    # "allowed" (合闸允许): a reconnect only arms the relay; it closes when the customer presses the button
    reconnect_mode: Literal["direct", "allowed"] = "direct"

    def __post_init__(self) -> None:
        assert is_valid_id(self.meter_id), self.meter_id
        assert self.concentrator_id is None or is_valid_id(self.concentrator_id)
        assert self.start_register_wh >= 0
        assert self.multiplier >= 1
        assert self.reconnect_mode in ("direct", "allowed"), self.reconnect_mode


@dataclass(frozen=True, slots=True)
class SimConcentrator:
    """One simulated data concentrator (DCU) that forwards the readings of its meters."""

    dcu_id: str
    region: str

    def __post_init__(self) -> None:
        assert is_valid_id(self.dcu_id), self.dcu_id


@dataclass(frozen=True, slots=True)
class Fleet:
    """Meters and concentrators of one simulation, in a stable order."""

    meters: tuple[SimMeter, ...]
    concentrators: tuple[SimConcentrator, ...]
    seed: int
    _by_dcu: MappingProxyType[str, tuple[SimMeter, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = [m.meter_id for m in self.meters] + [c.dcu_id for c in self.concentrators]
        assert len(set(ids)) == len(ids), "meter and concentrator ids must be unique"
        groups: dict[str, list[SimMeter]] = {c.dcu_id: [] for c in self.concentrators}
        for meter in self.meters:
            if meter.concentrator_id is not None:
                assert meter.concentrator_id in groups, f"unknown concentrator {meter.concentrator_id}"
                groups[meter.concentrator_id].append(meter)
        object.__setattr__(self, "_by_dcu", MappingProxyType({k: tuple(v) for k, v in groups.items()}))

    @property
    def direct_meters(self) -> tuple[SimMeter, ...]:
        """Meters that publish on their own MQTT topic."""
        return tuple(m for m in self.meters if m.concentrator_id is None)

    def meters_of(self, dcu_id: str) -> tuple[SimMeter, ...]:
        """Meters behind concentrator `dcu_id`."""
        return self._by_dcu[dcu_id]


def build_fleet(
    meters: int,
    concentrators: int,
    regions: list[str],
    seed: int,
    direct_share: float = 0.2,
    *,
    id_prefix: str = "SIM",
    commercial_share: float = 0.15,
    reconnect_allowed_fraction: float = 0.0,
) -> Fleet:
    """A deterministic fleet: `direct_share` of the meters direct, the rest spread over the concentrators.

    With no concentrators every meter is direct. Meters behind a concentrator share its region.
    `reconnect_allowed_fraction` of the meters only allow reconnection and need the customer's button press.
    """
    if meters < 1:
        raise ValueError(f"meters must be at least 1, got {meters}")
    if concentrators < 0:
        raise ValueError(f"concentrators must not be negative, got {concentrators}")
    if not regions or any(not r.strip() for r in regions):
        raise ValueError("regions must be a non-empty list of non-blank names")
    if not 0.0 <= direct_share <= 1.0:
        raise ValueError(f"direct_share must be within 0..1, got {direct_share}")
    if not 0.0 <= commercial_share <= 1.0:
        raise ValueError(f"commercial_share must be within 0..1, got {commercial_share}")
    if not 0.0 <= reconnect_allowed_fraction <= 1.0:
        raise ValueError(f"reconnect_allowed_fraction must be within 0..1, got {reconnect_allowed_fraction}")
    width = max(6, len(str(meters)))
    meter_ids = [f"{id_prefix}{i:0{width}d}" for i in range(1, meters + 1)]
    dcu_ids = [f"{id_prefix}DCU{j:03d}" for j in range(1, concentrators + 1)]
    for sample in meter_ids[-1:] + dcu_ids[-1:]:
        if not is_valid_id(sample):
            raise ValueError(f"id {sample!r} from prefix {id_prefix!r} does not match [A-Za-z0-9_-]{{1,32}}")

    rng = random.Random(f"fleet:{seed}")  # noqa: S311 - reproducible simulation, not security
    dcus = tuple(SimConcentrator(dcu_id, regions[j % len(regions)]) for j, dcu_id in enumerate(dcu_ids))
    direct_count = meters if concentrators == 0 else round(direct_share * meters)
    order = list(range(meters))
    rng.shuffle(order)
    direct = set(order[:direct_count])
    result: list[SimMeter] = []
    behind = 0
    for i, meter_id in enumerate(meter_ids):
        kind = MeterKind.COMMERCIAL if rng.random() < commercial_share else MeterKind.RESIDENTIAL
        model = rng.choice(MODELS[kind])
        start_wh = rng.randrange(START_REGISTER_MAX_WH[kind])
        if i in direct:
            dcu_id, region = None, rng.choice(regions)
        else:
            dcu = dcus[behind % len(dcus)]
            behind += 1
            dcu_id, region = dcu.dcu_id, dcu.region
        result.append(SimMeter(meter_id, dcu_id, region, model, kind, start_wh))
    # a stream of its own, so that the fleet of a seed is the same with or without reconnect-allowed meters
    allowed_rng = random.Random(f"reconnect-allowed:{seed}")  # noqa: S311 - reproducible simulation, not security
    allowed = set(allowed_rng.sample(range(meters), round(reconnect_allowed_fraction * meters)))
    result = [replace(m, reconnect_mode="allowed") if i in allowed else m for i, m in enumerate(result)]
    return Fleet(tuple(result), dcus, seed)


def write_registry_csv(fleet: Fleet, path: str | PathLike[str], *, installed_on: date | None = None) -> int:
    """Write the meter registry CSV that `headend meters import` reads; return the number of meters.

    `installed_on` adds that column, the local day from which collection reports expect the meters.
    A `reconnect_mode` column ("direct" or "allowed") follows when any meter only allows reconnection.
    """
    with_mode = any(m.reconnect_mode != "direct" for m in fleet.meters)
    extra = [] if installed_on is None else [installed_on.isoformat()]
    header = REGISTRY_HEADER + (() if installed_on is None else ("installed_on",))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header + (("reconnect_mode",) if with_mode else ()))
        for m in fleet.meters:
            mode = [m.reconnect_mode] if with_mode else []
            row = [m.meter_id, m.protocol, m.concentrator_id or "", m.region, m.model, m.multiplier, *extra, *mode]
            writer.writerow(row)
    return len(fleet.meters)
