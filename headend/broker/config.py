"""The Mosquitto configuration of the head-end's broker, generated from the registry, the credentials and the settings.

Three files go into one directory: `mosquitto.conf` (listeners, authentication, persistence, queues; every setting
that changes a default says why), `passwd` (every account with its `$7$` password hash) and `acl` (what each account
may publish and read). Meters' rights are three `pattern` rules on their username, whatever the size of the fleet;
a concentrator gets a block of its own (its topics and its meters' events), and so does each service account. Every
block that is not a meter's first denies the account the topics a meter of its name would have, so that a pattern
rule never gives a concentrator or a service the rights of a meter that happens to share its name.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import psycopg
from pydantic import SecretStr

from headend.broker.passwords import hash_password
from headend.broker.store import DeviceKind, LiveCredential, live_credentials, meters_behind
from headend.settings import Settings
from protocols.mqtt_topics import (
    COMMAND_FILTERS,
    EVENTS_FILTER,
    READINGS_FILTERS,
    concentrator_commands_topic,
    concentrator_readings_topic,
    meter_commands_topic,
    meter_events_topic,
    meter_readings_topic,
)
from protocols.readings import is_valid_id

CONF_FILE: Final = "mosquitto.conf"
PASSWORDS_FILE: Final = "passwd"
ACL_FILE: Final = "acl"
DEFAULT_PORT: Final = 1883
DEFAULT_TLS_PORT: Final = 8883
DEFAULT_PERSISTENCE_DIR: Final = "/mosquitto/data/"


class Role(StrEnum):
    """What a service account is for."""

    INGEST = "ingest"
    DISPATCH = "dispatch"
    POLL = "poll"
    MONITOR = "monitor"
    SIMULATOR = "simulator"


# (access, topic filter) a service account of each role holds: exactly what its job needs
SERVICE_RIGHTS: Final[dict[Role, tuple[tuple[str, str], ...]]] = {
    # `headend ingest`: the readings of meters and of concentrators
    Role.INGEST: tuple(("read", topic) for topic in READINGS_FILTERS),
    # `headend dispatch`: relay commands out, the meters' answers in
    Role.DISPATCH: (("read", EVENTS_FILTER), *(("write", topic) for topic in COMMAND_FILTERS)),
    # `headend poll`: re-reads (`read_readings`) out to MQTT meters and concentrators; their answers are readings,
    # which ingest takes
    Role.POLL: tuple(("write", topic) for topic in COMMAND_FILTERS),
    # health checks and monitoring: the broker's own statistics
    Role.MONITOR: (("read", "$SYS/#"),),
    # a simulated fleet (`headend simulate`): every device's rights, so never in production
    Role.SIMULATOR: (
        *(("write", topic) for topic in READINGS_FILTERS),
        ("write", EVENTS_FILTER),
        *(("read", topic) for topic in COMMAND_FILTERS),
    ),
}
# the settings naming each role's accounts and their password
ROLE_SETTINGS: Final[dict[Role, tuple[str, str]]] = {
    role: (f"broker_{role}_accounts", f"broker_{role}_password") for role in Role
}
# a meter, on its own topics; its username is its id
METER_PATTERNS: Final = (
    ("write", meter_readings_topic("%u")),
    ("write", meter_events_topic("%u")),
    ("read", meter_commands_topic("%u")),
)


@dataclass(frozen=True, slots=True)
class TlsListener:
    """A TLS listener: the broker's certificate and key, and the CA of client certificates if it asks for one."""

    port: int
    cert_file: str
    key_file: str
    client_ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    """Where the broker listens and keeps its files; paths as the broker sees them."""

    directory: Path
    port: int | None = DEFAULT_PORT
    bind: str | None = None
    tls: TlsListener | None = None
    persistence_dir: str = DEFAULT_PERSISTENCE_DIR

    def __post_init__(self) -> None:
        if self.port is None and self.tls is None:
            raise ValueError("the broker needs a listener: a plain port, a TLS one, or both")
        if self.tls is not None and self.port == self.tls.port:
            raise ValueError(f"the plain and the TLS listener cannot share port {self.port}")
        if not self.directory.is_absolute():
            raise ValueError(f"{self.directory} is not an absolute path")


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """A broker account of one of the head-end's service connections."""

    username: str
    role: Role
    password_hash: str


@dataclass(frozen=True, slots=True)
class BrokerAccounts:
    """Every account the broker knows, what concentrators' meters are, and what was left out and why."""

    devices: list[LiveCredential]
    services: list[ServiceAccount]
    meters_behind: dict[str, list[str]]
    left_out: list[str] = field(default_factory=list)

    def count(self, kind: DeviceKind) -> int:
        """Device accounts of one kind."""
        return sum(1 for device in self.devices if device.kind is kind)


def service_accounts(settings: Settings) -> tuple[list[ServiceAccount], list[str]]:
    """The service accounts whose role has a password in `settings` (hashed now), and a line for each role without."""
    accounts: list[ServiceAccount] = []
    missing: list[str] = []
    for role, (accounts_field, password_field) in ROLE_SETTINGS.items():
        names: tuple[str, ...] = getattr(settings, accounts_field)
        password: SecretStr | None = getattr(settings, password_field)
        if not names:
            continue
        if password is None:
            if role is not Role.SIMULATOR:  # left out on purpose in production
                missing.append(
                    f"no HEADEND_{password_field.upper()}: {role} account(s) {', '.join(names)} not written "
                    "(they cannot connect)"
                )
            continue
        accounts += [ServiceAccount(name, role, hash_password(password.get_secret_value())) for name in names]
    return accounts, missing


def collect_accounts(conn: psycopg.Connection[Any], settings: Settings) -> BrokerAccounts:
    """The accounts of the current registry and credentials, and of the services configured in `settings`."""
    services, left_out = service_accounts(settings)
    taken = {account.username for account in services}
    devices: list[LiveCredential] = []
    for device in live_credentials(conn):
        if device.username in taken:
            left_out.append(f"{device.kind} {device.username}: its id is a service account's name; not written")
        elif not is_valid_id(device.username):
            left_out.append(f"{device.kind} {device.username!r}: not a valid device id; not written")
        else:
            devices.append(device)
    behind = {dcu: [m for m in meters if is_valid_id(m)] for dcu, meters in meters_behind(conn).items()}
    return BrokerAccounts(devices, services, behind, left_out)


def render_conf(options: BrokerOptions) -> str:
    """`mosquitto.conf` for `options`."""
    directory = options.directory
    sections = [_HEADER, _listeners(options), _AUTH.format(passwd=directory / PASSWORDS_FILE, acl=directory / ACL_FILE)]
    sections.append(_PERSISTENCE.format(persistence_dir=options.persistence_dir))
    return "\n".join(sections)


def _listeners(options: BrokerOptions) -> str:
    bind = f" {options.bind}" if options.bind else ""
    where = f"on {options.bind}" if options.bind else "on all interfaces"
    lines = ["# ---------------------------------------------------------------------- listeners"]
    session: tuple[str, ...] = _ONE_SESSION
    if options.port is not None:
        lines += [
            f"# MQTT without TLS on port {options.port}, {where}. Without a listener line Mosquitto",
            "# 2.0 listens on localhost only, which other containers and meters cannot reach.",
            "# Passwords cross it in clear: keep it to a network you trust (the services' own) and",
            "# put devices on TLS.",
            f"listener {options.port}{bind}",
            *session,
        ]
        session = ("# An account is one session here too.", session[-1])
    if options.tls is not None:
        tls = options.tls
        if options.port is not None:
            lines.append("")
        lines += [
            f"# MQTT over TLS on port {tls.port}, {where}: the broker proves itself with this",
            "# certificate, clients check it against their CA (HEADEND_MQTT_TLS_CA_FILE), then log",
            "# in with their password.",
            f"listener {tls.port}{bind}",
            f"certfile {tls.cert_file}",
            f"keyfile {tls.key_file}",
        ]
        if tls.client_ca_file is not None:
            lines += [
                "# Clients must also present a certificate signed by this CA (default: none asked",
                "# for): a second factor, the username and password still name the account and are",
                "# still checked.",
                f"cafile {tls.client_ca_file}",
                "require_certificate true",
            ]
        lines += session
    return "\n".join(lines) + "\n"


_ONE_SESSION = (
    "# The username is the client id (default: the client's own choice), so an account is one",
    "# session: no client can take over another's session by using its client id, which would",
    "# disconnect it and hand its queued readings or commands to the newcomer, or discard them.",
    "use_username_as_clientid true",
)

_HEADER = """\
# Mosquitto 2.0 configuration of the head-end's broker (image eclipse-mosquitto:2), written by
# `headend broker-config` (headend/broker/config.py) with the password file and the ACL beside
# it. Do not edit it: change the registry, the credentials or the options and write it again.
# Reference: mosquitto.conf(5); docs/security.md says who may do what, and why.
#
# What matters here: every client speaks only for itself, and no reading is lost. A client
# logs in to its own account and may publish and read only what its account allows. Meter
# readings are QoS 1 and the ingest workers hold persistent sessions ($share/headend/...
# shared subscription, acknowledged only after the rows are committed): the broker must
# keep every queued reading of a session that is offline or slow, across a broker restart,
# instead of dropping it. Every line below that changes a default says why.
"""

_AUTH = """\
# ---------------------------------------------------------------------- accounts and rights
# Every client logs in with a username and password. Said here although it is Mosquitto 2.0's
# default once a listener is configured, so that nobody turns anonymous access on by accident.
allow_anonymous false
# The accounts and their PBKDF2-SHA512 password hashes, never a password in clear: meters and
# concentrators (the username is the device id, the password the one `headend devices
# credentials` issued) and the head-end's services (HEADEND_BROKER_*_ACCOUNTS).
password_file {passwd}
# What each account may publish and read (default without it: everything, to everyone): a meter
# its own topics, a concentrator its own and its meters' events, a service what its job needs.
# A publish outside them is dropped (MQTT 5: PUBACK "not authorized"); a subscription outside
# them is granted but delivers nothing.
acl_file {acl}
# Both files change when credentials are issued, rotated or revoked and when meters move
# between concentrators: write them again (headend broker-config) and send the broker SIGHUP.
# It re-reads them, disconnects every client whose password no longer matches, and applies the
# new rules to the clients still connected.
"""

_PERSISTENCE = """\
# ---------------------------------------------------------------------- persistence
# Default false: sessions, subscriptions and queued messages would live in memory only,
# and a broker restart would silently drop every reading queued for an ingest worker.
persistence true
# Where the broker keeps its database (the trailing slash is required).
persistence_location {persistence_dir}
# Write the in-memory state to disk every 60 s (default 1800 s). Mosquitto saves on a
# clean shutdown too; a hard crash (kill -9, power loss) loses what arrived since the
# last save. Lower it to shrink that window at the cost of more disk writes.
autosave_interval 60

# ---------------------------------------------------------------------- queues
# Queued QoS 1/2 messages per client above those in flight. The default, 1000, is a few
# minutes of readings of a large fleet or less: while an ingest worker is down (deploy,
# database outage) or behind, everything past the limit would be dropped silently.
# 1,000,000 holds about a day of 10,000 meters publishing every 15 minutes. It stays
# finite so that a session nobody resumes cannot take all memory (0 would mean no limit,
# which the manual advises against); size the broker's memory for it (order of 0.5 KB a
# queued reading). Watch $SYS/broker/publish/messages/dropped: it must stay at 0.
max_queued_messages 1000000

# Outgoing QoS 1/2 messages in flight (sent, not yet acknowledged) per client; default 20.
# An ingest worker acknowledges a message only after the batch it belongs to is
# committed, so with 20 in flight a batch could never hold more than 20 messages and
# throughput would collapse to ~20 messages a database round trip. For MQTT v5 clients
# the broker uses the client's own Receive Maximum instead (HEADEND_MQTT_RECEIVE_MAXIMUM,
# default 2000); this line gives MQTT 3.1.1 clients (HEADEND_MQTT_PROTOCOL=3.1.1) the same
# window.
max_inflight_messages 2000

# ---------------------------------------------------------------------- sessions
# Drop the session of a persistent client that has not reconnected for 7 days (default:
# never for MQTT 3.1.1 clean-session=false clients). It caps MQTT v5 session expiry too,
# and matches the head-end's own HEADEND_MQTT_SESSION_EXPIRY_S (7 days). Sessions of
# retired ingest workers or meters must not hold queued messages forever. An ingest
# worker must be back within this time or its queued readings are lost.
persistent_client_expiration 7d

# ---------------------------------------------------------------------- logging
# To stdout (default stderr), collected by `docker compose logs` like the head-end's own
# logs.
log_dest stdout
# ISO 8601 times with offset instead of Unix seconds (default). log_type keeps its
# default: errors, warnings, notices (connects, disconnects, refused logins) and
# information.
log_timestamp_format %Y-%m-%dT%H:%M:%S%z

# ---------------------------------------------------------------------- latency
# Default false: Nagle's algorithm holds a small packet (a relay command, a PUBACK) until
# the previous one is acknowledged, adding up to ~40 ms to each hop of a disconnect or
# reconnect. The head-end's clients set TCP_NODELAY on their side too.
set_tcp_nodelay true
"""


def render_passwd(accounts: BrokerAccounts) -> str:
    """The password file: `username:$7$…` a line, services first, then devices by username."""
    lines = ["# Written by `headend broker-config`: the broker's accounts and their password hashes."]
    lines += [f"{a.username}:{a.password_hash}" for a in accounts.services]
    lines += [f"{d.username}:{d.password_hash}" for d in accounts.devices]
    return "\n".join(lines) + "\n"


def render_acl(accounts: BrokerAccounts) -> str:
    """The ACL file: the meters' pattern rules, then a block for each concentrator and each service account."""
    lines = [
        "# Written by `headend broker-config`: what each account may publish (write) and read.",
        "# Nothing else is allowed: a topic no rule of an account names is closed to it.",
        "#",
        "# Every meter (username = meter id): its readings and events out, its relay commands in.",
        *(f"pattern {access} {topic}" for access, topic in METER_PATTERNS),
    ]
    for device in accounts.devices:
        if device.kind is not DeviceKind.CONCENTRATOR:
            continue
        dcu = device.username
        meters = accounts.meters_behind.get(dcu, [])
        lines += [
            "",
            f"# concentrator {dcu}: its readings out, its commands in, and the events of its {len(meters)} meter(s)",
            f"user {dcu}",
            *_not_a_meter(dcu),
            f"topic write {concentrator_readings_topic(dcu)}",
            f"topic read {concentrator_commands_topic(dcu)}",
            *(f"topic write {meter_events_topic(meter)}" for meter in meters),
        ]
    for account in accounts.services:
        lines += [
            "",
            f"# {account.role} service",
            f"user {account.username}",
            *_not_a_meter(account.username),
            *(f"topic {access} {topic}" for access, topic in SERVICE_RIGHTS[account.role]),
        ]
    return "\n".join(lines) + "\n"


def _not_a_meter(username: str) -> list[str]:
    # the meters' pattern rules apply to every account; an account's deny rules are checked before them
    return [f"topic deny meters/{username}/#"]


@dataclass(frozen=True, slots=True)
class Written:
    """The files written and what they hold."""

    conf: Path
    passwd: Path
    acl: Path
    meters: int
    concentrators: int
    services: int


def write_config(options: BrokerOptions, accounts: BrokerAccounts) -> Written:
    """Write the three files into `options.directory` (created if missing), each replaced whole, never half-written."""
    directory = options.directory
    directory.mkdir(parents=True, exist_ok=True)
    conf, passwd, acl = directory / CONF_FILE, directory / PASSWORDS_FILE, directory / ACL_FILE
    # the hashes are no use for guessing a random device password, but a service's password is an operator's
    _replace(passwd, render_passwd(accounts), 0o640)
    _replace(acl, render_acl(accounts), 0o640)
    _replace(conf, render_conf(options), 0o644)
    return Written(
        conf,
        passwd,
        acl,
        accounts.count(DeviceKind.METER),
        accounts.count(DeviceKind.CONCENTRATOR),
        len(accounts.services),
    )


def _replace(path: Path, text: str, mode: int) -> None:
    # a broker reloading (SIGHUP) while this runs reads the old file or the new one, never a part
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
