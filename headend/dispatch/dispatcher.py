"""The command dispatcher: takes relay requests from the outbox, sends them safely, follows meters' answers.

Each command moves in a transaction of its own that holds its row lock and, for an account's command, the
account's row lock while the send-time check runs and the command is published: a payment that commits first
is seen by the check (the disconnect is cancelled), one that commits after finds the command sent. The audit
record of a send is committed (on a second, autocommit connection) before the command leaves.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import psycopg
from psycopg.rows import dict_row

from headend.commissioning.driver import SwitchTestDriver, recheck
from headend.db import faults
from headend.db.faults import is_data_fault
from headend.db.text import storable
from headend.dispatch import store
from headend.dispatch.lifecycle import (
    OPEN_STATES,
    AlarmKind,
    CommandState,
    EventWindow,
    RetryPolicy,
    expected_relay,
    interpret_answer,
)
from headend.dispatch.mqtt_transport import SendError
from headend.engine.accounts import recheck_before_send, record_relay_outcome
from headend.engine.catalog import Catalog
from headend.runtime.status import LimitedLog
from prepay_engine.account import RelayOutcome
from protocols.errors import ProtocolError
from protocols.mqtt_topics import parse_topic
from protocols.readings import RelayState
from protocols.relay_codec import EventCause, MeterEvent, RelayAction, RelayCommandMessage, decode_event

log = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]
Cursor = store.Cursor
DISPATCHER_ACTOR = "dispatcher"
REASON_MAX_CHARS = 1000


class CommandSender(Protocol):
    """A transport's executor: hands one command to the meter or its concentrator; the address used."""

    def send(self, message: RelayCommandMessage, concentrator_id: str | None) -> str:
        """Send, or raise SendError when nothing is known to have left."""
        ...


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    """How long commands live, how they are retried, and the storm limit on disconnects."""

    command_ttl: timedelta = timedelta(minutes=10)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    storm_limit: int = 500  # disconnects first sent within `storm_window`; beyond it they wait for approval
    storm_window: timedelta = timedelta(minutes=10)
    batch: int = 200
    window: EventWindow = field(default_factory=EventWindow)  # when a meter event may be stamped
    button_wait: timedelta = timedelta(minutes=10)  # a commissioning test waits this long for the customer's button


@dataclass(slots=True)
class DispatchStats:
    """What a dispatcher step did, or a dispatcher since it started."""

    taken: int = 0
    sent: int = 0
    held: int = 0
    cancelled: int = 0
    expired: int = 0
    events: int = 0
    rejected_events: int = 0
    confirmed: int = 0  # by a meter's answer
    failed: int = 0  # by a meter's answer

    def add(self, other: DispatchStats) -> None:
        """Add `other`'s counts to these."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class Dispatcher:
    """Moves commands through their lifecycle; call `step` in a loop and `handle_event` for each meter event."""

    def __init__(
        self,
        conn: Connection,
        audit_conn: Connection,
        sender: CommandSender,
        *,
        executors: Mapping[str, CommandSender] | None = None,
        config: DispatchConfig | None = None,
        catalog: Catalog | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        assert audit_conn.autocommit, "send audit records must be durable before the send"
        self._conn = conn
        self._audit_conn = audit_conn
        # one executor per transport (meters.protocol); a protocol without one is held
        self._executors = dict(executors) if executors is not None else {"mqtt": sender}
        self._config = config or DispatchConfig()
        self._catalog = catalog or Catalog()
        self._clock = clock
        self._since: datetime | None = None  # first intake looks at the whole outbox
        self._tests = SwitchTestDriver(self._config.command_ttl, self._config.button_wait)
        self.totals = DispatchStats()  # since this dispatcher was made
        self.refused_event_log = LimitedLog(log, "refused events")

    def use_connections(self, conn: Connection, audit_conn: Connection) -> None:
        """Go on with new connections after the database was lost; the next intake looks at the whole outbox."""
        assert audit_conn.autocommit, "send audit records must be durable before the send"
        self._conn = conn
        self._audit_conn = audit_conn
        self._since = None

    def step(self) -> DispatchStats:
        """Take new requests, move the commissioning tests on (their next commands), then advance every due command."""
        stats = DispatchStats()
        now = self._clock()
        with self._conn.transaction(), self._conn.cursor(row_factory=dict_row) as cur:
            self._catalog.refresh(self._conn)
            stats.taken = len(store.take_requests(cur, now, self._config.command_ttl, self._since))
        # outbox rows are stamped when their transaction began; a long charging batch commits later
        self._since = now - timedelta(minutes=15)
        self._tests.step(self._conn, now)
        for command_id in store.due_command_ids(self._conn, now, self._config.batch):
            self._advance(command_id, stats)
        self.totals.add(stats)
        return stats

    def _advance(self, command_id: str, stats: DispatchStats) -> None:
        now = self._clock()
        with self._conn.transaction(), self._conn.cursor(row_factory=dict_row) as cur:
            command = store.lock_command(cur, command_id, skip_locked=True)
            if command is None or command.state not in (CommandState.CREATED, CommandState.SENT):
                return
            if command.next_attempt_at is None or command.next_attempt_at > now:
                return
            if now >= command.expires_at:
                self._expire(cur, command, now)
                stats.expired += 1
                return
            inputs: dict[str, Any] = {}
            if command.state is CommandState.CREATED:
                account_command = command.account_command
                if account_command is not None:
                    check = recheck_before_send(cur, self._catalog, account_command, now)
                    if not check.send:
                        store.move(
                            cur,
                            command,
                            CommandState.CANCELLED,
                            now,
                            actor=DISPATCHER_ACTOR,
                            detail=check.detail,
                            inputs=check.inputs,
                        )
                        record_relay_outcome(
                            cur, self._catalog, account_command, RelayOutcome.FAILED, now, DISPATCHER_ACTOR
                        )
                        stats.cancelled += 1
                        return
                    inputs = check.inputs
                elif command.test_id is not None:
                    test_check = recheck(cur, command)
                    if not test_check.send:
                        store.move(
                            cur,
                            command,
                            CommandState.CANCELLED,
                            now,
                            actor=DISPATCHER_ACTOR,
                            detail=test_check.detail,
                            inputs=test_check.inputs,
                        )
                        stats.cancelled += 1
                        return
                    inputs = test_check.inputs
                if self._hold(cur, command, now):
                    stats.held += 1
                    return
            if self._send(cur, command, now, inputs):
                stats.sent += 1

    def _hold(self, cur: Cursor, command: store.Command, now: datetime) -> bool:
        if command.action is not RelayAction.DISCONNECT or command.approved_by is not None:
            return False
        alarm = store.open_alarm_id(cur, command.meter_id)
        if alarm is not None:
            why = f"meter {command.meter_id} has unresolved relay alarm {alarm}: an operator must approve"
        else:
            sent = store.disconnects_sent_since(cur, now - self._config.storm_window)
            if sent < self._config.storm_limit:
                return False
            why = (
                f"storm limit: {sent} disconnects sent in the last {self._config.storm_window} "
                f"(limit {self._config.storm_limit}): an operator must approve"
            )
        store.move(cur, command, CommandState.HELD, now, actor=DISPATCHER_ACTOR, detail=why)
        return True

    def _send(self, cur: Cursor, command: store.Command, now: datetime, inputs: dict[str, Any]) -> bool:
        cur.execute("SELECT protocol, endpoint FROM meters WHERE meter_id = %s", (command.meter_id,))
        meter = cur.fetchone()
        protocol = "mqtt" if meter is None else str(meter["protocol"])
        executor = self._executors.get(protocol)
        if executor is None:
            if command.state is CommandState.CREATED:
                store.move(
                    cur,
                    command,
                    CommandState.HELD,
                    now,
                    actor=DISPATCHER_ACTOR,
                    detail=f"no executor for {protocol} meters in this dispatcher",
                )
            return False
        attempt = command.attempts + 1
        if command.concentrator_id:
            via = f"concentrator {command.concentrator_id}"
        elif meter is None or protocol == "mqtt":
            via = "the meter's topic"
        else:
            via = f"{protocol} at {meter['endpoint']}"
        detail = f"attempt {attempt} via {via}"
        with self._audit_conn.cursor(row_factory=dict_row) as audit_cur:
            store.audit(
                audit_cur,
                command.command_id,
                now,
                command.state,
                CommandState.SENT,
                DISPATCHER_ACTOR,
                f"sending {detail}",
                inputs,
            )
        message = RelayCommandMessage(
            command.command_id, command.action, command.meter_id, command.issued_at, command.expires_at
        )
        try:
            address = executor.send(message, command.concentrator_id)
        except SendError as exc:
            with self._audit_conn.cursor(row_factory=dict_row) as audit_cur:
                store.audit(
                    audit_cur,
                    command.command_id,
                    now,
                    command.state,
                    command.state,
                    DISPATCHER_ACTOR,
                    f"not sent: {exc}",
                    {},
                )
            cur.execute(
                "UPDATE commands SET next_attempt_at = %s WHERE command_id = %s",
                (self._config.retry.next_attempt_at(now, max(attempt, 1)), command.command_id),
            )
            log.warning("%s not sent: %s", command.command_id, exc)
            return False
        store.move(
            cur,
            command,
            CommandState.SENT,
            now,
            actor=DISPATCHER_ACTOR,
            detail=f"sent {detail}" if protocol == "mqtt" else f"sent {detail}: {address}",
            audited=True,
            attempts=attempt,
            sent_at=command.sent_at or now,
            next_attempt_at=min(self._config.retry.next_attempt_at(now, attempt), command.expires_at),
        )
        return True

    def _expire(self, cur: Cursor, command: store.Command, now: datetime) -> None:
        store.move(
            cur,
            command,
            CommandState.EXPIRED,
            now,
            actor=DISPATCHER_ACTOR,
            detail=f"no answer by {command.expires_at.isoformat()} after {command.attempts} attempt(s): "
            "nothing is known to have happened",
        )
        account_command = command.account_command
        if account_command is not None:
            record_relay_outcome(cur, self._catalog, account_command, RelayOutcome.FAILED, now, DISPATCHER_ACTOR)

    # --- meter events ----------------------------------------------------------------------------------------

    def handle_event(self, topic: str, payload: bytes) -> bool:
        """Apply one meter event in a transaction of its own; False when it was refused (kept as a dead letter).

        Whatever the message holds, it ends applied or as a dead letter with its reason: an error its content
        causes is rolled back and recorded. Only the database's own failures (a lost connection …) are raised, with
        nothing of the event committed: the caller retries it once the database is back.
        """
        now = self._clock()
        try:
            event = decode_event(parse_topic(topic), payload)
        except ProtocolError as exc:
            return self._refuse(topic, payload, exc.reason, now)
        try:
            with self._conn.transaction(), self._conn.cursor(row_factory=dict_row) as cur:
                reason, moved = self._apply(cur, event, now)
        except Exception as exc:
            if isinstance(exc, psycopg.Error) and not is_data_fault(exc):
                raise
            reason, moved = refusal_reason(exc), None
            if not is_data_fault(exc):
                # a bug, most likely: refused all the same, so that one kind of event cannot stop every reconnect
                log.exception("event on %s could not be applied", storable(topic, REASON_MAX_CHARS))
        if reason is not None:
            return self._refuse(topic, payload, reason, now)
        # counted once committed
        self.totals.events += 1
        if moved is CommandState.CONFIRMED:
            self.totals.confirmed += 1
        elif moved is CommandState.FAILED:
            self.totals.failed += 1
        return True

    def refuse_event(self, topic: str, payload: bytes, reason: str) -> None:
        """Keep an event that cannot be applied as a dead letter with `reason` (e.g. after repeated failures)."""
        self._refuse(topic, payload, reason, self._clock())

    def _apply(self, cur: Cursor, event: MeterEvent, now: datetime) -> tuple[str | None, CommandState | None]:
        """Apply a decoded event: why it is refused (nothing written), or the state it moved a command to."""
        window = self._config.window
        if event.command_id is None:
            if not store.meter_known(cur, event.meter_id):
                return f"unknown meter {event.meter_id!r}", None
            refusal = window.refusal(event.ts, now)
            if refusal is not None:
                return refusal, None
            source = str(event.cause)
            if store.relay_noted(cur, event.meter_id, event.relay, event.ready_for_reconnection, event.ts, source):
                return None, None  # delivered again: applied already
            store.note_relay(cur, event.meter_id, event.relay, event.ready_for_reconnection, event.ts, now, source)
            self._spontaneous(cur, event, now)
            return None, None
        # a command's meter is registered (a foreign key): an answer from an unknown meter answers no command of ours
        command = store.lock_command(cur, event.command_id)
        if command is None or command.meter_id != event.meter_id:
            return f"answer to unknown command {event.command_id} of meter {event.meter_id}", None
        refusal = window.refusal(event.ts, now, command.issued_at)
        if refusal is not None:
            return refusal, None
        store.note_relay(
            cur, event.meter_id, event.relay, event.ready_for_reconnection, event.ts, now, command.command_id
        )
        return None, self._answer(cur, command, event, now)

    def _answer(self, cur: Cursor, command: store.Command, event: MeterEvent, now: datetime) -> CommandState | None:
        """Apply a meter's answer to its command; the state it moved the command to (None for a late answer)."""
        answer = interpret_answer(command.action, command.reconnect_mode, event)
        # the meter's own words (its detail) reach text columns
        detail = storable(answer.detail)
        stamp = {"meter_ts": event.ts.isoformat(), "result": str(event.result), "relay": str(event.relay)}
        actor = f"meter:{event.meter_id}"
        moved: CommandState | None = None
        if command.state not in OPEN_STATES and store.answer_recorded(cur, command.command_id, actor, stamp):
            return None  # the same answer delivered again (its acknowledgement was lost): applied already
        if command.state in OPEN_STATES and command.state is not CommandState.HELD:
            if answer.state is CommandState.CONFIRMED and command.state is not CommandState.ACKNOWLEDGED:
                command = store.move(
                    cur,
                    command,
                    CommandState.ACKNOWLEDGED,
                    now,
                    actor=actor,
                    detail="executed",
                    inputs=stamp,
                    acknowledged_at=now,
                )
            store.move(
                cur,
                command,
                answer.state,
                now,
                actor=actor,
                detail=detail,
                inputs=stamp,
                relay=str(event.relay),
            )
            moved = answer.state
        else:
            # a late answer (expired, superseded, cancelled): the relay's position still counts
            store.audit(
                cur,
                command.command_id,
                now,
                command.state,
                command.state,
                actor,
                f"late answer: {detail}",
                stamp,
            )
        if answer.alarm is not None:
            store.raise_alarm(cur, command.meter_id, command.command_id, answer.alarm, event.relay, detail, now)
        account_command = command.account_command
        if account_command is not None and answer.outcome is not None:
            record_relay_outcome(cur, self._catalog, account_command, answer.outcome, now, actor)
        elif command.action is RelayAction.READ_RELAY:
            self._check_position(cur, event, command.command_id, now)
        return moved

    def _spontaneous(self, cur: Cursor, event: MeterEvent, now: datetime) -> None:
        cur.execute(
            "SELECT account_id, supply, last_observed_sequence FROM prepaid_accounts WHERE meter_id = %s FOR UPDATE",
            (event.meter_id,),
        )
        account = cur.fetchone()
        if account is None:
            return
        if (
            account["supply"] == "reconnect_allowed"
            and event.relay is RelayState.CLOSED
            and event.cause is EventCause.BUTTON_PRESSED
        ):
            cur.execute(
                f"SELECT {', '.join(store.COMMAND_COLUMNS)} FROM commands WHERE account_id = %s AND sequence = %s",
                (account["account_id"], account["last_observed_sequence"]),
            )
            row = cur.fetchone()
            reconnect = None if row is None else store.command_from_row(row).account_command
            if reconnect is not None:
                record_relay_outcome(
                    cur, self._catalog, reconnect, RelayOutcome.CONFIRMED_CLOSED, now, f"meter:{event.meter_id}"
                )
                return
        self._check_position(cur, event, None, now, supply=str(account["supply"]))

    def _check_position(
        self, cur: Cursor, event: MeterEvent, command_id: str | None, now: datetime, supply: str | None = None
    ) -> None:
        if store.meter_under_test(cur, event.meter_id) is not None:
            return  # a commissioning test moves the relay on purpose; its steps say where it found it
        if supply is None:
            cur.execute("SELECT supply FROM prepaid_accounts WHERE meter_id = %s", (event.meter_id,))
            row = cur.fetchone()
            if row is None:
                return
            supply = str(row["supply"])
        expected = expected_relay(supply)
        if expected is not None and expected is not event.relay:
            store.raise_alarm(
                cur,
                event.meter_id,
                command_id,
                AlarmKind.UNEXPECTED_RELAY_CHANGE,
                event.relay,
                f"relay {event.relay} but the account's supply is {supply}"
                + (f" ({event.cause})" if event.cause else ""),
                now,
            )

    def _refuse(self, topic: str, payload: bytes, reason: str, now: datetime) -> bool:
        topic_text, reason_text = storable(topic, REASON_MAX_CHARS), storable(reason, REASON_MAX_CHARS)
        # the same message refused twice (delivered again) is kept once
        self._audit_conn.execute(
            "INSERT INTO dead_letters (received_at, source, topic, payload, reason, payload_sha256) "
            "VALUES (%s, 'dispatch', %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (now, topic_text, payload, reason_text, hashlib.sha256(payload).digest()),
        )
        self.totals.events += 1
        self.totals.rejected_events += 1
        self.refused_event_log.log("refused event on %s: %s", topic_text, reason_text)
        return False


def refusal_reason(exc: BaseException) -> str:
    """A dead letter's reason for an event whose handling raised: the error's first line (and SQLSTATE)."""
    return storable(faults.refusal_reason(exc, "could not be applied"), REASON_MAX_CHARS)
