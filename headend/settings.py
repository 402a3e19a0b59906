"""One settings object for the whole application, read from `HEADEND_*` variables."""

from __future__ import annotations

import re
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# a broker account a service connects as: no ':' (the password file's separator), no MQTT wildcard or level
ACCOUNT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MIN_SERVICE_PASSWORD_CHARS = 16
# the broker accounts of the head-end's services, by role (headend.broker.config.SERVICE_RIGHTS)
ACCOUNT_FIELDS = (
    "broker_ingest_accounts",
    "broker_dispatch_accounts",
    "broker_poll_accounts",
    "broker_monitor_accounts",
    "broker_simulator_accounts",
)
Accounts = Annotated[tuple[str, ...], NoDecode]


class MqttProtocol(StrEnum):
    """MQTT protocol version spoken to the broker."""

    V5 = "5"
    V311 = "3.1.1"


class Settings(BaseSettings):
    """Head-end configuration; every field is `HEADEND_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="HEADEND_", env_file=".env", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL, postgresql+psycopg://user@host/db; unset means the embedded server",
    )
    require_timescaledb: bool = Field(
        default=False, description="fail at migration when the timescaledb extension is missing"
    )
    db_admin_url: str | None = Field(
        default=None,
        description="a superuser's URL, used only by `headend db roles` (never by a service); unset with the embedded "
        "server: its own",
    )
    db_role_prefix: str = Field(
        default="headend_",
        pattern=r"^[a-z_][a-z0-9_]{0,40}$",
        description="the database roles are this plus owner, ingest, engine, dispatch, api, reporting, operator; "
        "roles are per server, so two head-ends on one server need different prefixes",
    )
    db_password_owner: SecretStr | None = Field(default=None, description="`db roles`: the owner role's password")
    db_password_ingest: SecretStr | None = Field(default=None, description="`db roles`: the ingest role's password")
    db_password_engine: SecretStr | None = Field(default=None, description="`db roles`: the engine role's password")
    db_password_dispatch: SecretStr | None = Field(default=None, description="`db roles`: the dispatch role's password")
    db_password_api: SecretStr | None = Field(default=None, description="`db roles`: the api role's password")
    db_password_reporting: SecretStr | None = Field(
        default=None, description="`db roles`: the reporting role's password"
    )
    db_password_operator: SecretStr | None = Field(default=None, description="`db roles`: the operator role's password")
    mqtt_host: str | None = Field(default=None, description="broker host; unset means the embedded broker")
    mqtt_port: int = 1883
    mqtt_username: str | None = Field(default=None, description="the broker account this process connects as")
    mqtt_password: str | None = Field(default=None, description="the password of HEADEND_MQTT_USERNAME")
    mqtt_tls: bool = Field(
        default=False, description="connect to the broker over TLS (also on when a HEADEND_MQTT_TLS_*_FILE is set)"
    )
    mqtt_tls_ca_file: str | None = Field(
        default=None, description="CA certificates (PEM) the broker's certificate must chain to; unset: the system's"
    )
    mqtt_tls_cert_file: str | None = Field(
        default=None, description="client certificate (PEM) for a broker that asks for one, with the key file"
    )
    mqtt_tls_key_file: str | None = Field(default=None, description="private key (PEM) of HEADEND_MQTT_TLS_CERT_FILE")
    mqtt_tls_insecure: bool = Field(
        default=False,
        description="accept a broker certificate that does not name HEADEND_MQTT_HOST (the chain is still checked); "
        "for tests, never in production",
    )
    broker_ingest_accounts: Accounts = Field(
        default=("headend-ingest",),
        description="`broker-config`: the broker accounts of ingest workers (comma-separated), one a worker",
    )
    broker_ingest_password: SecretStr | None = Field(
        default=None, description="`broker-config`: the password of every ingest account; unset: none is written"
    )
    broker_dispatch_accounts: Accounts = Field(
        default=("headend-dispatch",), description="`broker-config`: the broker accounts of dispatchers"
    )
    broker_dispatch_password: SecretStr | None = Field(
        default=None, description="`broker-config`: the password of every dispatch account; unset: none is written"
    )
    broker_poll_accounts: Accounts = Field(
        default=("headend-poll",),
        description="`broker-config`: the broker accounts of poll workers, which send re-reads to MQTT devices",
    )
    broker_poll_password: SecretStr | None = Field(
        default=None, description="`broker-config`: the password of every poll account; unset: none is written"
    )
    broker_monitor_accounts: Accounts = Field(
        default=("headend-monitor",), description="`broker-config`: accounts that may read $SYS (health checks)"
    )
    broker_monitor_password: SecretStr | None = Field(
        default=None, description="`broker-config`: the password of every monitor account; unset: none is written"
    )
    broker_simulator_accounts: Accounts = Field(
        default=("headend-simulator", "headend-simulator-relay"),
        description="`broker-config`: accounts of simulated fleets, which may act as any device",
    )
    broker_simulator_password: SecretStr | None = Field(
        default=None,
        description="`broker-config`: the password of every simulator account; unset (production): none is written",
    )
    mqtt_protocol: MqttProtocol = MqttProtocol.V5
    mqtt_client_id: str = Field(default="headend-ingest", description="persistent-session id of this worker")
    mqtt_shared_group: str | None = Field(
        default="headend", description="shared-subscription group ($share/<group>/…); empty to subscribe plainly"
    )
    mqtt_receive_maximum: int = Field(default=2000, ge=1, le=65535, description="unacked messages in flight")
    mqtt_session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    timezone: str = "Asia/Shanghai"
    ingest_batch_rows: int = Field(default=5000, ge=1)
    ingest_batch_wait_ms: int = Field(default=50, ge=0, description="longest a message waits for its batch")
    future_tolerance_s: int = Field(default=300, ge=0, description="how far ahead of now a reading may be stamped")
    reading_max_age_days: int = Field(
        default=92,
        ge=1,
        le=3660,
        description="how long ago a reading may be stamped; an older one is a dead letter (too old) and gets no "
        "partition",
    )
    partitions_ahead_days: int = Field(default=7, ge=1)
    data_dir: str = Field(default=".headend", description="where the embedded database keeps its files")
    engine_lateness_s: int = Field(
        default=300, ge=0, description="how late a reading may arrive and still be charged in time order"
    )
    engine_batch_accounts: int = Field(default=2000, ge=1, le=100_000, description="accounts charged per transaction")
    engine_poll_s: float = Field(
        default=2.0,
        gt=0,
        description="longest pause when nothing was charged; a stored ingest batch wakes the runner at once",
    )
    engine_full_sweep_s: float = Field(
        default=30.0, gt=0, description="between full sweeps; new readings' accounts are charged as they arrive"
    )
    engine_eager_on_grid: bool = Field(
        default=True,
        description="charge a reading that closes the next on-grid interval at once, without waiting for the lateness",
    )
    status_interval_s: float = Field(
        default=10.0,
        ge=0,
        description="between the status lines of ingest, engine and dispatch (counters of the period and totals); "
        "0: none",
    )
    settle_workers: int = Field(
        default=0, ge=0, le=64, description="processes a settlement charges with (0: one per CPU, plus one)"
    )
    api_host: str = Field(default="127.0.0.1", description="address `headend serve` listens on")
    api_port: int = Field(default=8080, ge=1, le=65535, description="port `headend serve` listens on")
    api_pool_size: int = Field(default=10, ge=1, le=1000, description="database connections the API keeps at most")
    payment_max_age_days: int = Field(
        default=30, ge=1, le=3660, description="a new payment dated longer ago is refused by the API (paid_at_too_old)"
    )
    console_secure_cookies: bool = Field(
        default=False,
        description="the console's cookies carry Secure (sent over HTTPS only): set it when the console is served "
        "over HTTPS, as it must be beyond 127.0.0.1",
    )
    console_session_idle_s: int = Field(
        default=1800, ge=60, le=7 * 24 * 3600, description="a console session unused this long is over"
    )
    console_session_max_s: int = Field(
        default=12 * 3600, ge=60, le=30 * 24 * 3600, description="a console session is over this long after sign-in"
    )
    console_lockout_failures: int = Field(
        default=5, ge=1, le=100, description="failed console sign-ins in a row that lock the user out"
    )
    console_lockout_s: int = Field(
        default=900, ge=1, le=7 * 24 * 3600, description="how long a console user is locked out after them"
    )
    dispatch_client_id: str = Field(default="headend-dispatch", description="MQTT session id of the dispatcher")
    dispatch_command_ttl_s: int = Field(default=600, ge=10, description="how long a relay command may be executed")
    dispatch_retry_first_s: float = Field(default=15.0, gt=0, description="first resend of an unanswered command")
    dispatch_retry_cap_s: float = Field(default=120.0, gt=0, description="longest pause between resends")
    dispatch_storm_limit: int = Field(
        default=500, ge=0, description="disconnects sent per storm window before the rest wait for approval"
    )
    dispatch_storm_window_s: int = Field(default=600, ge=1, description="the storm limit's window")
    dispatch_poll_s: float = Field(
        default=1.0,
        gt=0,
        description="longest wait for events between dispatcher steps; a new command request wakes it at once",
    )
    dispatch_event_max_age_days: int = Field(
        default=7,
        ge=1,
        le=3660,
        description="a meter event stamped longer ago is refused (too old to say where the relay is now)",
    )
    dispatch_answer_skew_s: int = Field(
        default=3600,
        ge=0,
        description="how long before its command was issued an answer may be stamped (a meter clock running behind)",
    )

    poll_interval_s: int = Field(
        default=900,
        ge=60,
        le=86_400,
        description="`poll`: between load points of a polled meter, from local midnight (900: every 15 minutes)",
    )
    poll_timeout_s: float = Field(
        default=2.0, gt=0, le=60, description="`poll`: how long one request waits for a meter's answer"
    )
    poll_retries: int = Field(default=2, ge=0, le=10, description="`poll`: requests repeated after a failed one")
    poll_retry_backoff_s: float = Field(
        default=0.5, ge=0, le=60, description="`poll`: pause before the first repeat, doubled for each next one"
    )
    poll_snap_s: int = Field(
        default=300,
        ge=0,
        le=899,
        description="`poll`: a register read this soon after a load point is stamped at the load point (as a "
        "concentrator freezes it); later, at the time it was read",
    )
    poll_connections: int = Field(
        default=256, ge=1, le=10_000, description="`poll`: serial buses and meters polled at once, at most"
    )
    dispatch_relay_settle_s: float = Field(
        default=2.0,
        ge=0,
        le=60,
        description="`dispatch`: how long the relay of a Modbus or DL/T 645 meter is read again after a command while "
        "it is not where the command put it (a relay takes a moment to move)",
    )
    dispatch_armed_check_s: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="`dispatch`: between reads of the relays of DL/T 645 meters armed for reconnection (合闸允许), "
        "which tell when the customer pressed the button",
    )
    dlt645_relay_password: SecretStr = Field(
        default=SecretStr("123456"),
        description="`dispatch`: the password of DL/T 645 relay control, 6 hex digits as printed (P2 P1 P0); the "
        "default is the simulated meters' (and many meters' factory) password: change it",
    )
    dlt645_password_level: int = Field(
        default=2, ge=0, le=255, description="`dispatch`: the level (PA) of HEADEND_DLT645_RELAY_PASSWORD"
    )
    dlt645_operator_code: str = Field(
        default="00000000",
        pattern=r"^[0-9A-Fa-f]{8}$",
        description="`dispatch`: the operator code DL/T 645 relay control carries, 8 hex digits as printed (C3..C0)",
    )
    poll_frozen_days: int = Field(
        default=3,
        ge=0,
        le=62,
        description="`poll`: after each local midnight, DL/T 645 meters missing a midnight reading of the last this "
        "many days are read again from their daily frozen data (0: never)",
    )
    reread_wait_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="`reread`: how long the readings MQTT meters and concentrators publish again are awaited",
    )
    reread_check_s: float = Field(
        default=2.0, gt=0, le=60, description="`poll`: how often the worker looks for re-reads asked for"
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="`ingest`, `engine`, `dispatch`, `poll`: the port the worker serves Prometheus metrics on (also "
        "`--metrics-port`); 0: none",
    )
    metrics_host: str = Field(default="127.0.0.1", description="the address the workers' metrics are served on")
    metrics_require_token: bool = Field(
        default=False, description="`serve`: /metrics answers only with an operator's (or admin's) bearer token"
    )
    metrics_query_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="between the queries behind the engine's backlog and the dispatcher's open commands and round "
        "trips (metrics only)",
    )
    metrics_collection_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="`serve`: the day's collection success on /metrics is computed at most once per this",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Asia/Shanghai)") from None
        return value

    @field_validator("dlt645_relay_password")
    @classmethod
    def _dlt645_password(cls, value: SecretStr) -> SecretStr:
        if not re.fullmatch(r"[0-9A-Fa-f]{6}", value.get_secret_value()):
            raise ValueError("a DL/T 645 password is 6 hex digits as printed (P2 P1 P0)")
        return SecretStr(value.get_secret_value().upper())

    @field_validator("dlt645_operator_code")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @field_validator("mqtt_shared_group")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("mqtt_tls_ca_file", "mqtt_tls_cert_file", "mqtt_tls_key_file")
    @classmethod
    def _readable_file(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not Path(value).is_file():
            raise ValueError(f"{value} is not a file")
        return value

    @field_validator(*ACCOUNT_FIELDS, mode="before")
    @classmethod
    def _account_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator(*ACCOUNT_FIELDS)
    @classmethod
    def _account_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not ACCOUNT_NAME.fullmatch(name):
                raise ValueError(f"account {name!r} does not match [A-Za-z0-9_.-]{{1,64}}")
        return value

    @field_validator(
        "broker_ingest_password",
        "broker_dispatch_password",
        "broker_poll_password",
        "broker_monitor_password",
        "broker_simulator_password",
    )
    @classmethod
    def _service_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if len(value.get_secret_value()) < MIN_SERVICE_PASSWORD_CHARS:
            raise ValueError(f"a service account's password has at least {MIN_SERVICE_PASSWORD_CHARS} characters")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.mqtt_tls_cert_file is None) != (self.mqtt_tls_key_file is None):
            raise ValueError("HEADEND_MQTT_TLS_CERT_FILE and HEADEND_MQTT_TLS_KEY_FILE go together")
        names = [name for field in ACCOUNT_FIELDS for name in getattr(self, field)]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"broker account(s) {', '.join(repeated)} given to more than one role")
        return self

    @property
    def mqtt_tls_enabled(self) -> bool:
        """Whether the head-end's MQTT clients connect over TLS."""
        return self.mqtt_tls or self.mqtt_tls_ca_file is not None or self.mqtt_tls_cert_file is not None

    @cached_property
    def zone(self) -> ZoneInfo:
        """The local time zone used at the edges."""
        return ZoneInfo(self.timezone)
