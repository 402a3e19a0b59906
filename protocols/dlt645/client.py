"""A thin asyncio DL/T 645-2007 master: one request, one answer, over a stream to a serial-to-TCP gateway.

The gateway passes bytes to and from one RS-485 bus. `Dlt645Client` writes a request frame and reads
exactly one answer frame (FE wake-up bytes and noise before the 68 skipped, `frame_length` saying when it
is whole) within a per-request timeout. Its outcomes are typed: the decoded answer, or `NoAnswer`,
`NoConnection`, the codec's `FrameError` / `ChecksumError` / `MessageError`, `UnexpectedAnswer` (another
function, identifier or a `WrongAddress`) and `MeterErrorResponse` for an abnormal answer.

One request at a time per stream: the caller serialises a bus, and the client refuses concurrent use.
`Dlt645Connection` opens a TCP connection, reuses it and opens a new one after an error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Protocol, TypeVar
from zoneinfo import ZoneInfo

from protocols.dlt645.errors import FrameError, Function, MessageError, MeterErrorResponse
from protocols.dlt645.frame import (
    BROADCAST,
    MAX_WAKEUP_ON_ENCODE,
    START,
    WAKEUP,
    WILDCARD_BYTE,
    Address,
    Frame,
    decode_frame,
    frame_length,
)
from protocols.dlt645.identifiers import DataIdentifier, Value, decode_value
from protocols.dlt645.messages import (
    BroadcastTime,
    ErrorResponse,
    ReadAddress,
    ReadAddressResponse,
    ReadData,
    ReadDataResponse,
    ReadFollowUp,
    ReadFollowUpResponse,
    RelayCommand,
    RelayControl,
    RelayControlResponse,
    Request,
    Response,
    encode_message,
    from_frame,
    raise_for_error,
)

DEFAULT_TIMEOUT_S = 2.0
# a meter answers within 20-500 ms of the request's last byte; a 200-byte answer takes about 1 s at 2400 baud
DEFAULT_PASSWORD_LEVEL = 0x02
# a read answer never needs more: 64 energy registers take two frames; more is a meter talking forever
MAX_FOLLOW_UP_FRAMES = 32
READ_CHUNK = 4096
SHANGHAI = ZoneInfo("Asia/Shanghai")

T = TypeVar("T")
_ANSWER_TYPES = (ReadDataResponse, ReadFollowUpResponse, ErrorResponse, ReadAddressResponse, RelayControlResponse)


class LinkError(Exception):
    """An exchange that did not complete on the link: no answer in time, or no connection."""


class NoAnswer(LinkError):  # noqa: N818 - named for what happened on the bus
    """No whole answer frame arrived within the request's timeout."""


class NoConnection(LinkError):  # noqa: N818 - named for what happened on the link
    """The gateway could not be reached, or the connection to it closed or failed."""


class UnexpectedAnswer(MessageError):  # noqa: N818 - named for the answer it reports
    """A well-formed answer that does not answer the request: another function, identifier or frame."""


class WrongAddress(UnexpectedAnswer):
    """An answer from another meter than the one asked."""


class StreamReader(Protocol):
    """What the client reads answers from (an `asyncio.StreamReader`)."""

    async def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes; empty at the end of the stream."""
        ...


class StreamWriter(Protocol):
    """What the client writes requests to (an `asyncio.StreamWriter`)."""

    def write(self, data: bytes) -> None:
        """Queue `data` for sending."""
        ...

    async def drain(self) -> None:
        """Wait until the queued bytes may be sent."""
        ...


@dataclass(frozen=True, slots=True)
class DataAnswer:
    """The data a meter returned for one identifier, joined across its follow-up frames."""

    address: Address
    identifier: DataIdentifier
    data: bytes
    frames: int = 1

    def value(self) -> Value:
        """The typed value of the data (a ProtocolError when it does not fit the identifier)."""
        return decode_value(self.identifier, self.data)


def as_address(address: Address | str) -> Address:
    """`address` as an Address; a string is the 12 digits as printed on the nameplate."""
    return address if isinstance(address, Address) else Address(address)


def wall_clock(moment: datetime, zone: tzinfo) -> datetime:
    """The meter's wall-clock time (naive, whole seconds) of an aware `moment` in the meter's zone."""
    assert moment.utcoffset() is not None, "pass an aware datetime; the client converts it to the meter's zone"
    # the wire carries the meter's wall clock without a zone: naive by design
    return moment.astimezone(zone).replace(tzinfo=None, microsecond=0)


def _function_of(request: Request) -> Function:
    match request:
        case ReadData():
            return Function.READ_DATA
        case ReadFollowUp():
            return Function.READ_FOLLOW_UP
        case ReadAddress():
            return Function.READ_ADDRESS
        case BroadcastTime():
            return Function.BROADCAST_TIME
        case RelayControl():
            return Function.RELAY_CONTROL


def _answer_function(answer: Response) -> Function:
    match answer:
        case ReadDataResponse():
            return Function.READ_DATA
        case ReadFollowUpResponse():
            return Function.READ_FOLLOW_UP
        case ReadAddressResponse():
            return Function.READ_ADDRESS
        case RelayControlResponse():
            return Function.RELAY_CONTROL
        case ErrorResponse(function=function):
            return function


def address_matches(asked: Address, answered: Address) -> bool:
    """Whether a meter at `answered` is one that a request to `asked` (perhaps with AA wildcards) reaches."""
    return all(a in (WILDCARD_BYTE, b) for a, b in zip(asked.to_wire(), answered.to_wire(), strict=True))


def check_answer(request: Request, answer: Response) -> None:
    """Raise UnexpectedAnswer (or WrongAddress) unless `answer` answers `request`."""
    function = _function_of(request)
    if _answer_function(answer) != function:
        raise UnexpectedAnswer(f"{type(answer).__name__} from {answer.address} does not answer {function.name.lower()}")
    if not address_matches(request.address, answer.address):
        raise WrongAddress(f"meter {answer.address} answered a request to {request.address}")
    match request, answer:
        case (ReadData(identifier=asked), ReadDataResponse(identifier=got)) if got != asked:
            raise UnexpectedAnswer(f"meter {answer.address} answered identifier {got} to a read of {asked}")
        case (ReadFollowUp(identifier=asked, seq=seq), ReadFollowUpResponse(identifier=got, seq=got_seq)) if (
            got != asked or got_seq != seq
        ):
            raise UnexpectedAnswer(
                f"meter {answer.address} answered {got} frame {got_seq} to a follow-up read of {asked} frame {seq}"
            )
        case _:
            return


class Dlt645Client:
    """A DL/T 645-2007 master on one stream: one request, then exactly one answer, at a time."""

    def __init__(
        self,
        reader: StreamReader,
        writer: StreamWriter,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        wakeup: int = MAX_WAKEUP_ON_ENCODE,
        zone: tzinfo = SHANGHAI,
    ) -> None:
        assert timeout_s > 0, timeout_s
        assert 0 <= wakeup <= MAX_WAKEUP_ON_ENCODE, wakeup
        self._reader = reader
        self._writer = writer
        self.timeout_s = timeout_s
        self._wakeup = wakeup
        self._zone = zone
        self._buffer = bytearray()
        self._busy = False
        self.noise_bytes = 0  # bytes skipped before answers: neither wake-up bytes nor part of a frame

    # --- one exchange ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        if self._busy:
            raise RuntimeError("Dlt645Client used concurrently: one request at a time per stream (per bus)")
        self._busy = True
        try:
            yield
        finally:
            self._busy = False

    async def _write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as exc:
            raise NoConnection(f"cannot send to the gateway: {exc or type(exc).__name__}") from exc

    async def send(self, request: Request) -> None:
        """Send `request` and expect no answer (broadcast time)."""
        with self._exclusive():
            await self._write(encode_message(request, wakeup=self._wakeup))

    async def exchange(self, request: Request, *, timeout_s: float | None = None) -> Response:
        """Send `request` and return the one answer to it; raises the typed errors of this module and the codec."""
        with self._exclusive():
            return await self._exchange(request, timeout_s)

    async def _exchange(self, request: Request, timeout_s: float | None) -> Response:
        # whatever was left of an earlier exchange answers nothing asked now
        self._buffer.clear()
        await self._write(encode_message(request, wakeup=self._wakeup))
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(limit):
                answer = await self._read_answer()
        except TimeoutError:
            pending = f" ({len(self._buffer)} bytes of an unfinished frame)" if self._buffer else ""
            raise NoAnswer(f"no answer from {request.address} within {limit} s{pending}") from None
        check_answer(request, answer)
        raise_for_error(answer)
        return answer

    async def _read_answer(self) -> Response:
        while True:
            frame = await self._read_frame()
            if not frame.control.from_meter:
                # a request on the line (a gateway echoing what it sent, another master): not an answer
                continue
            message = from_frame(frame)
            # a frame from a meter decodes to an answer or raises
            assert isinstance(message, _ANSWER_TYPES), message
            return message

    async def _read_frame(self) -> Frame:
        while True:
            frame = self._frame_in_buffer()
            if frame is not None:
                return frame
            try:
                chunk = await self._reader.read(READ_CHUNK)
            except OSError as exc:
                raise NoConnection(f"connection to the gateway failed: {exc or type(exc).__name__}") from exc
            if not chunk:
                raise NoConnection("the gateway closed the connection")
            self._buffer += chunk

    def _frame_in_buffer(self) -> Frame | None:
        """The first whole frame of the buffer, removed from it; None while there is none yet."""
        buffer = self._buffer
        while buffer:
            start = buffer.find(START)
            skipped = len(buffer) if start < 0 else start
            self.noise_bytes += sum(1 for byte in buffer[:skipped] if byte != WAKEUP)
            del buffer[:skipped]
            if not buffer:
                return None
            try:
                length = frame_length(bytes(buffer))
            except FrameError:
                # that 68 began no frame: look for the next one
                self.noise_bytes += 1
                del buffer[:1]
                continue
            if length is None:
                return None
            data = bytes(buffer[:length])
            del buffer[:length]
            return decode_frame(data)  # FrameError, ChecksumError: a corrupt answer, the caller's to judge
        return None

    # --- the functions --------------------------------------------------------------------

    async def read_data(
        self, address: Address | str, identifier: DataIdentifier, *, timeout_s: float | None = None
    ) -> DataAnswer:
        """Read one identifier of a meter, following its follow-up frames (0x12) to the last."""
        with self._exclusive():
            return await self._read_data(as_address(address), identifier, timeout_s)

    async def _read_data(self, address: Address, identifier: DataIdentifier, timeout_s: float | None) -> DataAnswer:
        first = await self._exchange(ReadData(address, identifier), timeout_s)
        assert isinstance(first, ReadDataResponse)
        data = bytearray(first.data)
        more, frames = first.follow_up, 1
        while more:
            if frames > MAX_FOLLOW_UP_FRAMES:
                raise UnexpectedAnswer(
                    f"meter {first.address} announces more than {MAX_FOLLOW_UP_FRAMES} follow-up frames"
                    f" for {identifier}"
                )
            # the meter that answered, by its own address, even when the first read used a wildcard
            answer = await self._exchange(ReadFollowUp(first.address, identifier, frames), timeout_s)
            assert isinstance(answer, ReadFollowUpResponse)
            data += answer.data
            more, frames = answer.follow_up, frames + 1
        return DataAnswer(first.address, identifier, bytes(data), frames)

    async def read_value(
        self, address: Address | str, identifier: DataIdentifier, *, timeout_s: float | None = None
    ) -> Value:
        """Read one identifier and decode its typed value."""
        return (await self.read_data(address, identifier, timeout_s=timeout_s)).value()

    async def read_address(self, *, timeout_s: float | None = None) -> Address:
        """The address of the one meter on the bus (read address to AAAAAAAAAAAA)."""
        answer = await self.exchange(ReadAddress(), timeout_s=timeout_s)
        assert isinstance(answer, ReadAddressResponse)
        return answer.address

    async def broadcast_time(self, moment: datetime, *, address: Address | str = BROADCAST) -> None:
        """Set the meters' clocks to the aware `moment` in their zone (broadcast time 0x08); no meter answers."""
        await self.send(BroadcastTime(wall_clock(moment, self._zone), as_address(address)))

    async def relay_control(
        self,
        address: Address | str,
        command: RelayCommand,
        password: str,
        operator_code: str,
        valid_until: datetime,
        *,
        password_level: int = DEFAULT_PASSWORD_LEVEL,
        timeout_s: float | None = None,
    ) -> None:
        """Send a relay command (0x1C) valid until the aware `valid_until`; returns when the meter accepted it."""
        request = RelayControl(
            address=as_address(address),
            command=command,
            valid_until=wall_clock(valid_until, self._zone),
            password_level=password_level,
            password=password,
            operator_code=operator_code,
        )
        answer = await self.exchange(request, timeout_s=timeout_s)
        assert isinstance(answer, RelayControlResponse)


class Dlt645Connection:
    """A TCP connection to a serial-to-TCP gateway: opened on first use, reused, opened again after an error.

    Not for concurrent use: one request at a time, as on the bus behind it.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float | None = None,
        wakeup: int = MAX_WAKEUP_ON_ENCODE,
        zone: tzinfo = SHANGHAI,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.connect_timeout_s = timeout_s if connect_timeout_s is None else connect_timeout_s
        self._wakeup = wakeup
        self._zone = zone
        self._writer: asyncio.StreamWriter | None = None
        self._client: Dlt645Client | None = None
        self.opened = 0  # connections opened so far

    @property
    def endpoint(self) -> str:
        """host:port of the gateway."""
        return f"{self.host}:{self.port}"

    @property
    def is_open(self) -> bool:
        """Whether a connection is open now."""
        return self._client is not None

    async def client(self) -> Dlt645Client:
        """The client on the open connection, opening one first when there is none."""
        if self._client is not None:
            return self._client
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_connection(self.host, self.port)
        except TimeoutError:
            raise NoConnection(f"cannot connect to {self.endpoint}: timed out") from None
        except OSError as exc:
            raise NoConnection(f"cannot connect to {self.endpoint}: {exc.strerror or exc}") from None
        self.opened += 1
        self._writer = writer
        self._client = Dlt645Client(reader, writer, timeout_s=self.timeout_s, wakeup=self._wakeup, zone=self._zone)
        return self._client

    async def close(self) -> None:
        """Close the connection, if open."""
        writer, self._writer, self._client = self._writer, None, None
        if writer is None:
            return
        writer.close()
        with contextlib.suppress(OSError):  # closed already, by the other side
            await writer.wait_closed()

    async def run(self, operation: Callable[[Dlt645Client], Awaitable[T]]) -> T:
        """Run `operation` on the client; after any error but a meter's abnormal answer the connection is closed."""
        client = await self.client()
        try:
            return await operation(client)
        except MeterErrorResponse:
            raise  # a whole, expected answer: the stream is still in step
        except BaseException:
            # a late or partial answer could be taken for the next request's: start again on a new connection
            await self.close()
            raise

    async def read_data(
        self, address: Address | str, identifier: DataIdentifier, *, timeout_s: float | None = None
    ) -> DataAnswer:
        """`Dlt645Client.read_data` on this connection."""
        return await self.run(lambda client: client.read_data(address, identifier, timeout_s=timeout_s))

    async def read_value(
        self, address: Address | str, identifier: DataIdentifier, *, timeout_s: float | None = None
    ) -> Value:
        """`Dlt645Client.read_value` on this connection."""
        return await self.run(lambda client: client.read_value(address, identifier, timeout_s=timeout_s))

    async def read_address(self, *, timeout_s: float | None = None) -> Address:
        """`Dlt645Client.read_address` on this connection."""
        return await self.run(lambda client: client.read_address(timeout_s=timeout_s))

    async def broadcast_time(self, moment: datetime, *, address: Address | str = BROADCAST) -> None:
        """`Dlt645Client.broadcast_time` on this connection."""
        await self.run(lambda client: client.broadcast_time(moment, address=address))

    async def relay_control(
        self,
        address: Address | str,
        command: RelayCommand,
        password: str,
        operator_code: str,
        valid_until: datetime,
        *,
        password_level: int = DEFAULT_PASSWORD_LEVEL,
        timeout_s: float | None = None,
    ) -> None:
        """`Dlt645Client.relay_control` on this connection."""
        await self.run(
            lambda client: client.relay_control(
                address,
                command,
                password,
                operator_code,
                valid_until,
                password_level=password_level,
                timeout_s=timeout_s,
            )
        )

    async def __aenter__(self) -> Dlt645Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
