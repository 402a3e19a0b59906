"""The registry CSV of simulated polled meters (Modbus, DL/T 645), as `headend meters import` reads it."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from os import PathLike

POLLED_REGISTRY_COLUMNS = (
    "meter_id",
    "protocol",
    "concentrator_id",
    "region",
    "model",
    "endpoint",
    "unit_id",
    "address",
    "bus",
)
# a Modbus meter's rows say, besides, how its requests are framed: tcp or rtu
MODBUS_REGISTRY_COLUMNS = (*POLLED_REGISTRY_COLUMNS, "framing")


def write_polled_registry_csv(
    path: str | PathLike[str], rows: Sequence[dict[str, str]], columns: Sequence[str] = POLLED_REGISTRY_COLUMNS
) -> int:
    """Write `rows` (with `columns`) under their header to `path`; return the number of meters."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)
