"""`headend simulate`: run a simulated meter fleet against the MQTT broker, or write its registry CSV."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import replace
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from zoneinfo import ZoneInfo

import typer

from headend.cli.common import load_settings
from simulators.clock import INTERVAL, INTERVALS_PER_DAY, SimClock, floor_to_grid, is_on_grid, parse_speed

if TYPE_CHECKING:
    from simulators.fleet import Fleet
    from simulators.fleet_sim import SimulationCounts

DEFAULT_INTERVALS = INTERVALS_PER_DAY
# the head-end accepts readings up to 92 days old: a device holding more could send nothing more of use
MAX_HISTORY_DAYS = 92


class Protocol(StrEnum):
    """How simulated meters reach the head-end."""

    MQTT = "mqtt"
    MODBUS = "modbus"
    DLT645 = "dlt645"


def relay_account(username: str) -> str:
    """The broker account of the relay answers of a simulator that publishes readings as `username`."""
    return f"{username}-relay"


def _fraction(value: float, option: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise typer.BadParameter(f"{value} is not within 0..1", param_hint=option)
    return value


def _regions(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not text.strip() or any(not name for name in names):
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of region names", param_hint="--regions")
    return names


def _interval_count(intervals: int | None, days: int | None) -> int:
    if intervals is not None and days is not None:
        raise typer.BadParameter("give either --intervals or --days, not both", param_hint="--intervals/--days")
    if intervals is not None:
        if intervals < 1:
            raise typer.BadParameter(f"{intervals} is not a positive number of intervals", param_hint="--intervals")
        return intervals
    if days is not None:
        if days < 1:
            raise typer.BadParameter(f"{days} is not a positive number of days", param_hint="--days")
        return days * INTERVALS_PER_DAY
    return DEFAULT_INTERVALS


def _start(text: str | None, count: int, zone: ZoneInfo) -> datetime:
    if text is None:
        # end at the latest 15-minute mark, so that no reading lies in the future
        return floor_to_grid(datetime.now(zone)) - (count - 1) * INTERVAL
    try:
        start = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an ISO 8601 time", param_hint="--start") from None
    if start.utcoffset() is None:
        raise typer.BadParameter(f"{text!r} has no UTC offset; add one, e.g. +08:00", param_hint="--start")
    if not is_on_grid(start):
        raise typer.BadParameter(f"{text!r} is not on the 15-minute grid (:00, :15, :30, :45)", param_hint="--start")
    return start.astimezone(zone)


def _button_delay(text: str) -> float | None:
    if text.strip().lower() == "never":
        return None
    try:
        seconds = float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither seconds nor 'never'", param_hint="--button-delay") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise typer.BadParameter(f"{text!r} must be seconds >= 0 or 'never'", param_hint="--button-delay")
    return seconds


def _describe(fleet: Fleet) -> str:
    direct = len(fleet.direct_meters)
    allowed = sum(m.reconnect_mode == "allowed" for m in fleet.meters)
    return (
        f"fleet: {len(fleet.meters)} meters ({direct} direct, {len(fleet.meters) - direct} behind "
        f"{len(fleet.concentrators)} concentrators, {allowed} reconnect-allowed), seed {fleet.seed}"
    )


def simulate(
    meters: Annotated[int, typer.Option(help="number of meters")] = 100,
    concentrators: Annotated[int, typer.Option(help="number of data concentrators (0: every meter direct)")] = 2,
    regions: Annotated[str, typer.Option(help="comma-separated region names")] = "north,south",
    direct_share: Annotated[float, typer.Option(help="share of meters publishing directly, 0..1")] = 0.2,
    seed: Annotated[int, typer.Option(help="seed of every random choice; same seed, same run")] = 1,
    id_prefix: Annotated[str, typer.Option(help="prefix of simulated meter and concentrator ids")] = "SIM",
    start: Annotated[
        str | None, typer.Option(help="first reading time, ISO 8601 with offset [default: ends now]")
    ] = None,
    intervals: Annotated[int | None, typer.Option(help="15-minute intervals to simulate [default: 96]")] = None,
    days: Annotated[int | None, typer.Option(help="days to simulate (96 intervals each)")] = None,
    speed: Annotated[str, typer.Option(help="simulated seconds per real second, or 'max'")] = "900",
    registry_csv: Annotated[Path | None, typer.Option(help="write the fleet's meter registry CSV here")] = None,
    registry_only: Annotated[bool, typer.Option(help="write --registry-csv and exit without publishing")] = False,
    installed_on: Annotated[
        str | None, typer.Option(help="installed_on column of --registry-csv (YYYY-MM-DD): reports expect from then")
    ] = None,
    offline_fraction: Annotated[float, typer.Option(help="share of meters that publish nothing")] = 0.0,
    offline_ids: Annotated[str, typer.Option(help="comma-separated meter ids that publish nothing")] = "",
    drop_rate: Annotated[float, typer.Option(help="probability a message is lost")] = 0.0,
    duplicate_rate: Annotated[float, typer.Option(help="probability a message is sent twice")] = 0.0,
    reorder_rate: Annotated[float, typer.Option(help="probability a message arrives intervals late")] = 0.0,
    drift_fraction: Annotated[float, typer.Option(help="share of meters whose clock drifts off the grid")] = 0.0,
    rollover_fraction: Annotated[float, typer.Option(help="share of meters whose register wraps to 0")] = 0.0,
    obey_commands: Annotated[
        bool,
        typer.Option(help="answer relay commands and re-reads on the meters' and concentrators' command topics"),
    ] = True,
    history_days: Annotated[
        int, typer.Option(help="days of readings each meter and concentrator keeps, sent again on a re-read")
    ] = 7,
    reconnect_allowed_fraction: Annotated[
        float, typer.Option(help="share of meters where a reconnect only arms the relay (合闸允许)")
    ] = 0.0,
    button_delay: Annotated[
        str, typer.Option(help="seconds until the customer presses an armed meter's button, or 'never'")
    ] = "60",
    relay_stuck_fraction: Annotated[
        float, typer.Option(help="share of meters that answer executed but whose relay does not move")
    ] = 0.0,
    relay_reject_fraction: Annotated[float, typer.Option(help="share of meters that reject every command")] = 0.0,
    relay_silent_fraction: Annotated[
        float, typer.Option(help="share of meters that take commands but never answer them")
    ] = 0.0,
    host: Annotated[str | None, typer.Option(help="MQTT broker host [default: HEADEND_MQTT_HOST or 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="MQTT broker port [default: HEADEND_MQTT_PORT]")] = None,
    protocol: Annotated[
        Protocol, typer.Option(help="mqtt: publish to the broker; modbus, dlt645: serve meters for `headend poll`")
    ] = Protocol.MQTT,
    listen: Annotated[
        str, typer.Option(help="modbus, dlt645: HOST:PORT to serve the meters on (a Modbus server, a 645 gateway)")
    ] = "127.0.0.1:5020",
    models: Annotated[
        str, typer.Option(help="modbus: comma-separated register maps, given to the meters in turn")
    ] = "eastron_sdm120,eastron_sdm630,chint_ddsu666,chint_dtsu666,hiking_dds238_2_znsr",
    framing: Annotated[
        str | None,
        typer.Option(help="modbus: tcp (Modbus TCP) or rtu (RTU frames through a transparent gateway) [default: tcp]"),
    ] = None,
) -> None:
    """Simulate a meter fleet publishing readings over MQTT, or polled meters served over Modbus TCP or DL/T 645."""
    if protocol is not Protocol.MQTT:
        from headend.cli.simulate_polled import serve_polled

        if meters < 1:
            raise typer.BadParameter(f"{meters} is not a positive number of meters", param_hint="--meters")
        if registry_only and registry_csv is None:
            raise typer.BadParameter("--registry-only needs --registry-csv PATH", param_hint="--registry-only")
        serve_polled(
            protocol.value,
            listen,
            models,
            meters,
            seed=seed,
            id_prefix=id_prefix,
            region=_regions(regions)[0],
            registry_csv=registry_csv,
            registry_only=registry_only,
            framing=framing,
        )
        return
    from headend.runtime.signals import stop_on_signals
    from simulators.command_responder import CommandResponder
    from simulators.faults import FaultConfig
    from simulators.fleet import build_fleet, write_registry_csv
    from simulators.fleet_sim import FleetSimulation
    from simulators.publisher import BrokerConfig, BrokerError, run_simulation
    from simulators.relay_sim import RelayFault, plan_relay_faults

    if meters < 1:
        raise typer.BadParameter(f"{meters} is not a positive number of meters", param_hint="--meters")
    if concentrators < 0:
        raise typer.BadParameter(f"{concentrators} must not be negative", param_hint="--concentrators")
    if port is not None and not 1 <= port <= 65535:
        raise typer.BadParameter(f"{port} is outside 1..65535", param_hint="--port")
    try:
        installed_day = None if installed_on is None else date.fromisoformat(installed_on)
    except ValueError:
        raise typer.BadParameter(f"{installed_on!r} is not a date YYYY-MM-DD", param_hint="--installed-on") from None
    if registry_only and registry_csv is None:
        raise typer.BadParameter("--registry-only needs --registry-csv PATH", param_hint="--registry-only")
    if not 0 <= history_days <= MAX_HISTORY_DAYS:
        raise typer.BadParameter(f"{history_days} is outside 0..{MAX_HISTORY_DAYS}", param_hint="--history-days")
    region_names = _regions(regions)
    count = _interval_count(intervals, days)
    button_delay_s = _button_delay(button_delay)
    try:
        speed_factor = parse_speed(speed)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--speed") from None
    try:
        faults = FaultConfig(
            offline_fraction=_fraction(offline_fraction, "--offline-fraction"),
            offline_ids=frozenset(i.strip() for i in offline_ids.split(",") if i.strip()),
            drop_rate=_fraction(drop_rate, "--drop-rate"),
            duplicate_rate=_fraction(duplicate_rate, "--duplicate-rate"),
            reorder_rate=_fraction(reorder_rate, "--reorder-rate"),
            drift_fraction=_fraction(drift_fraction, "--drift-fraction"),
            rollover_fraction=_fraction(rollover_fraction, "--rollover-fraction"),
        )
        fleet = build_fleet(
            meters,
            concentrators,
            region_names,
            seed,
            _fraction(direct_share, "--direct-share"),
            id_prefix=id_prefix,
            reconnect_allowed_fraction=_fraction(reconnect_allowed_fraction, "--reconnect-allowed-fraction"),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    unknown = faults.offline_ids - {m.meter_id for m in fleet.meters}
    if unknown:
        raise typer.BadParameter(f"not in the fleet: {', '.join(sorted(unknown))}", param_hint="--offline-ids")
    stuck = _fraction(relay_stuck_fraction, "--relay-stuck-fraction")
    reject = _fraction(relay_reject_fraction, "--relay-reject-fraction")
    silent = _fraction(relay_silent_fraction, "--relay-silent-fraction")
    if round(stuck * meters) + round(reject * meters) + round(silent * meters) > meters:
        raise typer.BadParameter(
            "the stuck, reject and silent fractions add up to more than every meter", param_hint="--relay-*-fraction"
        )

    if registry_csv is not None:
        try:
            rows = write_registry_csv(fleet, registry_csv, installed_on=installed_day)
        except OSError as exc:
            raise typer.BadParameter(f"cannot write {registry_csv}: {exc}", param_hint="--registry-csv") from None
        typer.echo(f"wrote {rows} meters to {registry_csv}")
        if registry_only:
            return

    settings = load_settings()
    zone = settings.zone
    clock = SimClock(_start(start, count, zone), speed_factor)
    broker = BrokerConfig(
        host=host or settings.mqtt_host or "127.0.0.1",
        port=port or settings.mqtt_port,
        username=settings.mqtt_username,
        password=settings.mqtt_password,
        tls=settings.mqtt_tls_enabled,
        ca_file=settings.mqtt_tls_ca_file,
        cert_file=settings.mqtt_tls_cert_file,
        key_file=settings.mqtt_tls_key_file,
        tls_insecure=settings.mqtt_tls_insecure,
    )
    simulation = FleetSimulation(fleet, faults, zone=zone, history_intervals=history_days * INTERVALS_PER_DAY)
    typer.echo(_describe(fleet))
    typer.echo(
        f"publishing {count} intervals from {clock.start.isoformat()} at "
        f"{'max speed' if speed_factor is None else f'{speed_factor:g}x'} to {broker.host}:{broker.port}"
    )
    responder = None
    if obey_commands:
        relay_faults = plan_relay_faults(
            [m.meter_id for m in fleet.meters],
            seed,
            stuck_fraction=stuck,
            reject_fraction=reject,
            silent_fraction=silent,
            # a meter that publishes no readings hears no commands either
            offline_ids=simulation.plan.offline_ids,
        )
        # the responder moves the MeterSims' relays, so an open relay meters nothing in the readings published
        # a broker configured by `headend broker-config` takes the username as the session id: the responder's
        # connection needs an account of its own, or the two connections would keep disconnecting each other
        relay_broker = broker if broker.username is None else replace(broker, username=relay_account(broker.username))
        responder = CommandResponder(
            fleet,
            relay_broker,
            faults=relay_faults,
            meters=simulation.meters,
            history=simulation.history,
            button_delay_s=button_delay_s,
        )
        faulty = sum(1 for f in relay_faults.values() if f is not RelayFault.NONE)
        typer.echo(
            f"answering relay commands ({faulty} meters with a relay fault) and re-reads "
            f"(the last {history_days} days of readings held)"
        )

    def progress(instant: datetime, counts: SimulationCounts) -> None:
        if counts.intervals % INTERVALS_PER_DAY == 0:
            typer.echo(f"{instant.isoformat()}: {counts.messages} messages, {counts.readings} readings")

    with stop_on_signals() as stop:
        try:
            with responder if responder is not None else nullcontext():
                stats = run_simulation(simulation, clock, count, broker, stop=stop, progress=progress)
        except BrokerError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    for line in stats.lines():
        typer.echo(line)
    if responder is not None:
        for line in responder.counts.lines():
            typer.echo(f"commands {line}")
    if stats.messages_unconfirmed:
        typer.echo(f"error: {stats.messages_unconfirmed} messages were not acknowledged by the broker", err=True)
        raise typer.Exit(1)
    if stats.interrupted:
        raise typer.Exit(130)
