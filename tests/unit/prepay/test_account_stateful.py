"""Hypothesis stateful test of the prepaid account against a simple reference model (issue 3).

The machine plays every party around one account. A meter whose true cumulative energy the model knows
(register readings at a fixed cadence, rolling over from near the top, replaced by a new meter now and then).
A network that delays, loses, duplicates and reorders readings. A runner whose completeness promise is
honest, eager (so readings arrive late) or lagging. Payment channels that call back twice and reverse top-ups.
A customer who borrows emergency credit. An operator who sets the protected and keep-supply flags. A clock
that jumps minutes to days across nights, weekends and the 2026 holidays (the calendar package knows nothing
after 2026-12-31; one calendar variant also forgets one day a week). And a dispatcher that executes the
commands the account requests in order, drops a command superseded before it was sent, sometimes fails, and
reports outcomes, some of them twice.

The model computes money, energy and the policy's rules the simple way. After every step: debits = credits
and each balance = Σ its postings; the ledger agrees with the model's money; no interval charged twice (no
repeated charge id, one usage posting per charge with money in it, the charged intervals cover the grid
without a gap); energy charged + energy carried = the true energy up to the last consumed reading; the
notices and relay commands are exactly what the rules call for, and no disconnect is ever requested when a
rule forbids it; the supply state is the relay's real state; a paid-up account is never left disconnected.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from prepay_engine.account import (
    CHINA_MAINLAND,
    CommandOutcomeRecorded,
    EmergencyCreditLent,
    PrepaidAccount,
    ReadingsApplied,
    Refused,
    RelayAction,
    RelayCommand,
    RelayOutcome,
    ReversalApplied,
    Step,
    TopUpApplied,
    open_account,
)
from prepay_engine.calendar import DayInfo, UnknownDay, WorkdayCalendar
from prepay_engine.ledger import (
    REVENUE_ACCOUNT_ID,
    Ledger,
    PostingKind,
    Rejected,
    cash_in_transit_account_id,
    check_invariants,
    emergency_credit_account_id,
    house_accounts,
    prepaid_account_id,
)
from prepay_engine.money import round_yuan_to_fen
from prepay_engine.payments import (
    AlreadyApplied,
    AlreadyReversed,
    AlreadyToppedUp,
    Applied,
    PaymentReason,
    PaymentTerms,
    Reversed,
    ToppedUp,
    TopUp,
    TopUpReversal,
)
from prepay_engine.policy import DisconnectDeferred, FriendlyCreditWindows, PolicyConfig, SentWarning, SupplyState
from prepay_engine.tariffs import SHANGHAI, example_jiangsu_residential
from prepay_engine.usage import (
    DEFAULT_REGISTER_MAX_WH,
    DEFAULT_REGISTER_STEP_WH,
    INTERVAL,
    AnomalyKind,
    MeterRegister,
    MeterReplacement,
    RegisterReading,
    UsageEvent,
    floor_to_interval,
)

ACCOUNT = "A-1"
CHANNELS = ("wechat", "alipay")
WARNINGS = (3_000, 1_000)
JIANGSU = example_jiangsu_residential()
MODULUS = DEFAULT_REGISTER_MAX_WH + DEFAULT_REGISTER_STEP_WH
ONE_US = dt.timedelta(microseconds=1)


def local(month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, minute, tzinfo=SHANGHAI)


# a working Monday; the Thursday before the Spring Festival break (Feb 15-23, make-up working Saturdays Feb 14
# and 28); the Wednesday before the Labour Day break (May 1-5); the Monday before the National Day break
STARTS = (local(1, 5, 9), local(2, 12, 16), local(4, 29, 20), local(9, 28, 7))
END = local(12, 30)  # the calendar package stops at 2026-12-31


@dataclass(frozen=True)
class PatchyCalendar:
    """The mainland calendar, except that one day a week is unknown (a source with holes)."""

    def classify(self, day: dt.date) -> DayInfo | UnknownDay:
        if day.toordinal() % 7 == 3:
            return UnknownDay(day, 2004, 2026, "test: one day a week unknown")
        return CHINA_MAINLAND.classify(day)


@dataclass
class Queued:
    """A command in the dispatcher's queue."""

    command: RelayCommand
    sent: bool = False


def _ts(e: UsageEvent) -> dt.datetime:
    return e.ts if isinstance(e, RegisterReading) else e.at


class AccountMachine(RuleBasedStateMachine):
    """One prepaid account driven by a simulated meter, network, runner, channels, customer and dispatcher."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger()
        assert self.ledger.open_accounts(house_accounts(CHANNELS)) is None

    @initialize(
        start=st.sampled_from(STARTS),
        notice_hours=st.sampled_from((0, 2, 30)),
        night=st.sampled_from(((22, 8), (18, 8), None)),
        patchy=st.booleans(),
        emergency_credit_fen=st.sampled_from((0, 2_000)),
        register_wh=st.sampled_from((999_990_000, 0)),
        cadence_minutes=st.sampled_from((15, 5, 20, 60)),
        arms_only=st.booleans(),
        first_top_up_fen=st.sampled_from((2_500, 0, 10_000)),
    )
    def open(
        self,
        start: dt.datetime,
        notice_hours: int,
        night: tuple[int, int] | None,
        patchy: bool,
        emergency_credit_fen: int,
        register_wh: int,
        cadence_minutes: int,
        arms_only: bool,
        first_top_up_fen: int,
    ) -> None:
        self.notice = dt.timedelta(hours=notice_hours)
        self.night = None if night is None else (dt.time(night[0]), dt.time(night[1]))
        self.calendar: WorkdayCalendar = PatchyCalendar() if patchy else CHINA_MAINLAND
        self.ec_fen = emergency_credit_fen
        self.arms_only = arms_only  # meters that only allow reconnection (合闸允许)
        policy = PolicyConfig(
            name="stateful",
            warning_thresholds_fen=WARNINGS,
            disconnect_threshold_fen=0,
            notice_period=self.notice,
            friendly=FriendlyCreditWindows(
                night_start=None if self.night is None else self.night[0],
                night_end=None if self.night is None else self.night[1],
                weekends=True,
                public_holidays=True,
                eve_of_public_holidays=False,
            ),
        )
        opened = open_account(
            self.ledger,
            ACCOUNT,
            meter=MeterRegister("m-1"),
            opened_at=start,
            opening_register_wh=register_wh,
            tariff=JIANGSU,
            terms=PaymentTerms(emergency_credit_fen=emergency_credit_fen),
            policy=policy,
            calendar=self.calendar,
        )
        assert isinstance(opened, PrepaidAccount), opened
        self.account = opened
        self.now = start
        # the meter's truth
        self.opened_at = start
        self.cadence = dt.timedelta(minutes=cadence_minutes)
        self.load_wh = 250  # per 15 minutes
        self.cum_wh = 0
        self.truth_ts = start
        self.cum_at: dict[dt.datetime, int] = {start: 0}
        self.meter_id = "m-1"
        self.meters = 1
        self.register_start = register_wh
        self.cum_at_install = 0
        # the network and the runner
        self.undelivered: list[RegisterReading] = []
        self.delivered: list[UsageEvent] = []
        self.anchor = start
        self.waiting: set[dt.datetime] = set()
        # charges
        self.charge_fen: dict[str, int] = {}
        self.interval_starts: set[dt.datetime] = set()
        self.charged_wh = 0
        self.charged_total_fen = 0
        self.exact_yuan = Decimal(0)
        # money
        self.balance = 0
        self.ec_outstanding = 0
        self.top_ups: dict[str, tuple[TopUp, int]] = {}
        self.reversals: dict[str, TopUpReversal] = {}
        self.lends: list[tuple[str, dt.datetime]] = []
        self.lend_attempts = 0
        # the policy's inputs as the model keeps them
        self.protected = False
        self.keep_supply = False
        self.zero_at: dt.datetime | None = None
        self.warned: set[int] = set()
        self.notification_ids: set[str] = set()
        self.wake_at: dt.datetime | None = None
        # the relay and the dispatcher
        self.reality = SupplyState.CONNECTED
        self.supply = SupplyState.CONNECTED
        self.pending: RelayCommand | None = None
        self.last_seq = 0
        self.queue: list[Queued] = []
        self.superseded: list[RelayCommand] = []
        self.reports: list[tuple[RelayCommand, RelayOutcome]] = []
        if first_top_up_fen:
            self._top_up("wechat", first_top_up_fen)

    # ------------------------------------------------------------------ the meter and the clock

    def _register(self) -> int:
        return (self.register_start + self.cum_wh - self.cum_at_install) % MODULUS

    def _advance(self, to: dt.datetime) -> None:
        to = min(to, END)
        minutes = self.cadence // dt.timedelta(minutes=1)
        t = self.truth_ts + self.cadence
        while t <= to:
            previous = self._register()
            # the register counts in 10 Wh steps
            self.cum_wh += 10 * (self.load_wh * minutes // 150)
            if self._register() < previous:
                event("register rolled over")
            self.undelivered.append(RegisterReading(self.meter_id, t, self._register()))
            self.cum_at[t] = self.cum_wh
            self.truth_ts = t
            t += self.cadence
        self.now = max(self.now, to)

    @rule(minutes=st.sampled_from((1, 10, 15, 45, 120, 360, 720, 1_440, 2_880)))
    def time_passes(self, minutes: int) -> None:
        self._advance(self.now + dt.timedelta(minutes=minutes))

    @rule(load_wh=st.sampled_from((0, 60, 250, 700, 1_500)))
    def load_changes(self, load_wh: int) -> None:
        self.load_wh = load_wh

    @precondition(lambda self: self.meters < 3 and self.truth_ts < self.now)
    @rule(start_register_wh=st.sampled_from((0, 5_000, 999_995_000)))
    def meter_is_replaced(self, start_register_wh: int) -> None:
        at = self.now
        self.meters += 1
        new_meter = MeterRegister(f"m-{self.meters}")
        swap = MeterReplacement(at, self.meter_id, self._register(), new_meter, start_register_wh)
        self.meter_id, self.register_start, self.cum_at_install = new_meter.meter_id, start_register_wh, self.cum_wh
        self.truth_ts = at
        self.cum_at[at] = self.cum_wh
        event("meter replaced")
        self._apply_readings([swap], "honest")

    # ------------------------------------------------------------------ the network and the runner

    @precondition(lambda self: bool(self.undelivered))
    @rule(data=st.data())
    def network_loses_readings(self, data: st.DataObject) -> None:
        first = data.draw(st.integers(0, len(self.undelivered) - 1))
        del self.undelivered[first : first + data.draw(st.integers(1, 40))]

    @rule(
        data=st.data(),
        how=st.sampled_from(("all in order", "oldest few", "random few", "all shuffled")),
        promise=st.sampled_from(("honest", "honest", "eager", "lagging")),
    )
    def runner_charges(self, data: st.DataObject, how: str, promise: str) -> None:
        network = data.draw(st.randoms(use_true_random=False))
        pool = self.undelivered
        if how == "all in order":
            batch = list(pool)
        elif how == "oldest few":
            batch = pool[: data.draw(st.integers(1, 6))]
        elif how == "random few":
            batch = network.sample(pool, min(len(pool), data.draw(st.integers(1, 6))))
        else:
            batch = network.sample(pool, len(pool))
        taken = set(batch)
        self.undelivered = [r for r in pool if r not in taken]
        events: list[UsageEvent] = list(batch)
        if self.delivered:
            events += [network.choice(self.delivered) for _ in range(data.draw(st.integers(0, 2)))]
        if how != "all in order":
            network.shuffle(events)
        self._apply_readings(events, promise)

    @rule(minutes=st.sampled_from((15, 60, 240, 720, 1_440)))
    def runner_ticks(self, minutes: int) -> None:
        # the common case: time passes, the dispatcher gets through its queue, everything arrives in order and
        # the runner keeps its promise
        self._advance(self.now + dt.timedelta(minutes=minutes))
        while self.queue:
            self._finish(works=True)
        events: list[UsageEvent] = list(self.undelivered)
        self.undelivered = []
        self._apply_readings(events, "honest")

    def _apply_readings(self, events: list[UsageEvent], promise: str) -> None:
        earliest_outstanding = min((r.ts for r in self.undelivered), default=None)
        honest = self.now if earliest_outstanding is None else min(self.now, earliest_outstanding - ONE_US)
        complete_until = {"honest": honest, "eager": self.now, "lagging": honest - dt.timedelta(hours=2)}[promise]
        result = self.account.apply_readings(self.ledger, events, complete_until, self.now)
        assert isinstance(result, ReadingsApplied), result

        # reference: a reading before the last consumed event is late (a replacement delivered again, like the
        # last consumed reading, is a duplicate); the rest waits for the promise
        late = {e.ts for e in events if isinstance(e, RegisterReading) and e.ts < self.anchor}
        self.waiting.update(_ts(e) for e in events if _ts(e) > self.anchor)
        consumed = {t for t in self.waiting if t <= complete_until}
        if consumed:
            self.anchor = max(consumed)
            self.waiting -= consumed
        assert {a.kind for a in result.usage.anomalies} <= {AnomalyKind.LATE}, result.usage.anomalies
        assert {a.ts for a in result.usage.anomalies} == late
        if late:
            event("late readings reported")
        self.delivered += events

        assert result.replayed == ()
        assert [p.posting_id for p in result.posted] == [c.charge_id for c in result.usage.charges if c.amount_fen]
        for charge in result.usage.charges:
            assert charge.charge_id not in self.charge_fen, f"{charge.charge_id} charged twice"
            assert charge.interval_start not in self.interval_starts, f"{charge.interval_start} charged twice"
            self.charge_fen[charge.charge_id] = charge.amount_fen
            self.interval_starts.add(charge.interval_start)
            self.charged_wh += charge.energy_wh
            self.charged_total_fen += charge.amount_fen
            self.exact_yuan += charge.amount_yuan
            self.balance -= charge.amount_fen
        self._step(result)

    # ------------------------------------------------------------------ payment channels and the customer

    @rule(channel=st.sampled_from(CHANNELS), amount_fen=st.sampled_from((500, 2_000, 5_000, 20_000)))
    def customer_tops_up(self, channel: str, amount_fen: int) -> None:
        self._top_up(channel, amount_fen)

    def _top_up(self, channel: str, amount_fen: int) -> None:
        request = TopUp(channel, f"T{len(self.top_ups)}", ACCOUNT, amount_fen, self.now)
        result = self.account.apply_top_up(self.ledger, request, self.now)
        assert isinstance(result, TopUpApplied), result
        assert isinstance(result.payment, ToppedUp)
        repaid = min(amount_fen, self.ec_outstanding)
        assert result.payment.split.emergency_credit_repaid_fen == repaid
        self.ec_outstanding -= repaid
        self.balance += amount_fen - repaid
        self.top_ups[request.channel_txn_id] = (request, repaid)
        self._step(result)

    @precondition(lambda self: bool(self.top_ups))
    @rule(data=st.data())
    def channel_calls_back_again(self, data: st.DataObject) -> None:
        request, _ = self.top_ups[data.draw(st.sampled_from(sorted(self.top_ups)))]
        result = self.account.apply_top_up(self.ledger, request, self.now)
        assert isinstance(result, TopUpApplied), result
        assert isinstance(result.payment, AlreadyToppedUp)
        self._step(result)

    @precondition(lambda self: len(self.reversals) < len(self.top_ups))
    @rule(data=st.data())
    def channel_reverses_a_top_up(self, data: st.DataObject) -> None:
        txn = data.draw(st.sampled_from(sorted(t for t in self.top_ups if t not in self.reversals)))
        request, repaid = self.top_ups[txn]
        reversal = TopUpReversal(request.channel, txn, request.amount_fen, self.now, f"R-{txn}")
        result = self.account.apply_reversal(self.ledger, reversal, self.now)
        assert isinstance(result, ReversalApplied), result
        assert isinstance(result.payment, Reversed)
        self.balance -= request.amount_fen - repaid
        self.ec_outstanding += repaid
        self.reversals[txn] = reversal
        self._step(result)

    @precondition(lambda self: bool(self.reversals))
    @rule(data=st.data())
    def channel_reverses_again(self, data: st.DataObject) -> None:
        reversal = self.reversals[data.draw(st.sampled_from(sorted(self.reversals)))]
        result = self.account.apply_reversal(self.ledger, reversal, self.now)
        assert isinstance(result, ReversalApplied), result
        assert isinstance(result.payment, AlreadyReversed)
        self._step(result)

    @rule()
    def customer_borrows_emergency_credit(self) -> None:
        lend_id = f"L{self.lend_attempts}"
        self.lend_attempts += 1
        result = self.account.lend_emergency_credit(self.ledger, lend_id, self.now, self.now)
        if self.ec_fen == 0 or self.ec_outstanding > 0:
            assert isinstance(result, Refused), result
            assert isinstance(result.problem, Rejected)
            expected = (
                PaymentReason.EMERGENCY_CREDIT_DISABLED
                if self.ec_fen == 0
                else PaymentReason.EMERGENCY_CREDIT_OUTSTANDING
            )
            assert result.problem.reason is expected
            assert result.account is self.account
            return
        assert isinstance(result, EmergencyCreditLent), result
        assert isinstance(result.payment, Applied)
        self.balance += self.ec_fen
        self.ec_outstanding = self.ec_fen
        self.lends.append((lend_id, self.now))
        event("emergency credit lent")
        self._step(result)

    @precondition(lambda self: bool(self.lends))
    @rule(data=st.data())
    def customer_borrows_again_with_the_same_request(self, data: st.DataObject) -> None:
        lend_id, requested_at = data.draw(st.sampled_from(self.lends))
        result = self.account.lend_emergency_credit(self.ledger, lend_id, requested_at, self.now)
        assert isinstance(result, EmergencyCreditLent), result
        assert isinstance(result.payment, AlreadyApplied)
        self._step(result)

    # ------------------------------------------------------------------ operator and scheduler

    @rule(flags=st.sampled_from(((False, False), (False, False), (True, False), (False, True))))
    def operator_sets_flags(self, flags: tuple[bool, bool]) -> None:
        self.protected, self.keep_supply = flags
        self._step(self.account.set_flags(self.ledger, protected=flags[0], keep_supply=flags[1], now=self.now))

    @rule()
    def runner_decides(self) -> None:
        self._step(self.account.decide(self.ledger, self.now))

    @precondition(lambda self: self.wake_at is not None and self.wake_at <= END)
    @rule()
    def scheduler_wakes_up(self) -> None:
        assert self.wake_at is not None
        self._advance(self.wake_at)
        event("woke up when a deferred disconnect became possible")
        self._step(self.account.decide(self.ledger, self.now))

    # ------------------------------------------------------------------ the dispatcher

    def _dispatcher_receives(self, command: RelayCommand) -> None:
        for queued in [q for q in self.queue if not q.sent]:
            # superseded before it was sent: dropped, perhaps reported as failed later
            self.queue.remove(queued)
            self.superseded.append(queued.command)
        self.queue.append(Queued(command))

    @precondition(lambda self: any(not q.sent for q in self.queue))
    @rule()
    def dispatcher_sends(self) -> None:
        next(q for q in self.queue if not q.sent).sent = True

    @precondition(lambda self: bool(self.queue))
    @rule(works=st.sampled_from((True, True, True, False)))
    def dispatcher_finishes(self, works: bool) -> None:
        self._finish(works)

    def _finish(self, works: bool) -> None:
        command = self.queue.pop(0).command
        if not works:
            self._report(command, RelayOutcome.FAILED)
            return
        if command.action is RelayAction.DISCONNECT:
            self.reality = SupplyState.DISCONNECTED
        else:
            self.reality = SupplyState.RECONNECT_ALLOWED if self.arms_only else SupplyState.CONNECTED
        outcome = {
            SupplyState.DISCONNECTED: RelayOutcome.CONFIRMED_OPEN,
            SupplyState.CONNECTED: RelayOutcome.CONFIRMED_CLOSED,
            SupplyState.RECONNECT_ALLOWED: RelayOutcome.CONFIRMED_RECONNECT_ALLOWED,
        }[self.reality]
        self._report(command, outcome)

    @precondition(lambda self: bool(self.superseded))
    @rule()
    def dispatcher_reports_a_superseded_command(self) -> None:
        self._report(self.superseded.pop(0), RelayOutcome.FAILED)

    @precondition(lambda self: bool(self.reports))
    @rule(data=st.data())
    def dispatcher_reports_again(self, data: st.DataObject) -> None:
        self._report(*data.draw(st.sampled_from(self.reports)))

    def _report(self, command: RelayCommand, outcome: RelayOutcome) -> None:
        result = self.account.record_command_outcome(self.ledger, command, outcome, self.now)
        assert isinstance(result, CommandOutcomeRecorded), result
        observed = {
            RelayOutcome.CONFIRMED_OPEN: SupplyState.DISCONNECTED,
            RelayOutcome.CONFIRMED_CLOSED: SupplyState.CONNECTED,
            RelayOutcome.CONFIRMED_RECONNECT_ALLOWED: SupplyState.RECONNECT_ALLOWED,
        }.get(outcome)
        applies = observed is not None and command.sequence >= self.last_seq
        assert result.supply_updated == applies
        if observed is not None and applies:
            self.supply = observed
            self.last_seq = command.sequence
        assert result.pending_cleared == (command == self.pending)
        if command == self.pending:
            self.pending = None
        self.reports.append((command, outcome))
        self._step(result)

    # ------------------------------------------------------------------ the reference policy

    def _credit(self) -> int:
        return self.balance + (self.ec_fen if self.ec_outstanding == 0 else 0)

    def _forbidding_rules(self, now: dt.datetime) -> list[str]:
        rules = []
        if self.protected:
            rules.append("protected customer")
        if self.keep_supply:
            rules.append("keep-supply")
        assert self.zero_at is not None
        if now < self.zero_at + self.notice:
            rules.append("notice period")
        wall = now.astimezone(SHANGHAI)
        if self.night is not None:
            start, end, clock = self.night[0], self.night[1], wall.time()
            if (start <= clock < end) if start < end else (clock >= start or clock < end):
                rules.append("night")
        day = self.calendar.classify(wall.date())
        if isinstance(day, UnknownDay):
            rules.append("unknown calendar day")
        else:
            if day.weekend:
                rules.append("weekend")
            if day.public_holiday:
                rules.append("public holiday")
        return rules

    def _step(self, step: Step) -> None:
        """Check a step's notices and commands against the reference rules, then keep the model in step."""
        now = self.now
        self.account = step.account
        exhausted = self._credit() <= 0
        if self.balance > WARNINGS[0]:
            self.zero_at = None
            self.warned = set()
        expected_notices: list[int | None] = []
        if exhausted and self.zero_at is None:
            expected_notices.append(None)
        elif not exhausted:
            crossed = [t for t in WARNINGS if self.balance <= t]
            if crossed and self.zero_at is None and not any(w <= min(crossed) for w in self.warned):
                expected_notices.append(min(crossed))
        assert [n.threshold_fen for n in step.notifications] == expected_notices, (step.notifications, self.balance)
        for notification in step.notifications:
            assert notification.request_id not in self.notification_ids, notification.request_id
            self.notification_ids.add(notification.request_id)
            if notification.threshold_fen is None:
                self.zero_at = now
            else:
                self.warned.add(notification.threshold_fen)

        pending = None if self.pending is None else self.pending.action
        expected: RelayAction | None = None
        forbidden: list[str] = []
        if exhausted:
            forbidden = self._forbidding_rules(now)
            cut_already = self.supply is SupplyState.DISCONNECTED and pending is not RelayAction.RECONNECT
            # protected / keep-supply: the supply stays on, so a pending or executed cut is undone
            flagged = self.protected or self.keep_supply
            if flagged and (pending is RelayAction.DISCONNECT or (pending is None and cut_already)):
                expected = RelayAction.RECONNECT
                event("a flag restores the supply")
            elif pending is not RelayAction.DISCONNECT and not cut_already and not forbidden:
                expected = RelayAction.DISCONNECT
            elif step.decision.of(DisconnectDeferred):
                event(f"disconnect deferred: {', '.join(forbidden)}")
        elif pending is RelayAction.DISCONNECT or (pending is None and self.supply is SupplyState.DISCONNECTED):
            expected = RelayAction.RECONNECT
        actions = [c.action for c in step.commands]
        if RelayAction.DISCONNECT in actions:
            assert not forbidden, f"a disconnect at {now} although these rules forbid it: {forbidden}"
            assert exhausted
        assert actions == ([] if expected is None else [expected]), (actions, expected, self.balance, forbidden)
        for request in step.commands:
            assert request.supersedes == self.pending
            assert request.command.meter_id == self.meter_id
            event(f"{request.action} requested" + (" (supersedes)" if request.supersedes else ""))
            self._dispatcher_receives(request.command)
            self.pending = request.command
        self.wake_at = step.wake_at

    # ------------------------------------------------------------------ invariants

    @invariant()
    def the_ledger_balances_and_agrees_with_the_model(self) -> None:
        check_invariants(self.ledger)
        assert self.ledger.balance_fen(prepaid_account_id(ACCOUNT)) == self.balance
        assert self.ledger.balance_fen(emergency_credit_account_id(ACCOUNT)) == self.ec_outstanding
        assert self.ledger.balance_fen(REVENUE_ACCOUNT_ID) == self.charged_total_fen
        cash = sum(self.ledger.balance_fen(cash_in_transit_account_id(c)) for c in CHANNELS)
        assert cash == sum(r.amount_fen for t, (r, _) in self.top_ups.items() if t not in self.reversals)

    @invariant()
    def every_interval_is_charged_once(self) -> None:
        usage = {p.posting_id: p.amount_fen for p in self.ledger.postings() if p.kind is PostingKind.USAGE}
        assert usage == {charge_id: fen for charge_id, fen in self.charge_fen.items() if fen}
        assert len(self.interval_starts) == len(self.charge_fen)
        # no gap either: the charges cover the grid from the opening to the charged frontier
        charged_until = self.account.usage.charged_until
        assert len(self.interval_starts) == (charged_until - floor_to_interval(self.opened_at)) // INTERVAL
        assert self.account.usage.accumulator.charged_fen == self.charged_total_fen
        assert self.charged_total_fen == round_yuan_to_fen(self.exact_yuan), "rounding drifted"

    @invariant()
    def energy_is_conserved(self) -> None:
        usage = self.account.usage
        assert usage.anchor_ts == self.anchor
        assert self.charged_wh + usage.carried_wh == usage.consumed_wh == self.cum_at[self.anchor]

    @invariant()
    def the_supply_state_follows_the_relay(self) -> None:
        assert self.account.supply == self.supply == self.reality
        assert self.account.pending == self.pending
        assert (self.account.protected, self.account.keep_supply) == (self.protected, self.keep_supply)

    @invariant()
    def a_paid_up_account_is_never_left_disconnected(self) -> None:
        if self._credit() > 0 and self.account.supply is SupplyState.DISCONNECTED:
            assert self.account.pending is not None
            assert self.account.pending.action is RelayAction.RECONNECT
            event("paid up while the relay is open: reconnect pending")

    @invariant()
    def notices_belong_to_the_open_episode(self) -> None:
        assert self.account.in_episode or not self.account.notices
        kept = {n.threshold_fen if isinstance(n, SentWarning) else None for n in self.account.notices}
        assert kept == self.warned | ({None} if self.zero_at is not None else set())

    @invariant()
    def a_quiet_account_would_decide_nothing(self) -> None:
        # the runner skips the decision of a quiet account: deciding it must change nothing at all
        if not self.account.is_quiet_at(self.balance):
            return
        event("quiet: the decision may be skipped")
        step = self.account.decide_at(self.balance, self.ec_outstanding, self.now)
        assert step.account == self.account
        assert step.commands == ()
        assert step.notifications == ()
        assert step.wake_at is None


AccountMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestAccountMachine = AccountMachine.TestCase
