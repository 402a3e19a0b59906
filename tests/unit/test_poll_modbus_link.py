"""ModbusLink's bound on one request, without sockets: a request that never completes is a timeout and closes the
connection; the request runs in the caller's task (no task of its own a request)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from headend.poll.failures import FailureKind, PollError
from headend.poll.modbus_reader import ModbusLink
from headend.poll.targets import Endpoint, PolledMeter

METER = PolledMeter("m-1", "modbus", Endpoint("127.0.0.1", 502), "eastron_sdm120", unit_id=7)


class FakeClient:
    """What ModbusLink asks of a connected pymodbus client."""

    connected = True

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Answer:
    def isError(self) -> bool:  # pymodbus's name
        return False


def _link(client: FakeClient, timeout_s: float) -> ModbusLink:
    link = ModbusLink(METER.endpoint, timeout_s)
    link._client = client  # type: ignore[assignment]  # connected: the request is all that is asked
    link._framing = METER.framing
    return link


def test_a_request_that_never_completes_is_a_timeout_and_closes_the_connection() -> None:
    client = FakeClient()
    link = _link(client, 0.02)

    async def never(_: Any) -> Any:
        await asyncio.Event().wait()

    async def main() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(PollError) as raised:
            await link._ask(METER, never, "a read")
        assert raised.value.kind is FailureKind.TIMEOUT
        assert raised.value.reason == "no answer from unit 7 within 0.02 s"
        return loop.time() - started

    waited = asyncio.run(main())
    assert 0.03 <= waited < 1.0  # 1.5 × the timeout, pymodbus's own timeout given its chance first
    assert client.closed  # a late answer could be taken for the next request's


def test_the_request_runs_in_the_callers_task() -> None:
    link = _link(FakeClient(), 1.0)
    seen: list[asyncio.Task[Any] | None] = []

    async def request(_: Any) -> Answer:
        seen.append(asyncio.current_task())
        return Answer()

    async def main() -> asyncio.Task[Any] | None:
        answer = await link._ask(METER, request, "a read")
        assert isinstance(answer, Answer)
        return asyncio.current_task()

    caller = asyncio.run(main())
    assert seen == [caller]
