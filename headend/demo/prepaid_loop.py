"""The prepaid loop of `headend demo`: accounts on simulated meters, the engine, the dispatcher, and the story told.

The simulated fleet itself is `headend/demo/run.py`'s (the one module of `headend` that may import `simulators`): it
describes its meters as `DemoMeter`s and hands over the simulated meters that obey relay commands. The polled meters'
accounts are another part of the story (`headend/demo/polled_story.py`), told by the same loop, charged by the same
engine and commanded by the same dispatcher.

Two clocks, on purpose. The fleet reports a past day faster than real time, so the engine runs on simulated
time (`SimulatedNow`, the instant the fleet has reported up to): charges, notices, decisions and the demo's
payments are dated within the simulated day, in step with the readings. The dispatcher and the simulated meters
run on the wall clock: a meter checks a command's `expires_at` against its own real clock, so a command stamped
with simulated time (a day ago) would arrive expired. The polled meters meter on simulated time (they are read at its
load points); a DL/T 645 meter's own clock is then a day behind, and a command's wall-clock valid-until still to come.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol
from zoneinfo import ZoneInfo

import psycopg

from headend.db.connection import connect_database
from headend.dispatch.service import run_dispatcher
from headend.engine.accounts import open_account, pay
from headend.engine.catalog import Catalog, CatalogError, put_policy, put_tariff
from headend.engine.runner import EngineRunner
from headend.money import ledger_store
from headend.settings import Settings
from prepay_engine.ledger import CUSTOMER_ID_PATTERN, prepaid_account_id
from prepay_engine.payments import ToppedUp, TopUp
from prepay_engine.policy import FriendlyCreditWindows, PolicyConfig
from prepay_engine.tariffs import example_jiangsu_residential

log = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]
Echo = Callable[[str], None]
Obey = Callable[[], contextlib.AbstractContextManager[object]]

INTERVAL: Final = timedelta(minutes=15)

ACCOUNTS: Final = 5
OPENING_CREDIT_FEN: Final = 400
PAYMENT_FEN: Final = 1_000
CHANNEL: Final = "demo"
ACTOR: Final = "demo"
ACCOUNT_PREFIX: Final = "PP-"
LATENESS_S: Final = 30.0
ENGINE_POLL_S: Final = 0.1
SETTLE_S: Final = 20.0
# the simulated households spend a few yuan a day, so the thresholds are a tenth of a real policy's ¥30 / ¥10
DEMO_POLICY: Final = PolicyConfig(
    name="demo",
    warning_thresholds_fen=(300, 100),
    disconnect_threshold_fen=0,
    notice_period=timedelta(0),
    friendly=FriendlyCreditWindows(None, None, weekends=False, public_holidays=False, eve_of_public_holidays=False),
)
OPEN_STATES: Final = ("created", "held", "sent", "acknowledged")


def yuan(fen: int) -> str:
    """An amount in fen as yuan with two decimals, e.g. -¥0.05."""
    sign = "-" if fen < 0 else ""
    return f"{sign}¥{abs(fen) // 100}.{abs(fen) % 100:02d}"


class SimulatedNow:
    """The engine's clock: the latest instant the simulated fleet has reported (moved by the simulator thread)."""

    def __init__(self, start: datetime) -> None:
        self._now = start.astimezone(UTC)
        self.final = False

    def __call__(self) -> datetime:
        """The simulated instant now (aware, UTC)."""
        return self._now

    def advance(self, instant: datetime, counts: object) -> None:
        """Progress callback of the simulation: it has published the readings of `instant`."""
        self._now = max(self._now, instant.astimezone(UTC))

    def finish(self) -> None:
        """The fleet has reported its last interval; one more interval lets the engine charge it."""
        self._now += INTERVAL
        self.final = True


@dataclass(frozen=True, slots=True)
class DemoMeter:
    """A simulated meter that reports, as the demo describes it: its mean daily use and its register at the start."""

    meter_id: str
    concentrator_id: str | None
    kind: str
    daily_wh: float
    register_wh: int


@dataclass(frozen=True, slots=True)
class DemoAccount:
    """A prepaid account the demo opened, and its simulated meter."""

    account_id: str
    meter: DemoMeter


def account_id_of(meter: DemoMeter) -> str:
    """The demo account id of a meter."""
    return f"{ACCOUNT_PREFIX}{meter.meter_id}"


def store_catalog(conn: Connection, now: datetime) -> str:
    """Store the example tariff and the demo policy (no-ops when unchanged); the tariff's code."""
    tariff = example_jiangsu_residential()
    try:
        put_tariff(conn, tariff, stored_by=ACTOR, now=now)
    except CatalogError as exc:
        log.warning("keeping the stored tariff %s: %s", tariff.code, exc)
    put_policy(conn, DEMO_POLICY, stored_by=ACTOR)
    return tariff.code


def pick_meters(conn: Connection, candidates: Sequence[DemoMeter], start: datetime, count: int) -> list[DemoMeter]:
    """The heaviest users among `candidates` that serve no account and have no reading after `start` yet.

    An earlier demo run keeps its accounts, and the readings it stored would be replayed instead of the new ones.
    """
    ids = [m.meter_id for m in candidates]
    serving = {
        str(r[0])
        for r in conn.execute(
            "SELECT meter_id FROM account_meters WHERE removed_at IS NULL AND meter_id = ANY(%s)", (ids,)
        ).fetchall()
    }
    existing = {
        str(r[0])
        for r in conn.execute(
            "SELECT account_id FROM prepaid_accounts WHERE account_id = ANY(%s)",
            ([account_id_of(m) for m in candidates],),
        ).fetchall()
    }
    read = {
        str(r[0])
        for r in conn.execute(
            "SELECT DISTINCT meter_id FROM readings WHERE meter_id = ANY(%s) AND ts > %s", (ids, start)
        ).fetchall()
    }
    free = [
        m
        for m in candidates
        if m.meter_id not in serving | read
        and account_id_of(m) not in existing
        and CUSTOMER_ID_PATTERN.fullmatch(account_id_of(m))
    ]
    return sorted(free, key=lambda m: (-m.daily_wh, m.meter_id))[:count]


def open_demo_accounts(
    conn: Connection,
    catalog: Catalog,
    tariff_code: str,
    meters: Sequence[DemoMeter],
    opened_at: datetime,
    zone: ZoneInfo,
) -> list[DemoAccount]:
    """Open an account on each meter charging from its register at `opened_at`, and top it up."""
    accounts = []
    for meter in meters:
        account_id = account_id_of(meter)
        open_account(
            conn,
            catalog,
            account_id,
            meter_id=meter.meter_id,
            tariff_code=tariff_code,
            policy_code=DEMO_POLICY.name,
            opened_at=opened_at,
            opening_register_wh=meter.register_wh,
            zone=zone,
            actor=ACTOR,
        )
        top_up = TopUp(CHANNEL, f"open-{account_id}", account_id, OPENING_CREDIT_FEN, opened_at)
        pay(conn, catalog, top_up, now=opened_at, received_by=ACTOR)
        accounts.append(DemoAccount(account_id, meter))
    return accounts


def payment_fen(balance_fen: int) -> int:
    """What the demo's customer pays: the arrears rounded up to the yuan, and PAYMENT_FEN on top."""
    arrears = max(0, -balance_fen)
    return -(-arrears // 100) * 100 + PAYMENT_FEN


def dispatch_settings(settings: Settings) -> Settings:
    """The dispatcher's settings for the demo: a short-lived session of its own, no shared group, quick resends."""
    return settings.model_copy(
        update={
            "dispatch_client_id": f"headend-demo-dispatch-{uuid.uuid4().hex[:8]}",
            "mqtt_session_expiry_s": 60,
            "mqtt_shared_group": None,
            "dispatch_retry_first_s": 2.0,
            "dispatch_retry_cap_s": 10.0,
            "dispatch_poll_s": 0.1,
            # the armed (合闸允许) polled meters' relays read often: the simulated customer presses at once
            "dispatch_armed_check_s": 0.5,
        }
    )


@dataclass(frozen=True, slots=True)
class Reading:
    """A stored reading as the story tells it: when, the relay, the power, the energy of the interval before."""

    ts: datetime
    relay: str | None
    power_w: int | None
    used_wh: int | None


@dataclass(frozen=True, slots=True)
class CommandStep:
    """One audit record of a command of a demo account, as read."""

    account_id: str
    action: str
    meter_id: str
    state: str
    detail: str


class Narrator:
    """Tells what happened to some demo accounts, read from the database: their notices and their commands' steps."""

    def __init__(self, conn: Connection, ids: Sequence[str], now: SimulatedNow, zone: ZoneInfo, echo: Echo) -> None:
        self.conn = conn
        self.ids = list(ids)
        self.now = now
        self.zone = zone
        self.echo = echo
        self._notices: set[str] = set()
        self._audit: set[int] = set()

    def say(self, account_id: str, text: str) -> None:
        """One line of the story, at the simulated time now."""
        self.echo(f"  {self.now().astimezone(self.zone):%a %H:%M}  {account_id}  {text}")

    def tell_notices(self) -> None:
        """Tell the warnings and zero-balance notices not told yet."""
        rows = self.conn.execute(
            "SELECT request_id, account_id, threshold_fen, balance_fen FROM notification_outbox "
            "WHERE account_id = ANY(%s) ORDER BY created_at, request_id",
            (self.ids,),
        ).fetchall()
        for request_id, account_id, threshold_fen, balance_fen in rows:
            if request_id in self._notices:
                continue
            self._notices.add(request_id)
            if threshold_fen is None:
                self.say(account_id, f"zero-balance notice sent: balance {yuan(balance_fen)}")
            else:
                self.say(account_id, f"low-balance warning sent: balance {yuan(balance_fen)} ≤ {yuan(threshold_fen)}")

    def tell_commands(self, text: Callable[[CommandStep, str, Any], str | None] | None = None) -> list[CommandStep]:
        """Tell the commands' steps not told yet (`text` may word a step otherwise, given its actor and inputs)."""
        rows = self.conn.execute(
            "SELECT a.seq, c.account_id, c.action, c.meter_id, a.to_state, a.actor, a.detail, a.inputs "
            "FROM command_audit a JOIN commands c USING (command_id) WHERE c.account_id = ANY(%s) ORDER BY a.seq",
            (self.ids,),
        ).fetchall()
        steps = []
        for seq, account_id, action, meter_id, state, actor, detail, inputs in rows:
            if seq in self._audit:
                continue
            self._audit.add(seq)
            step = CommandStep(account_id, action, meter_id, state, detail)
            worded = None if text is None else text(step, actor, inputs)
            worded = worded or command_text(action, meter_id, state, actor, detail, inputs)
            if worded is not None:
                self.say(account_id, worded)
            steps.append(step)
        return steps

    def reading_after(self, meter_id: str, after: datetime) -> Reading | None:
        """The meter's first reading stamped after `after`, with the energy used since the one before it."""
        row = self.conn.execute(
            "SELECT ts, relay_state, power_w, energy_import_wh FROM readings WHERE meter_id = %s AND ts > %s "
            "ORDER BY ts LIMIT 1",
            (meter_id, after),
        ).fetchone()
        if row is None:
            return None
        before = self.conn.execute(
            "SELECT energy_import_wh FROM readings WHERE meter_id = %s AND ts < %s ORDER BY ts DESC LIMIT 1",
            (meter_id, row[0]),
        ).fetchone()
        used = None if before is None else int(row[3]) - int(before[0])
        return Reading(row[0], row[1], row[2], used)

    def pay(self, catalog: Catalog, account_id: str, channel: str) -> None:
        """The customer pays the arrears and PAYMENT_FEN through `channel` (simulated), at the simulated time now."""
        at = self.now()
        [(_, balance, _)] = balances_of(self.conn, [account_id])
        amount = payment_fen(balance)
        top_up = TopUp(channel, f"pay-{account_id}", account_id, amount, at)
        result = pay(self.conn, catalog, top_up, now=at, received_by=ACTOR)
        after = result.outcome.balances.prepaid_fen if isinstance(result.outcome, ToppedUp) else None
        then = "" if after is None else f" → balance {yuan(after)}"
        self.say(account_id, f"payment {yuan(amount)} credited (simulated, channel {channel}){then}")

    def commands_open(self) -> int:
        """How many commands of the accounts are still under way."""
        row = self.conn.execute(
            "SELECT count(*) FROM commands WHERE account_id = ANY(%s) AND state = ANY(%s)",
            (self.ids, list(OPEN_STATES)),
        ).fetchone()
        assert row is not None
        return int(row[0])

    def balances(self, label: str) -> str:
        """One line with every account's balance now."""
        parts = [f"{a} {yuan(b)}" for a, b, _ in balances_of(self.conn, self.ids)]
        return f"  {label} at {self.now().astimezone(self.zone):%a %H:%M}: {' · '.join(parts)}"


@dataclass
class Story:
    """Tells what happens to the demo accounts, read from the database, and makes the demo's payment."""

    conn: Connection
    catalog: Catalog
    accounts: Sequence[DemoAccount]
    now: SimulatedNow
    zone: ZoneInfo
    echo: Echo
    _narrator: Narrator = field(init=False)
    _cuts: list[tuple[DemoAccount, datetime]] = field(default_factory=list, init=False)
    _paid: DemoAccount | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._narrator = Narrator(self.conn, [a.account_id for a in self.accounts], self.now, self.zone, self.echo)

    @property
    def ids(self) -> list[str]:
        """The demo account ids."""
        return [a.account_id for a in self.accounts]

    def poll(self) -> None:
        """Tell what happened since the last poll; pay for an account cut off once its meter shows it."""
        self._narrator.tell_notices()
        for step in self._narrator.tell_commands():
            if step.action == "disconnect" and step.state == "confirmed":
                account = next(a for a in self.accounts if a.account_id == step.account_id)
                self._cuts.append((account, self.now()))
        self._pay_when_cut()

    def _payee(self) -> tuple[DemoAccount, datetime] | None:
        """The first account cut off on a direct meter (its readings show the relay), else, at the end, any."""
        direct = [c for c in self._cuts if c[0].meter.concentrator_id is None]
        candidates = direct or (self._cuts if self.now.final else [])
        return candidates[0] if candidates else None

    def _pay_when_cut(self) -> None:
        payee = None if self._paid is not None else self._payee()
        if payee is None:
            return
        account, cut_at = payee
        # a reading stamped two intervals after the confirmation was certainly made with the relay open
        reading = self._narrator.reading_after(account.meter.meter_id, cut_at + INTERVAL)
        if reading is None and not self.now.final:
            return
        if reading is not None:
            self._narrator.say(account.account_id, reading_text(account.meter.meter_id, reading, self.zone))
        self._paid = account
        self._narrator.pay(self.catalog, account.account_id, CHANNEL)

    def settled(self) -> bool:
        """Whether no command of a demo account is still under way and the payment, if due, is made."""
        if self._cuts and self._paid is None:
            return False
        return self._narrator.commands_open() == 0

    def balances(self) -> str:
        """One line with every demo account's balance now."""
        return self._narrator.balances("balances")


def command_text(action: str, meter_id: str, state: str, actor: str, detail: str, inputs: Any) -> str | None:
    """What one audit record of a command means to an operator (None: not worth a line)."""
    if state == "created":
        reasons = [r["text"] for r in (inputs or {}).get("reasons") or [] if isinstance(r, dict) and "text" in r]
        return f"{action} requested by {actor}" + (f": {reasons[0]}" if reasons else "")
    if state == "sent":
        if detail.startswith("sending"):
            return f"{action} sent to meter {meter_id} ({detail.removeprefix('sending ')})"
        return f"{action} {detail}" if detail.startswith("not sent") else None
    if state == "confirmed":
        relay = (inputs or {}).get("relay")
        return f"{action} confirmed by the meter (relay {relay})"
    if state == "acknowledged":
        return None
    return f"{action} {state}: {detail}"


def reading_text(meter_id: str, reading: Reading, zone: ZoneInfo) -> str:
    """A reading as the story tells it: the relay (a cut-off meter's proof that it meters nothing), power, energy."""
    relay = f"relay {reading.relay}" if reading.relay else "relay not reported (via its concentrator)"
    power = "" if reading.power_w is None else f", {reading.power_w} W"
    used = "" if reading.used_wh is None else f", {reading.used_wh} Wh used in the interval before"
    return f"meter {meter_id} reading at {reading.ts.astimezone(zone):%H:%M}: {relay}{power}{used}"


def balances_of(conn: Connection, account_ids: Sequence[str]) -> list[tuple[str, int, str]]:
    """Each account's balance in fen and its supply state."""
    supply = dict(
        conn.execute(
            "SELECT account_id, supply FROM prepaid_accounts WHERE account_id = ANY(%s)", (list(account_ids),)
        ).fetchall()
    )
    ledger = dict(
        conn.execute(
            "SELECT account_id, balance_fen FROM ledger_accounts WHERE account_id = ANY(%s)",
            ([prepaid_account_id(a) for a in account_ids],),
        ).fetchall()
    )
    return [(a, int(ledger[prepaid_account_id(a)]), str(supply[a])) for a in account_ids]


def summary_lines(conn: Connection, accounts: Sequence[DemoAccount]) -> list[str]:
    """The loop's outcome: accounts, warnings, disconnects and reconnects confirmed, payments, the ledger's health."""
    ids = [a.account_id for a in accounts]
    notices = dict(
        conn.execute(
            "SELECT kind, count(*) FROM notification_outbox WHERE account_id = ANY(%s) GROUP BY kind", (ids,)
        ).fetchall()
    )
    confirmed = dict(
        conn.execute(
            "SELECT action, count(*) FROM commands WHERE account_id = ANY(%s) AND state = 'confirmed' GROUP BY action",
            (ids,),
        ).fetchall()
    )
    paid = conn.execute(
        "SELECT count(*), coalesce(sum(amount_fen), 0) FROM payments "
        "WHERE account_id = ANY(%s) AND channel = %s AND channel_txn_id LIKE 'pay-%%'",
        (ids, CHANNEL),
    ).fetchone()
    assert paid is not None
    problems = ledger_store.check_invariants(conn)
    return [
        "Prepaid loop",
        f"  accounts              : {len(ids)}, opened with {yuan(OPENING_CREDIT_FEN)} each",
        f"  warnings sent         : {notices.get('low_balance_warning', 0)} low-balance, "
        f"{notices.get('zero_balance', 0)} zero-balance",
        f"  disconnects confirmed : {confirmed.get('disconnect', 0)}",
        f"  payments              : {paid[0]} ({yuan(int(paid[1]))}, channel {CHANNEL})",
        f"  reconnects confirmed  : {confirmed.get('reconnect', 0)}",
        *(f"    {a:<22}{yuan(b):>9}  {s}" for a, b, s in balances_of(conn, ids)),
        "  ledger                : "
        + ("every invariant holds" if not problems else f"{len(problems)} problem(s): " + "; ".join(problems)),
    ]


class StoryPart(Protocol):
    """Another part of the story, told beside the MQTT accounts' (the polled meters')."""

    def poll(self) -> None:
        """Tell what happened since the last poll; take the part's next step when due."""

    def settled(self) -> bool:
        """Whether the part's story is over and no command of it is under way."""

    def balances(self) -> str:
        """One line with the part's balances now."""

    def summary_lines(self) -> list[str]:
        """The part's outcome."""


# opens the part's accounts and introduces them, given the connection, the catalog, the tariff and the engine's clock
OpenPart = Callable[[Connection, Catalog, str, SimulatedNow], StoryPart | None]


class PrepaidLoop:
    """The demo's prepaid side on the running fleet: accounts, engine, dispatcher, obeying meters, the story."""

    def __init__(
        self,
        settings: Settings,
        url: str,
        candidates: Sequence[DemoMeter],
        obey: Obey,
        start: datetime,
        echo: Echo,
        more: OpenPart | None = None,
    ) -> None:
        self.now = SimulatedNow(start)
        self.accounts: list[DemoAccount] = []
        self._settings = settings
        self._url = url
        self._candidates = candidates
        self._obey = obey
        self._echo = echo
        self._halt = threading.Event()
        self._engine_caught_up = threading.Event()
        self._threads: list[threading.Thread] = []
        self._failures: list[str] = []
        self._stack = contextlib.ExitStack()
        self._story: Story | None = None
        self._more = more
        self._part: StoryPart | None = None

    def __enter__(self) -> PrepaidLoop:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        conn = self._stack.enter_context(connect_database(self._url))
        catalog = Catalog()
        start = self.now()
        tariff_code = store_catalog(conn, datetime.now(UTC))
        meters = pick_meters(conn, self._candidates, start, ACCOUNTS)
        self.accounts = open_demo_accounts(conn, catalog, tariff_code, meters, start, self._settings.zone)
        self._story = Story(conn, catalog, self.accounts, self.now, self._settings.zone, self._echo)
        self._introduce(tariff_code)
        if self._more is not None:
            self._part = self._more(conn, catalog, tariff_code, self.now)
        if not self.accounts and self._part is None:
            return
        self._stack.enter_context(self._obey())
        self._stack.callback(self._stop_threads)
        self._spawn("engine", self._run_engine)
        # the dispatcher keeps its default wall clock: meters judge a command's expiry by their own real clocks
        self._spawn("dispatcher", lambda: run_dispatcher(dispatch_settings(self._settings), self._url, self._halt))

    def _introduce(self, tariff_code: str) -> None:
        if not self.accounts:
            self._echo(
                "prepaid: the prepaid loop is skipped: every reporting meter already serves an account or has readings "
                "of this simulated day from an earlier demo run (a fresh HEADEND_DATA_DIR starts over)"
            )
            return
        p = DEMO_POLICY
        warnings = " and ".join(yuan(t) for t in p.warning_thresholds_fen)
        self._echo(
            f"prepaid: tariff {tariff_code}; policy {p.name}: warnings at {warnings}, "
            f"disconnect at {yuan(p.disconnect_threshold_fen)}, no notice period"
        )
        self._echo(
            "prepaid: no friendly-credit hours in the demo policy, so it disconnects at night and at weekends too "
            "(a real policy waits for working hours)"
        )
        self._echo(
            f"prepaid: {len(self.accounts)} accounts on the heaviest users, "
            f"each topped up with {yuan(OPENING_CREDIT_FEN)} (channel {CHANNEL}):"
        )
        for a in self.accounts:
            via = "direct" if a.meter.concentrator_id is None else f"via {a.meter.concentrator_id}"
            self._echo(
                f"    {a.account_id:<18} meter {a.meter.meter_id} ({a.meter.kind}, {via}, "
                f"about {a.meter.daily_wh / 1000:.0f} kWh a day)"
            )
        self._echo(
            f"prepaid: the engine charges on simulated time ({LATENESS_S:g} s lateness); the dispatcher sends relay "
            "commands on wall-clock time and the simulated meters obey them"
        )
        self._echo(f"prepaid: times below are simulated local times ({self._settings.timezone})")

    def _spawn(self, name: str, target: Callable[[], object]) -> None:
        def run() -> None:
            try:
                target()
            except Exception as exc:
                log.exception("the demo's %s stopped", name)
                self._failures.append(f"the {name} stopped: {exc}")

        thread = threading.Thread(target=run, name=f"demo-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _run_engine(self) -> None:
        with connect_database(self._url) as conn:
            runner = EngineRunner(
                conn,
                LATENESS_S,
                self._settings.engine_batch_accounts,
                clock=self.now,  # simulated time: the readings it charges are stamped with it
                eager_on_grid=self._settings.engine_eager_on_grid,
            )
            while not self._halt.is_set():
                final = self.now.final
                stats = runner.sweep(self._halt)
                if final:
                    self._engine_caught_up.set()
                if not stats.accounts:
                    self._halt.wait(ENGINE_POLL_S)

    def _stop_threads(self) -> None:
        self._halt.set()
        for thread in self._threads:
            thread.join(30)

    def poll(self) -> None:
        """Tell the story so far; raise if the engine or the dispatcher stopped."""
        if self._failures:
            raise RuntimeError("; ".join(self._failures))
        if self._story is not None and self.accounts:
            self._story.poll()
        if self._part is not None:
            self._part.poll()

    def balances(self) -> list[str]:
        """The balances lines of the demo accounts, the MQTT meters' and the other part's."""
        lines = [self._story.balances()] if self._story is not None and self.accounts else []
        return lines + ([] if self._part is None else [self._part.balances()])

    def _settled(self) -> bool:
        mqtt = self._story is None or not self.accounts or self._story.settled()
        return mqtt and (self._part is None or self._part.settled())

    def finish(self, stop: threading.Event, poll_s: float = 0.25) -> None:
        """After the last reading: let the engine charge it and the commands in flight end (at most SETTLE_S)."""
        self.now.finish()
        if not self.accounts and self._part is None:
            return
        deadline = time.monotonic() + SETTLE_S
        while not stop.is_set() and time.monotonic() < deadline:
            self.poll()
            if self._engine_caught_up.is_set() and self._settled():
                self.poll()  # what was committed between the poll and the check
                return
            stop.wait(poll_s)
        if not stop.is_set():
            self._echo(f"prepaid: still under way after {SETTLE_S:g} s; stopping")

    def summary(self) -> list[str]:
        """The summary lines of the MQTT meters' accounts (none without them)."""
        if self._story is None or not self.accounts:
            return []
        return summary_lines(self._story.conn, self.accounts)

    def part_summary(self) -> list[str]:
        """The summary lines of the other part of the story (none without it)."""
        return [] if self._part is None else self._part.summary_lines()
