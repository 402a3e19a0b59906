"""What a worker logs about its broker connection (headend.mqtt.client.ConnectionWatch), without a broker."""

from __future__ import annotations

import logging
import socket
import ssl

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from headend.mqtt.client import ConnectionWatch, describe_connect_error, make_client
from headend.settings import Settings

LOG = logging.getLogger("tests.broker")


class FakeClock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now_s = 50.0

    def __call__(self) -> float:
        return self.now_s


def _watch(clock: FakeClock) -> tuple[ConnectionWatch, mqtt.Client]:
    settings = Settings(mqtt_host="broker.example", mqtt_port=1884)
    client = make_client(settings, "t", manual_ack=True, persistent=True)
    return ConnectionWatch(client, settings, LOG, clock=clock), client


def _fail_with(client: mqtt.Client, exc: OSError) -> None:
    """What paho does when an attempt to open the connection raises: the callback runs in the handler."""
    callback = client.on_connect_fail
    assert callback is not None
    try:
        raise exc
    except OSError:
        callback(client, None)


def test_each_failed_attempt_is_a_warning_with_its_reason_and_the_connection_an_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, LOG.name)
    clock = FakeClock()
    watch, client = _watch(clock)
    _fail_with(client, ConnectionRefusedError(111, "Connection refused"))
    clock.now_s += 3
    _fail_with(client, socket.gaierror(-2, "Name or service not known"))
    clock.now_s += 4
    assert not watch.connect_result(ReasonCode(PacketTypes.CONNACK, "Not authorized"), False)
    assert watch.problem() == (
        "not connected to the broker broker.example:1884 for 7 s: refused by the broker: Not authorized "
        "(CONNACK reason code 135) (3 failed attempt(s))"
    )
    watch.disconnected(ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"), stopping=False)  # after the refusal
    clock.now_s += 8
    assert watch.connect_result(ReasonCode(PacketTypes.CONNACK, "Success"), True)
    assert watch.problem() is None
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "cannot connect to the broker broker.example:1884: connection refused (attempt 1; retrying, at most "
            "30 s apart)",
        ),
        (
            "WARNING",
            "cannot connect to the broker broker.example:1884: cannot resolve 'broker.example' (Name or service not "
            "known) (attempt 2; retrying, at most 30 s apart)",
        ),
        (
            "WARNING",
            "cannot connect to the broker broker.example:1884: refused by the broker: Not authorized (CONNACK reason "
            "code 135) (attempt 3; retrying, at most 30 s apart)",
        ),
        (
            "INFO",
            "connected to the broker broker.example:1884 after 3 failed attempt(s) in 15 s (session present: True)",
        ),
    ]


def test_a_lost_connection_is_a_warning_unless_stopping_and_a_problem_until_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, LOG.name)
    clock = FakeClock()
    watch, _ = _watch(clock)
    assert watch.problem() == (
        "not connected to the broker broker.example:1884 for 0 s: not connected yet (0 failed attempt(s))"
    )
    assert watch.connect_result(ReasonCode(PacketTypes.CONNACK, "Success"), False)
    caplog.clear()
    watch.disconnected(ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"), stopping=False)
    clock.now_s += 12
    assert watch.problem() == (
        "not connected to the broker broker.example:1884 for 12 s: disconnected (Unspecified error) "
        "(0 failed attempt(s))"
    )
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "disconnected from the broker broker.example:1884 (Unspecified error); reconnecting")
    ]
    caplog.clear()
    assert watch.connect_result(ReasonCode(PacketTypes.CONNACK, "Success"), True)
    watch.disconnected(ReasonCode(PacketTypes.DISCONNECT, "Normal disconnection"), stopping=True)
    assert [r.getMessage() for r in caplog.records] == [
        "connected to the broker broker.example:1884 (session present: True)"
    ]


def _untrusted() -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    exc.verify_message = "unable to get local issuer certificate"
    return exc


@pytest.mark.parametrize(
    ("exc", "said"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (socket.gaierror(-3, "Temporary failure in name resolution"), "cannot resolve 'h' (Temporary failure"),
        (TimeoutError("timed out"), "timed out"),
        (OSError(113, "No route to host"), "No route to host"),
        (None, "connection failed"),
        (_untrusted(), "TLS: the broker's certificate is not trusted (unable to get local issuer certificate)"),
        (
            ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
            "TLS: [SSL: WRONG_VERSION_NUMBER] wrong version",
        ),
    ],
)
def test_connection_errors_in_words(exc: BaseException | None, said: str) -> None:
    assert describe_connect_error(exc, "h").startswith(said)
