"""The polled meters of the registry, grouped by the serial bus (or Modbus TCP device) that reaches them."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import psycopg

# how a Modbus meter's requests travel: Modbus TCP (MBAP header), or RTU frames (unit, PDU, CRC-16) through a
# transparent serial-to-TCP gateway; a Modbus meter registered without one (NULL) is tcp
FRAMINGS = ("tcp", "rtu")
DEFAULT_FRAMING = "tcp"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where requests go: a meter or its serial-to-TCP gateway, and the bus behind it ('' for the only one)."""

    host: str
    port: int
    bus: str = ""

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" + (f" bus {self.bus}" if self.bus else "")


@dataclass(frozen=True, slots=True)
class PolledMeter:
    """An active meter the head-end polls."""

    meter_id: str
    protocol: str  # modbus or dlt645
    endpoint: Endpoint
    model: str | None
    unit_id: int | None = None  # Modbus
    address: str | None = None  # DL/T 645, 12 digits
    framing: str | None = None  # Modbus: tcp or rtu, tcp when not given; None for DL/T 645

    def __post_init__(self) -> None:
        assert (self.protocol == "modbus") == (self.unit_id is not None)
        assert (self.protocol == "dlt645") == (self.address is not None)
        if self.protocol == "modbus" and self.framing is None:
            object.__setattr__(self, "framing", DEFAULT_FRAMING)  # frozen: set once, here
        assert self.framing in FRAMINGS if self.protocol == "modbus" else self.framing is None, self

    @property
    def source(self) -> str:
        """The readings' source: protocol, endpoint and the meter's place on it."""
        where = f"unit {self.unit_id}" if self.unit_id is not None else f"address {self.address}"
        return f"{self.protocol}:{self.endpoint} {where}"


def parse_endpoint(text: str, bus: str | None) -> Endpoint:
    """The Endpoint of a registry's `host:port` (the host bracketed when IPv6) and bus."""
    host, _, port = text.rpartition(":")
    return Endpoint(host.strip("[]"), int(port), bus or "")


# the protocols the poller has a reader for
POLLED_PROTOCOLS = ("modbus", "dlt645")


def load_polled_meters(conn: psycopg.Connection[Any], meter_ids: list[str] | None = None) -> list[PolledMeter]:
    """The active meters the poller reads (or those of `meter_ids`), in a stable order."""
    rows = conn.execute(
        "SELECT meter_id, protocol, endpoint, bus, model, unit_id, address, framing FROM meters "
        "WHERE status = 'active' AND protocol = ANY(%(protocols)s) AND endpoint IS NOT NULL "
        "AND (%(ids)s::text[] IS NULL OR meter_id = ANY(%(ids)s)) ORDER BY endpoint, bus, meter_id",
        {"ids": meter_ids, "protocols": list(POLLED_PROTOCOLS)},
    ).fetchall()
    return [
        PolledMeter(meter_id, protocol, parse_endpoint(endpoint, bus), model, unit_id, address, framing)
        for meter_id, protocol, endpoint, bus, model, unit_id, address, framing in rows
    ]


def by_bus(meters: list[PolledMeter]) -> dict[Endpoint, list[PolledMeter]]:
    """The meters grouped by the endpoint and bus that reaches them, whatever their protocol or framing: one request at
    a time on each."""
    buses: dict[Endpoint, list[PolledMeter]] = defaultdict(list)
    for meter in meters:
        buses[meter.endpoint].append(meter)
    return dict(buses)
