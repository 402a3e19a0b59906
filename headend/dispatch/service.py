"""The dispatcher's loop over its executors: meter events first (acknowledged after commit), then a step.

MQTT meters are commanded over the broker; Modbus and DL/T 645 meters over the polled executor's links, whose answers
(read back from the meters) are applied as the MQTT meters' events are.

The loop outlives its dependencies. A failure of the database (a restart, a failover, an administrator's
pg_terminate_backend) closes both of the dispatcher's connections and opens them again with a doubling pause; the
events in hand stay unacknowledged and are handled again once it is back (nothing of them was committed), and the
next intake looks at the whole outbox. The broker's client reconnects and subscribes again by itself. While either
is out of reach, the status line says so every period.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import psycopg

from headend.db.connection import connect_database
from headend.db.engine import connect_utc, libpq_dsn
from headend.dispatch.dispatcher import DispatchConfig, Dispatcher, DispatchStats
from headend.dispatch.lifecycle import EventWindow, RetryPolicy
from headend.dispatch.mqtt_transport import InboundEvent, MqttTransport
from headend.dispatch.polled_executor import PolledConfig, PolledExecutor
from headend.dispatch.wake import wake_on_command_requests
from headend.runtime.status import Status, StatusReporter
from headend.settings import Settings

if TYPE_CHECKING:
    from headend.dispatch.metrics import DispatchMetrics

log = logging.getLogger(__name__)
SUBSCRIBE_WAIT_S = 10.0
RECONNECT_FIRST_S = 0.5  # the pause before the first attempt to reopen a lost database connection, then doubled
RECONNECT_MAX_S = 30.0
# a server that does not answer at all (a host gone) must not hold the loop, and its status lines, for minutes
CONNECT_TIMEOUT_S = 10
PAUSE_SLICE_S = 0.5  # a pause is waited in slices: a stop request ends it, status lines go on
# an event whose handling failed with the database's errors this often in a row (the database coming back each
# time) is refused: whatever it is, it must not hold back the events behind it for ever
MAX_EVENT_ATTEMPTS = 5
ONCE_WAIT_S = 60.0  # `--once`: the longest wait for the polled meters' answers to the commands of its step
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

Connection = psycopg.Connection[Any]


def dispatch_config(settings: Settings) -> DispatchConfig:
    """The dispatcher's configuration from settings."""
    return DispatchConfig(
        command_ttl=timedelta(seconds=settings.dispatch_command_ttl_s),
        retry=RetryPolicy(
            settings.dispatch_retry_first_s, max(settings.dispatch_retry_cap_s, settings.dispatch_retry_first_s)
        ),
        storm_limit=settings.dispatch_storm_limit,
        storm_window=timedelta(seconds=settings.dispatch_storm_window_s),
        window=EventWindow(
            future_tolerance=timedelta(seconds=settings.future_tolerance_s),
            max_age=timedelta(days=settings.dispatch_event_max_age_days),
            answer_skew=timedelta(seconds=settings.dispatch_answer_skew_s),
        ),
    )


def polled_config(settings: Settings) -> PolledConfig:
    """The polled executor's configuration from settings: the poller's request timeout, the relay control's codes."""
    return PolledConfig(
        timeout_s=settings.poll_timeout_s,
        settle_s=settings.dispatch_relay_settle_s,
        armed_check_s=settings.dispatch_armed_check_s,
        dlt645_password=settings.dlt645_relay_password.get_secret_value(),
        dlt645_password_level=settings.dlt645_password_level,
        dlt645_operator_code=settings.dlt645_operator_code,
    )


class DatabaseLink:
    """The dispatcher's two connections (its transactions, and the autocommit one of send records and dead letters).

    After a failure of the database (a lost connection, or any error that is not an event's fault) both are closed
    and opened again, the pause doubling from RECONNECT_FIRST_S to RECONNECT_MAX_S until an iteration of the loop
    succeeds: a database that accepts connections but fails every step is not hammered either.
    """

    def __init__(self, url: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._url = url
        self._clock = clock
        self.conn: Connection | None = None
        self.audit_conn: Connection | None = None
        self._failures = 0  # since the loop last went round without one
        self._failing_since = 0.0
        self._next_attempt_at = 0.0
        self._error = ""

    def open_first(self, stack: contextlib.ExitStack) -> tuple[Connection, Connection]:
        """The first connections; a failure is raised as the set-up error that says what to do."""
        self.conn = stack.enter_context(connect_database(self._url))
        self.audit_conn = psycopg.connect(libpq_dsn(self._url), autocommit=True)
        return self.conn, self.audit_conn

    @property
    def lost(self) -> bool:
        """Whether the connections are closed and must be reopened."""
        return self.conn is None or self.audit_conn is None

    def failed(self, exc: BaseException) -> None:
        """Record a failure of the database (or of an attempt to reconnect) and close both connections."""
        if not self._failures:
            self._failing_since = self._clock()
            log.warning("the database failed (%s); events wait unacknowledged, reconnecting", _first_line(exc))
        self._failures += 1
        self._error = _first_line(exc)
        self.close()
        pause = min(RECONNECT_MAX_S, RECONNECT_FIRST_S * 2 ** min(self._failures - 1, 16))
        self._next_attempt_at = self._clock() + pause

    def reconnect(self) -> tuple[Connection, Connection] | None:
        """Both connections, reopened when the pause is over; None while it lasts (and when this attempt failed)."""
        if self._clock() < self._next_attempt_at:
            return None
        try:
            conn = connect_utc(self._url, timeout_s=CONNECT_TIMEOUT_S)
            try:
                audit_conn = psycopg.connect(libpq_dsn(self._url), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
            except BaseException:
                conn.close()
                raise
        except psycopg.Error as exc:
            log.warning("cannot reconnect to the database (failure %d): %s", self._failures + 1, _first_line(exc))
            self.failed(exc)
            return None
        log.info("reconnected to the database, %.0f s after it failed", self._clock() - self._failing_since)
        self.conn, self.audit_conn = conn, audit_conn
        return conn, audit_conn

    def succeeded(self) -> None:
        """The loop went round without a failure of the database: the next one starts the pauses afresh."""
        self._failures = 0

    def pause_s(self) -> float:
        """How long until the next attempt to reconnect."""
        return max(0.0, self._next_attempt_at - self._clock())

    def problem(self) -> str | None:
        """What is wrong with the database, for a status line; None while it works."""
        if not self._failures:
            return None
        state = "no database connection" if self.lost else "the database failing"
        return (
            f"{state} for {self._clock() - self._failing_since:.0f} s: {self._error} "
            f"({self._failures} failure(s)); events wait unacknowledged"
        )

    def close(self) -> None:
        """Close both connections, whatever state they are in."""
        for conn in (self.conn, self.audit_conn):
            if conn is not None:
                try:
                    conn.close()
                except psycopg.Error:
                    log.debug("closing a lost connection failed", exc_info=True)
        self.conn = self.audit_conn = None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def run_dispatcher(
    settings: Settings, url: str, stop: threading.Event, *, once: bool = False, metrics: DispatchMetrics | None = None
) -> DispatchStats:
    """Dispatch until `stop` is set (or one step when `once`), counting into `metrics` if given; the totals."""
    link = DatabaseLink(url)
    with contextlib.ExitStack() as stack:
        stack.callback(link.close)
        conn, audit_conn = link.open_first(stack)
        transport = stack.enter_context(MqttTransport(settings, settings.dispatch_client_id))
        polled = stack.enter_context(PolledExecutor(url, polled_config(settings), wake=transport.wake))
        dispatcher = Dispatcher(
            conn,
            audit_conn,
            transport,
            executors={"mqtt": transport, "modbus": polled, "dlt645": polled},
            config=dispatch_config(settings),
        )
        return _run(settings, url, stop, once, link, dispatcher, transport, polled, metrics)


class Pending:
    """Events received and not yet committed (nor acknowledged), in order, with the attempts at the first."""

    def __init__(self) -> None:
        self.events: deque[InboundEvent] = deque()
        self.attempts = 0  # of the first event, each ended by a failure of the database

    def apply(self, dispatcher: Dispatcher, transport: MqttTransport) -> None:
        """Apply the events in order, each acknowledged once committed; a failure of the database is raised."""
        while self.events:
            message = self.events[0]
            if self.attempts >= MAX_EVENT_ATTEMPTS:
                dispatcher.refuse_event(
                    message.topic,
                    message.payload,
                    f"could not be applied: the database failed {self.attempts} times while it was handled",
                )
            else:
                self.attempts += 1
                dispatcher.handle_event(message.topic, message.payload)
            self.attempts = 0
            transport.ack(message)  # nothing to acknowledge for a polled meter's answer (QoS 0)
            self.events.popleft()


def _run(
    settings: Settings,
    url: str,
    stop: threading.Event,
    once: bool,
    link: DatabaseLink,
    dispatcher: Dispatcher,
    transport: MqttTransport,
    polled: PolledExecutor,
    metrics: DispatchMetrics | None,
) -> DispatchStats:
    status = StatusReporter(
        log, "dispatch", settings.status_interval_s, STATUS_LABELS, limited=[dispatcher.refused_event_log]
    )

    def status_now() -> Status:
        totals = dispatcher.totals
        problems = [p for p in (transport.problem(), link.problem()) if p is not None]
        return Status({name: getattr(totals, name) for name in STATUS_LABELS}, problem="; ".join(problems) or None)

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
    pending = Pending()
    try:
        while True:
            if link.lost:
                reopened = link.reconnect()
                if reopened is not None:
                    dispatcher.use_connections(*reopened)
                else:
                    stop.wait(min(PAUSE_SLICE_S, link.pause_s()))
            else:
                try:
                    wait_s = 0.0 if once or pending.events else settings.dispatch_poll_s
                    pending.events.extend(transport.events(wait_s))
                    pending.events.extend(polled.answers())
                    pending.apply(dispatcher, transport)
                    dispatcher.step()
                    if once:
                        # the polled meters' answers come within their requests' timeouts: applied before the end
                        polled.wait_idle(ONCE_WAIT_S)
                        pending.events.extend(polled.answers())
                        pending.apply(dispatcher, transport)
                    link.succeeded()
                except psycopg.Error as exc:
                    # the database's failure (an event's own fault ends as a dead letter inside handle_event)
                    if once:
                        raise
                    link.failed(exc)
            status.tick(status_now)
            if metrics is not None:
                metrics.tick(dispatcher, link.conn)
            if once or stop.is_set():
                return dispatcher.totals
    finally:
        finished.set()
        if listener.is_alive():
            listener.join(5.0)
