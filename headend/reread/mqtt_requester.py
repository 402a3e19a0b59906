"""`read_readings` commands to MQTT meters and concentrators, over a broker connection opened on first use."""

from __future__ import annotations

import uuid
from datetime import datetime
from types import TracebackType

from headend.mqtt.reread_sender import RereadSender, RereadSendError
from headend.reread.runner import RequestError
from headend.settings import Settings
from protocols.reread_codec import ReadReadingsCommand


class LazyMqttRequester:
    """A ReadingsRequester that connects to the broker only when a task has MQTT meters to ask."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sender: RereadSender | None = None

    def __enter__(self) -> LazyMqttRequester:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect, if connected."""
        if self._sender is not None:
            self._sender.__exit__(None, None, None)
            self._sender = None

    def request(
        self,
        command_id: str,
        meter_id: str | None,
        concentrator_id: str | None,
        from_at: datetime,
        to_at: datetime,
        issued_at: datetime,
        expires_at: datetime,
    ) -> None:
        """Hand one `read_readings` command to the broker, or raise RequestError."""
        command = ReadReadingsCommand(command_id, meter_id, from_at, to_at, issued_at, expires_at)
        try:
            if self._sender is None:
                sender = RereadSender(self._settings, f"headend-reread-{uuid.uuid4().hex[:8]}")
                sender.__enter__()
                self._sender = sender
            self._sender.send(command, concentrator_id)
        except RereadSendError as exc:
            raise RequestError(str(exc)) from None
