"""The dispatcher's loop over the MQTT executor: meter events first (acknowledged after commit), then a step."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import psycopg

from headend.db.connection import connect_database
from headend.db.engine import libpq_dsn
from headend.dispatch.dispatcher import DispatchConfig, Dispatcher, DispatchStats
from headend.dispatch.lifecycle import RetryPolicy
from headend.dispatch.mqtt_transport import MqttTransport
from headend.dispatch.wake import wake_on_command_requests
from headend.settings import Settings

log = logging.getLogger(__name__)


def dispatch_config(settings: Settings) -> DispatchConfig:
    """The dispatcher's configuration from settings."""
    return DispatchConfig(
        command_ttl=timedelta(seconds=settings.dispatch_command_ttl_s),
        retry=RetryPolicy(
            settings.dispatch_retry_first_s, max(settings.dispatch_retry_cap_s, settings.dispatch_retry_first_s)
        ),
        storm_limit=settings.dispatch_storm_limit,
        storm_window=timedelta(seconds=settings.dispatch_storm_window_s),
    )


def run_dispatcher(settings: Settings, url: str, stop: threading.Event, *, once: bool = False) -> DispatchStats:
    """Dispatch until `stop` is set (or one step when `once`); the totals."""
    totals = DispatchStats()
    with (
        connect_database(url) as conn,
        psycopg.connect(libpq_dsn(url), autocommit=True) as audit_conn,
        MqttTransport(settings, settings.dispatch_client_id) as transport,
    ):
        if not transport.wait_subscribed(10.0):
            log.warning("no subscription to meter events yet; commands are sent, answers wait for the broker")
        dispatcher = Dispatcher(conn, audit_conn, transport, config=dispatch_config(settings))
        finished = threading.Event()
        # new command requests end the wait for meter events at once; the poll is the longest pause
        listener = threading.Thread(
            target=wake_on_command_requests, args=(url, transport, stop, finished), name="dispatch-wake", daemon=True
        )
        if not once:
            listener.start()
        try:
            while True:
                for message in transport.events(0.0 if once else settings.dispatch_poll_s):
                    if not dispatcher.handle_event(message.topic, bytes(message.payload)):
                        totals.rejected_events += 1
                    transport.ack(message)
                    totals.events += 1
                step = dispatcher.step()
                for name in ("taken", "sent", "held", "cancelled", "expired"):
                    setattr(totals, name, getattr(totals, name) + getattr(step, name))
                if once or stop.is_set():
                    return totals
        finally:
            finished.set()
            if listener.is_alive():
                listener.join(5.0)
