"""One settings object for the whole application, read from `HEADEND_*` variables."""

from __future__ import annotations

from enum import StrEnum
from functools import cached_property
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    mqtt_host: str | None = Field(default=None, description="broker host; unset means the embedded broker")
    mqtt_port: int = 1883
    mqtt_username: str | None = None
    mqtt_password: str | None = None
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

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Asia/Shanghai)") from None
        return value

    @field_validator("mqtt_shared_group")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @cached_property
    def zone(self) -> ZoneInfo:
        """The local time zone used at the edges."""
        return ZoneInfo(self.timezone)
