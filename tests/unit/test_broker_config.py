"""The broker's generated configuration: password hashes in Mosquitto's format, the ACL's rules, the shipped copy."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from headend.broker.config import (
    BrokerAccounts,
    BrokerOptions,
    Role,
    ServiceAccount,
    TlsListener,
    render_acl,
    render_conf,
    render_passwd,
    service_accounts,
)
from headend.broker.passwords import hash_password, is_password_hash, new_password, verify_password
from headend.broker.store import DeviceKind, LiveCredential
from headend.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# written by `mosquitto_passwd -c -b FILE user1 secret-pass` (Mosquitto 2.0.11): a throwaway password
MOSQUITTO_PASSWD_LINE = (
    "user1:$7$101$ynFvmj+lKSARERih$"
    "423CCl3EA82vZYwfKP80MuHMHFtumyhNgYI7Q5V5O1OWG2DmkiIMNIeNScwOl6MdRr4TD5b4cYMNvZZJpKrOqQ=="
)
# what docker-compose.yml's broker-config service writes deploy/mosquitto/mosquitto.conf with
SHIPPED = BrokerOptions(
    Path("/broker"),
    port=1883,
    tls=TlsListener(8883, "/mosquitto/certs/server.crt", "/mosquitto/certs/server.key"),
)
SHIPPED_COMMAND = [
    "broker-config",
    "--dir=/broker",
    "--port=1883",
    "--tls-port=8883",
    "--tls-cert=/mosquitto/certs/server.crt",
    "--tls-key=/mosquitto/certs/server.key",
]


def test_a_hash_is_the_one_mosquitto_passwd_writes() -> None:
    _, stored = MOSQUITTO_PASSWD_LINE.split(":", 1)
    assert verify_password("secret-pass", stored)
    assert not verify_password("secret-pas", stored)
    salt = base64.b64decode(stored.split("$")[3])
    assert hash_password("secret-pass", salt=salt) == stored


def test_hashes_are_salted_and_verify() -> None:
    password = new_password()
    assert len(password) == 43
    first, second = hash_password(password), hash_password(password)
    assert first != second
    assert all(is_password_hash(h) and verify_password(password, h) for h in (first, second))
    assert not is_password_hash("plain")
    assert not verify_password(password, "$7$101$short$short")


def _accounts() -> BrokerAccounts:
    return BrokerAccounts(
        devices=[
            LiveCredential(DeviceKind.CONCENTRATOR, "dcu-1", hash_password("a")),
            LiveCredential(DeviceKind.METER, "m-1", hash_password("b")),
        ],
        services=[
            ServiceAccount("headend-ingest", Role.INGEST, hash_password("c")),
            ServiceAccount("headend-dispatch", Role.DISPATCH, hash_password("d")),
            ServiceAccount("headend-poll", Role.POLL, hash_password("e")),
        ],
        meters_behind={"dcu-1": ["x-1", "x-2"], "dcu-9": ["z-1"]},
    )


def _rules(acl: str) -> dict[str | None, list[str]]:
    """Rules by user (None: the patterns before any user line)."""
    rules: dict[str | None, list[str]] = {None: []}
    user: str | None = None
    for line in acl.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("user "):
            user = line.removeprefix("user ")
            rules[user] = []
        else:
            rules[user].append(line)
    return rules


def test_the_acl_gives_each_account_exactly_its_topics() -> None:
    rules = _rules(render_acl(_accounts()))
    assert rules[None] == [
        "pattern write meters/%u/readings",
        "pattern write meters/%u/events",
        "pattern read meters/%u/commands",
    ]
    assert rules["dcu-1"] == [
        "topic deny meters/dcu-1/#",
        "topic write concentrators/dcu-1/readings",
        "topic read concentrators/dcu-1/commands",
        "topic write meters/x-1/events",
        "topic write meters/x-2/events",
    ]
    assert rules["headend-ingest"] == [
        "topic deny meters/headend-ingest/#",
        "topic read meters/+/readings",
        "topic read concentrators/+/readings",
    ]
    assert rules["headend-dispatch"] == [
        "topic deny meters/headend-dispatch/#",
        "topic read meters/+/events",
        "topic write meters/+/commands",
        "topic write concentrators/+/commands",
    ]
    # a poll worker sends re-reads and reads nothing: their answers are readings, ingest's
    assert rules["headend-poll"] == [
        "topic deny meters/headend-poll/#",
        "topic write meters/+/commands",
        "topic write concentrators/+/commands",
    ]
    # a meter has no block of its own, and a concentrator without credentials none either
    assert set(rules) == {None, "dcu-1", "headend-ingest", "headend-dispatch", "headend-poll"}


def test_the_password_file_holds_every_account_once() -> None:
    lines = [line for line in render_passwd(_accounts()).splitlines() if not line.startswith("#")]
    names = [line.split(":", 1)[0] for line in lines]
    assert names == ["headend-ingest", "headend-dispatch", "headend-poll", "dcu-1", "m-1"]
    assert all(is_password_hash(line.split(":", 1)[1]) for line in lines)


def test_service_accounts_come_from_the_settings() -> None:
    settings = Settings(
        broker_ingest_accounts="headend-ingest-1, headend-ingest-2",  # type: ignore[arg-type]
        broker_ingest_password=SecretStr("ingest-password-123"),
        broker_monitor_password=SecretStr("monitor-password-12"),
    )
    accounts, missing = service_accounts(settings)
    assert [(a.username, a.role) for a in accounts] == [
        ("headend-ingest-1", Role.INGEST),
        ("headend-ingest-2", Role.INGEST),
        ("headend-monitor", Role.MONITOR),
    ]
    assert verify_password("ingest-password-123", accounts[0].password_hash)
    # the dispatcher and the poll worker are needed and said missing; the simulator's absence is production's normal
    assert len(missing) == 2
    assert "HEADEND_BROKER_DISPATCH_PASSWORD" in missing[0]
    assert "HEADEND_BROKER_POLL_PASSWORD" in missing[1]


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"broker_ingest_accounts": "a:b"}, "does not match"),
        ({"broker_ingest_accounts": "x", "broker_dispatch_accounts": "x"}, "more than one role"),
        ({"broker_ingest_password": "short"}, "at least 16"),
        ({"mqtt_tls_ca_file": "/nonexistent/ca.crt"}, "is not a file"),
    ],
)
def test_settings_refuse_bad_broker_values(values: dict[str, str], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Settings(**values)  # type: ignore[arg-type]


def test_tls_settings(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("not checked here")
    assert not Settings().mqtt_tls_enabled
    assert Settings(mqtt_tls=True).mqtt_tls_enabled
    assert Settings(mqtt_tls_ca_file=str(ca)).mqtt_tls_enabled
    assert not Settings().mqtt_tls_insecure
    with pytest.raises(ValidationError, match="go together"):
        Settings(mqtt_tls_cert_file=str(ca))


def test_options_need_a_listener_and_an_absolute_directory() -> None:
    with pytest.raises(ValueError, match="needs a listener"):
        BrokerOptions(Path("/b"), port=None)
    with pytest.raises(ValueError, match="absolute"):
        BrokerOptions(Path("b"))
    with pytest.raises(ValueError, match="share port"):
        BrokerOptions(Path("/b"), port=8883, tls=TlsListener(8883, "c", "k"))


def test_the_conf_turns_anonymous_access_off_and_names_its_files() -> None:
    conf = render_conf(BrokerOptions(Path("/etc/b"), port=1884, bind="127.0.0.1"))
    settings = [line for line in conf.splitlines() if line and not line.startswith("#")]
    assert settings[:2] == ["listener 1884 127.0.0.1", "use_username_as_clientid true"]
    assert "allow_anonymous false" in settings
    assert "password_file /etc/b/passwd" in settings
    assert "acl_file /etc/b/acl" in settings
    assert not any(line.startswith(("certfile", "require_certificate")) for line in settings)


def test_client_certificates_are_required_when_a_client_ca_is_given() -> None:
    tls = TlsListener(8884, "/c/server.crt", "/c/server.key", "/c/clients-ca.crt")
    settings = [line for line in render_conf(BrokerOptions(Path("/b"), port=None, tls=tls)).splitlines()]
    assert "listener 8884" in settings
    assert "listener 1883" not in settings
    assert settings.count("use_username_as_clientid true") == 1
    assert {"cafile /c/clients-ca.crt", "require_certificate true", "certfile /c/server.crt"} <= set(settings)


def test_the_shipped_config_is_the_generator_s_output() -> None:
    shipped = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text(encoding="utf-8")
    assert shipped == render_conf(SHIPPED)


def test_compose_writes_the_shipped_config_and_runs_the_broker_on_it() -> None:
    compose = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    block = re.search(r"\n  broker-config:\n(.*?)\n  \S", compose, re.DOTALL)
    assert block is not None
    assert [line.strip().removeprefix("- ") for line in block[1].splitlines() if line.startswith("      - ")][
        : len(SHIPPED_COMMAND)
    ] == SHIPPED_COMMAND
    assert 'command: ["mosquitto", "-c", "/broker/mosquitto.conf"]' in compose
    assert "allow_anonymous true" not in compose
    assert '- "1883:1883"' not in compose  # the plain listener is not published
