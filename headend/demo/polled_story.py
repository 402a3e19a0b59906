"""The polled meters' part of `headend demo`: prepaid accounts on the Modbus and DL/T 645 meters the poll worker reads,
charged by the same engine, and the story of one DL/T 645 meter cut off and reconnected over DL/T 645.

The simulated meters are `headend/demo/run.py`'s (the one module of `headend` that may import `simulators`): it
describes them as `PolledDemoMeter`s and hands over a way to press a meter's button. The story's meter is registered
`reconnect_mode=allowed` (合闸允许): after the payment the dispatcher arms it, and only the customer's button closes
the relay, which the dispatcher's check of armed meters then reads back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from headend.db.collection_days import collection_day
from headend.db.engine import SCHEMA_OPTIONS_SQL, SchemaOptions
from headend.demo.prepaid_loop import (
    ACCOUNT_PREFIX,
    ACTOR,
    CHANNEL,
    DEMO_POLICY,
    INTERVAL,
    CommandStep,
    Connection,
    Echo,
    Narrator,
    SimulatedNow,
    balances_of,
    reading_text,
    yuan,
)
from headend.engine.accounts import AccountError, open_account, pay
from headend.engine.catalog import Catalog
from headend.reports.collection import INTERVALS_PER_DAY, CollectionCounts, GroupCounts
from prepay_engine.ledger import CUSTOMER_ID_PATTERN
from prepay_engine.payments import TopUp

STORY_CHANNEL: Final = "counter"  # the story's customer pays at the counter (营业厅), the MQTT one online
CHARGED_CREDIT_FEN: Final = 3_000  # the accounts that are only charged: more than a day's use
# the story's meter gets about the cost of this share of its usual day, so that it runs out in the morning or midday
STORY_DAY_SHARE: Final = 0.3
TYPICAL_FEN_PER_KWH: Final = 45  # about the example tariff's mean price (peak 55.83, valley 35.83 fen a kWh)
STORY_MIN_CREDIT_FEN: Final = 50
PressButton = Callable[[str], str]


@dataclass(frozen=True, slots=True)
class PolledDemoMeter:
    """A simulated Modbus or DL/T 645 meter of the demo, as the polled part of the story sees it."""

    meter_id: str
    protocol: str  # modbus or dlt645
    model: str
    place: str  # where the poller and the dispatcher reach it: the endpoint, and the unit id or the address
    kind: str
    daily_wh: float  # the simulated household's mean daily use
    switchable: bool  # the head-end can switch its relay
    pv: bool  # a rooftop PV system lowers what it draws at midday


@dataclass(frozen=True, slots=True)
class PolledAccount:
    """A prepaid account the demo opened on a polled meter, with its opening credit."""

    account_id: str
    meter: PolledDemoMeter
    credit_fen: int
    story: bool  # the account that runs out and is cut off and reconnected


def story_meter(meters: Sequence[PolledDemoMeter]) -> PolledDemoMeter | None:
    """The DL/T 645 meter whose account runs out: the heaviest user without PV (its morning use is steadiest)."""
    candidates = [m for m in meters if m.protocol == "dlt645" and m.switchable]
    ranked = sorted(candidates, key=lambda m: (m.pv, -m.daily_wh, m.meter_id))
    return ranked[0] if ranked else None


def story_credit_fen(meter: PolledDemoMeter) -> int:
    """The story account's opening credit: about STORY_DAY_SHARE of its usual day, in whole 10 fen."""
    fen = meter.daily_wh / 1000 * TYPICAL_FEN_PER_KWH * STORY_DAY_SHARE
    return max(STORY_MIN_CREDIT_FEN, round(fen / 10) * 10)


def account_plan(meters: Sequence[PolledDemoMeter], story: PolledDemoMeter | None) -> list[PolledAccount]:
    """The accounts to open on polled meters: the story's meter with a little credit, and the first Modbus meter of
    each model with more than a day's; the others are only read."""
    plan = [] if story is None else [PolledAccount(account_id_of(story), story, story_credit_fen(story), story=True)]
    models: set[str] = set()
    for meter in meters:
        if meter.protocol == "modbus" and meter.model not in models:
            models.add(meter.model)
            plan.append(PolledAccount(account_id_of(meter), meter, CHARGED_CREDIT_FEN, story=False))
    return plan


def account_id_of(meter: PolledDemoMeter) -> str:
    """The demo account id of a polled meter."""
    return f"{ACCOUNT_PREFIX}{meter.meter_id}"


def open_polled_accounts(
    conn: Connection,
    catalog: Catalog,
    tariff_code: str,
    plan: Sequence[PolledAccount],
    opened_at: datetime,
    zone: ZoneInfo,
    echo: Echo,
) -> list[PolledAccount]:
    """Open each planned account charging from its meter's reading at `opened_at` (the poller's first round), and
    top it up; one that cannot be opened (no such reading, an account there already) is said and left out."""
    opened = []
    for account in plan:
        meter_id = account.meter.meter_id
        if not CUSTOMER_ID_PATTERN.fullmatch(account.account_id):
            echo(f"prepaid: no account on polled meter {meter_id}: {account.account_id!r} is not an account id")
            continue
        try:
            open_account(
                conn,
                catalog,
                account.account_id,
                meter_id=meter_id,
                tariff_code=tariff_code,
                policy_code=DEMO_POLICY.name,
                opened_at=opened_at,
                zone=zone,
                actor=ACTOR,
            )
        except AccountError as exc:
            echo(f"prepaid: no account on polled meter {meter_id}: {exc}")
            continue
        top_up = TopUp(CHANNEL, f"open-{account.account_id}", account.account_id, account.credit_fen, opened_at)
        pay(conn, catalog, top_up, now=opened_at, received_by=ACTOR)
        opened.append(account)
    return opened


def _confirmed_text(step: CommandStep, protocol: str, inputs: Any) -> str | None:
    """A polled meter's confirmation, with how it was read back."""
    if step.state != "confirmed":
        return None
    if step.detail.startswith("relay open and armed"):
        armed = "relay open and armed (合闸允许), the customer closes it with the button"
        return f"{step.action} confirmed by the meter: {armed}"
    relay = (inputs or {}).get("relay")
    how = "status word 3 read back over DL/T 645" if protocol == "dlt645" else "relay register read back over Modbus"
    return f"{step.action} confirmed by the meter (relay {relay}): {how}"


class PolledStory:
    """Tells what happens to the polled meters' accounts; for the story's account, pays once its meter shows the cut,
    and presses the button once the dispatcher has armed it."""

    def __init__(
        self,
        conn: Connection,
        catalog: Catalog,
        accounts: Sequence[PolledAccount],
        now: SimulatedNow,
        zone: ZoneInfo,
        echo: Echo,
        press_button: PressButton,
    ) -> None:
        self.conn = conn
        self.accounts = list(accounts)
        self._catalog = catalog
        self._narrator = Narrator(conn, [a.account_id for a in accounts], now, zone, echo)
        self._protocols = {a.account_id: a.meter.protocol for a in accounts}
        self._press_button = press_button
        self._story = next((a for a in accounts if a.story), None)
        self._cut_at: datetime | None = None
        self._paid = False
        self._reconnecting = False  # the payment's reconnect command is there
        self._pressed_at: datetime | None = None
        self._button_seen = False
        self._restored = False

    def poll(self) -> None:
        """Tell what happened since the last poll, and take the story's next step when it is due."""
        narrator = self._narrator
        narrator.tell_notices()

        def text(step: CommandStep, actor: str, inputs: Any) -> str | None:
            return _confirmed_text(step, self._protocols[step.account_id], inputs)

        story = self._story
        for step in narrator.tell_commands(text):
            if story is None or step.account_id != story.account_id:
                continue
            if step.action == "disconnect" and step.state == "confirmed" and self._cut_at is None:
                self._cut_at = narrator.now()
            if step.action == "reconnect" and self._paid:
                self._reconnecting = True
        if self._story is not None:
            self._go_on(self._story)

    def _supply(self, account: PolledAccount) -> str:
        [(_, _, supply)] = balances_of(self.conn, [account.account_id])
        return supply

    def _go_on(self, account: PolledAccount) -> None:
        narrator, meter_id = self._narrator, account.meter.meter_id
        final = narrator.now.final
        if self._cut_at is None:
            return
        if not self._paid:
            # a reading stamped two intervals after the confirmation was certainly made with the relay open
            reading = narrator.reading_after(meter_id, self._cut_at + INTERVAL)
            if reading is None and not final:
                return
            if reading is not None:
                narrator.say(account.account_id, reading_text(meter_id, reading, narrator.zone))
            self._paid = True
            narrator.pay(self._catalog, account.account_id, STORY_CHANNEL)
            return
        if self._pressed_at is None:
            if self._supply(account) == "reconnect_allowed":
                self._pressed_at = narrator.now()
                relay = self._press_button(meter_id)
                narrator.say(
                    account.account_id,
                    f"the customer presses the button on meter {meter_id} (simulated, on site): relay {relay}",
                )
            return
        if not self._button_seen:
            row = self.conn.execute(
                "SELECT relay, source FROM meter_relays WHERE meter_id = %s", (meter_id,)
            ).fetchone()
            if row == ("closed", "button_pressed") and self._supply(account) == "connected":
                self._button_seen = True
                narrator.say(
                    account.account_id,
                    "the dispatcher's check of armed meters reads the relay closed: button pressed, supply connected",
                )
            return
        if not self._restored:
            # the poller may have read the load point the press came in before the press: one interval later
            reading = narrator.reading_after(meter_id, self._pressed_at + INTERVAL)
            if reading is not None:
                self._restored = True
                narrator.say(account.account_id, reading_text(meter_id, reading, narrator.zone))

    def settled(self) -> bool:
        """Whether no command is under way, and the story's account, if cut off, is paid for and its reconnect over
        (the button pressed and read back, if it was armed)."""
        if self._cut_at is not None and not (self._paid and self._reconnecting):
            return False
        if self._pressed_at is not None and not self._button_seen:
            return False
        return self._narrator.commands_open() == 0

    def balances(self) -> str:
        """One line with every polled meter's account balance now."""
        return self._narrator.balances("polled meters' balances")

    def summary_lines(self) -> list[str]:
        """The polled accounts' outcome: each account's credit, charges, payments, balance and supply; the commands."""
        ids = self._narrator.ids
        paid = dict(
            self.conn.execute(
                "SELECT account_id, coalesce(sum(amount_fen), 0) FROM payments WHERE account_id = ANY(%s) "
                "GROUP BY account_id",
                (ids,),
            ).fetchall()
        )
        confirmed = self.conn.execute(
            "SELECT c.action, m.protocol, c.detail, count(*) FROM commands c JOIN meters m USING (meter_id) "
            "WHERE c.account_id = ANY(%s) AND c.state = 'confirmed' GROUP BY 1, 2, 3 ORDER BY min(c.issued_at), 1",
            (ids,),
        ).fetchall()
        lines = [f"  accounts              : {len(ids)}, charged by the engine from the polled readings"]
        by_id = {a.account_id: a for a in self.accounts}
        for account_id, balance, supply in balances_of(self.conn, ids):
            account = by_id[account_id]
            payments = int(paid.get(account_id, 0))
            later = payments - account.credit_fen
            paid_text = f", paid {yuan(later)}" if later else ""
            lines.append(
                f"    {account_id:<22}{account.meter.protocol:<7} opened with {yuan(account.credit_fen)}, "
                f"charged {yuan(payments - balance)}{paid_text} → {yuan(balance)}  {supply}"
            )
        told = [
            f"{action} over {protocol} ({detail})" + (f" ×{n}" if n > 1 else "")
            for action, protocol, detail, n in confirmed
        ]
        lines.append(f"  commands confirmed    : {' · '.join(told) or 'none'}")
        if self._story is not None:
            if self._button_seen:
                button = "pressed, and read back by the dispatcher's check of armed meters"
            else:
                button = "not pressed" if self._pressed_at is None else "pressed, not read back yet"
            lines.append(f"  button (合闸允许)     : {button} (meter {self._story.meter.meter_id})")
        return lines


def collection_by_protocol(conn: Connection, day: date) -> list[GroupCounts]:
    """The local `day`'s collection per protocol, the meters expected as the collection report counts them."""
    options = SchemaOptions.from_rows(conn.execute(SCHEMA_OPTIONS_SQL).fetchall())
    day_rows = collection_day(conn, options, day)
    rows = conn.execute(
        f"""
        SELECT m.protocol, count(*), count(c.meter_id), count(*) FILTER (WHERE c.intervals_read >= %(intervals)s)
        FROM meters m LEFT JOIN ({day_rows.sql}) c ON c.meter_id = m.meter_id
        WHERE m.status = 'active'
          AND (coalesce(m.installed_on <= %(day)s, m.created_at < %(day_end)s) OR c.meter_id IS NOT NULL)
        GROUP BY m.protocol ORDER BY m.protocol
        """,
        {**day_rows.params, "intervals": INTERVALS_PER_DAY},
    ).fetchall()
    return [GroupCounts(str(r[0]), CollectionCounts(int(r[1]), int(r[2]), int(r[3]))) for r in rows]


def format_by_protocol(groups: Sequence[GroupCounts]) -> list[str]:
    """The per-protocol lines of the demo's collection report."""
    return ["  by protocol:"] + [
        f"    {g.key:<8} {g.counts.read:>6}/{g.counts.expected:<6} {g.counts.rate:7.2%}  complete {g.counts.complete}"
        for g in groups
    ]


def polled_part(
    meters: Sequence[PolledDemoMeter], press_button: PressButton, zone: ZoneInfo, echo: Echo
) -> Callable[[Connection, Catalog, str, SimulatedNow], PolledStory | None]:
    """What opens the polled meters' accounts once the poller has read them at the start, and introduces them."""

    def start(conn: Connection, catalog: Catalog, tariff_code: str, now: SimulatedNow) -> PolledStory | None:
        plan = account_plan(meters, story_meter(meters))
        accounts = open_polled_accounts(conn, catalog, tariff_code, plan, now(), zone, echo)
        if not accounts:
            return None
        others = len(meters) - len(accounts)
        echo(
            f"prepaid: {len(accounts)} accounts on polled meters, charged by the same engine from the polled readings"
            + (f" (the other {others} polled meters are only read):" if others else ":")
        )
        for a in accounts:
            m = a.meter
            model = f" {m.model}" if m.protocol == "modbus" else ""
            relay = "" if m.switchable else ", no relay control"
            echo(
                f"    {a.account_id:<18} meter {m.meter_id} ({m.protocol}{model} at {m.place}{relay}, "
                f"about {m.daily_wh / 1000:.0f} kWh a day), topped up with {yuan(a.credit_fen)}"
                + (" — its credit runs out today; registered reconnect_mode=allowed (合闸允许)" if a.story else "")
            )
        return PolledStory(conn, catalog, accounts, now, zone, echo, press_button)

    return start
