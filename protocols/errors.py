"""Typed errors raised by the protocol codecs."""


class ProtocolError(ValueError):
    """A message that does not follow the wire contract; `reason` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TopicError(ProtocolError):
    """A topic that is not part of the MQTT contract."""


class PayloadError(ProtocolError):
    """A payload that cannot be decoded into the message its topic promises."""
