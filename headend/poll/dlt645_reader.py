"""Read a DL/T 645-2007 meter behind a serial-to-TCP gateway into the typed readings MQTT gives."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from headend.poll.failures import FailureKind, PollError
from headend.poll.targets import Endpoint, PolledMeter
from protocols.dlt645.client import Dlt645Client, Dlt645Connection, NoAnswer, NoConnection
from protocols.dlt645.errors import MeterErrorResponse
from protocols.dlt645.identifiers import (
    FORWARD_ACTIVE_TOTAL,
    PHASE_A_VOLTAGE,
    REVERSE_ACTIVE_TOTAL,
    STATUS_WORD_3,
    TOTAL_ACTIVE_POWER,
    ActivePower,
    DataIdentifier,
    Energy,
    StatusWord3,
    Value,
    Voltage,
)
from protocols.errors import ProtocolError
from protocols.readings import MeterReading

T = TypeVar("T")
# what a reading holds beside the forward register, each read only when the meter has it (an abnormal answer for
# "no data requested" leaves it out of the reading)
OPTIONAL = (REVERSE_ACTIVE_TOTAL, TOTAL_ACTIVE_POWER, PHASE_A_VOLTAGE, STATUS_WORD_3)


class Dlt645Link:
    """One connection to a gateway's bus, opened on first use and again after a failure."""

    def __init__(self, endpoint: Endpoint, timeout_s: float) -> None:
        self.endpoint = endpoint
        self._connection = Dlt645Connection(endpoint.host, endpoint.port, timeout_s=timeout_s)

    async def close(self) -> None:
        """Close the connection, if open."""
        await self._connection.close()

    async def ask(self, meter: PolledMeter, operation: Callable[[Dlt645Client], Awaitable[T]], what: str) -> T:
        """Run one exchange; PollError for no answer, no connection, a corrupt or wrong answer, a refusal."""
        try:
            return await self._connection.run(operation)
        except NoAnswer:
            raise PollError(
                FailureKind.TIMEOUT, f"no answer from {meter.address} to {what} within {self._connection.timeout_s} s"
            ) from None
        except NoConnection as exc:
            raise PollError(FailureKind.NO_CONNECTION, str(exc)) from None
        except MeterErrorResponse as exc:
            raise PollError(FailureKind.METER_ERROR, exc.reason) from None
        except ProtocolError as exc:
            raise PollError(FailureKind.BAD_FRAME, f"{what} of {meter.address}: {exc.reason}") from None

    async def value(self, meter: PolledMeter, identifier: DataIdentifier) -> Value:
        """Read one data identifier of the meter; PollError as `ask`."""
        address = meter.address
        assert address is not None
        return await self.ask(meter, lambda client: client.read_value(address, identifier), f"read {identifier}")

    async def optional_value(self, meter: PolledMeter, identifier: DataIdentifier) -> Value | None:
        """Read one data identifier; None when the meter answers that it has no such data."""
        try:
            return await self.value(meter, identifier)
        except PollError as exc:
            if exc.kind is FailureKind.METER_ERROR:
                return None
            raise

    async def read_meter(self, meter: PolledMeter, stamp: datetime) -> MeterReading:
        """Read the meter's forward and reverse active energy, power, voltage and relay, stamped `stamp`."""
        forward = await self.value(meter, FORWARD_ACTIVE_TOTAL)
        reverse, power, voltage, status = [await self.optional_value(meter, identifier) for identifier in OPTIONAL]
        if not isinstance(forward, Energy):
            raise PollError(FailureKind.BAD_VALUE, f"forward active energy of {meter.address} is {forward!r}")
        return MeterReading(
            meter_id=meter.meter_id,
            ts=stamp,
            energy_import_wh=forward.energy_wh,
            energy_export_wh=reverse.energy_wh if isinstance(reverse, Energy) else None,
            power_w=power.power_w if isinstance(power, ActivePower) else None,
            voltage_v=voltage.voltage_v if isinstance(voltage, Voltage) else None,
            relay=status.relay if isinstance(status, StatusWord3) else None,
        )

    async def connect(self) -> None:
        """Open the connection to the gateway unless it is open; PollError (no connection) when it cannot be."""
        try:
            await self._connection.client()
        except NoConnection as exc:
            raise PollError(FailureKind.NO_CONNECTION, str(exc)) from None
