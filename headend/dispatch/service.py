"""The dispatcher's loop over the MQTT executor: meter events first (acknowledged after commit), then a step."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

import psycopg

from headend.db.connection import connect_database
from headend.db.engine import libpq_dsn
from headend.dispatch.dispatcher import DispatchConfig, Dispatcher, DispatchStats
from headend.dispatch.lifecycle import RetryPolicy
from headend.dispatch.mqtt_transport import MqttTransport
from headend.dispatch.wake import wake_on_command_requests
from headend.runtime.status import Status, StatusReporter
from headend.settings import Settings

log = logging.getLogger(__name__)
SUBSCRIBE_WAIT_S = 10.0
# the counters of a status line, with their words
STATUS_LABELS = {
    "taken": "taken",
    "sent": "sent",
    "confirmed": "confirmed",
    "failed": "failed",
    "expired": "expired",
    "held": "held",
    "cancelled": "cancelled",
    "events": "events",
    "rejected_events": "refused events",
}


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
    with (
        connect_database(url) as conn,
        psycopg.connect(libpq_dsn(url), autocommit=True) as audit_conn,
        MqttTransport(settings, settings.dispatch_client_id) as transport,
    ):
        dispatcher = Dispatcher(conn, audit_conn, transport, config=dispatch_config(settings))
        status = StatusReporter(
            log, "dispatch", settings.status_interval_s, STATUS_LABELS, limited=[dispatcher.refused_event_log]
        )

        def status_now() -> Status:
            totals = dispatcher.totals
            return Status({name: getattr(totals, name) for name in STATUS_LABELS}, problem=transport.problem())

        deadline = time.monotonic() + SUBSCRIBE_WAIT_S
        # in slices, so that a stop request ends the wait and status lines go on (the broker may be out of reach)
        while not transport.wait_subscribed(0.2) and not stop.is_set():
            status.tick(status_now)
            if time.monotonic() >= deadline:
                log.warning("no subscription to meter events yet; dispatching anyway, what needs the broker waits")
                break
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
                    dispatcher.handle_event(message.topic, bytes(message.payload))
                    transport.ack(message)
                dispatcher.step()
                status.tick(status_now)
                if once or stop.is_set():
                    return dispatcher.totals
        finally:
            finished.set()
            if listener.is_alive():
                listener.join(5.0)
