"""The double-entry ledger in PostgreSQL: the semantics of `prepay_engine.ledger.Ledger`, safe under concurrent writers.

`post_batch` runs one transaction: it locks the rows of the accounts the batch touches (ordered by id, so writers
queue instead of deadlocking), checks the batch against the locked balances with the pure ledger's own checks
(`prepay_engine.ledger.posting_problem`, `existing_outcome`, `check_batch`), appends the postings (inserted in
posting-id order, so two batches that share ids wait for each other in one global order too) and updates balances,
totals and versions. Outcomes are the pure ledger's result types. A serialization failure, a deadlock with some other
writer, or a unique-key clash with a concurrent batch (same id on other accounts) rolls back and retries, a bounded
number of times. Inside a caller's transaction (for the outbox) it runs in a savepoint and commits with the caller;
there only the unique-key clash is retried, the rest is the caller's to retry, since its snapshot and locks outlive
the savepoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Final

import psycopg
from psycopg import errors
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row

from prepay_engine.ledger import (
    DEFAULT_MAX_POSTING_FEN,
    MAX_BIGINT,
    NORMAL_SIDE,
    Account,
    AccountKind,
    Conflict,
    Entry,
    Posted,
    Posting,
    PostingKind,
    PostOutcome,
    Rejected,
    Side,
    account_problem,
    batch_problem,
    check_batch,
    differing_account_fields,
    existing_outcome,
    posting_problem,
)

log = logging.getLogger(__name__)

MAX_ATTEMPTS: Final = 8
_RETRY_PAUSE_S: Final = 0.002
# a concurrent writer committed the same posting id, or a reversal of the same posting, first: a retry sees it
_POSTING_UNIQUE_CONSTRAINTS: Final = frozenset({"ledger_postings_pkey", "ledger_postings_reverses_key"})

# the balance recorded on an account's last posting at or before a given seq (0 before its first)
# ordered by (account, seq) like the indexes on them: ordered by seq alone, the planner may walk the seq key
# backwards over every posting of the ledger for an account with few postings on one side
_BALANCES_AFTER_SQL: Final = """
    SELECT a.account_id, coalesce((
        SELECT m.after_fen FROM (
            (SELECT seq, debit_balance_after_fen AS after_fen FROM ledger_postings
             WHERE debit_account_id = a.account_id AND seq <= %(seq)s ORDER BY debit_account_id DESC, seq DESC LIMIT 1)
            UNION ALL
            (SELECT seq, credit_balance_after_fen FROM ledger_postings
             WHERE credit_account_id = a.account_id AND seq <= %(seq)s
             ORDER BY credit_account_id DESC, seq DESC LIMIT 1)
        ) AS m ORDER BY m.seq DESC LIMIT 1
    ), 0)
    FROM ledger_accounts a WHERE a.account_id = ANY(%(ids)s)
"""
_POSTING_COLUMNS: Final = (
    "posting_id, debit_account_id, credit_account_id, amount_fen, kind, at, reference, reverses, overdraw"
)
POSTING_ROW_COLUMNS: Final = f"{_POSTING_COLUMNS}, debit_balance_after_fen, credit_balance_after_fen, batch_id, seq"
# `%s` values of the postings' sequence; the sequence is looked up once (per row, the lookup cost 5 µs a value)
NEXT_POSTING_SEQS_SQL: Final = (
    "SELECT nextval((SELECT pg_get_serial_sequence('ledger_postings', 'seq'))::regclass) FROM generate_series(1, %s)"
)
_INSERT_POSTING: Final = f"""
    INSERT INTO ledger_postings ({POSTING_ROW_COLUMNS})
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""
_UPDATE_ACCOUNTS: Final = """
    UPDATE ledger_accounts AS a
    SET debits_fen = v.debits_fen, credits_fen = v.credits_fen, balance_fen = v.balance_fen, version = a.version + 1
    FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[])
        AS v(account_id, debits_fen, credits_fen, balance_fen, version)
    WHERE a.account_id = v.account_id AND a.version = v.version
"""

Connection = psycopg.Connection[Any]
Cursor = psycopg.Cursor[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class _Locked:
    """An account row locked for this transaction, as read."""

    account: Account
    debits_fen: int
    credits_fen: int
    version: int


# --------------------------------------------------------------------------- accounts


def open_accounts(conn: Connection, accounts: Iterable[Account]) -> Conflict | Rejected | None:
    """Open several accounts all-or-nothing (already open identical ones are no-ops); None on success."""
    requested = list(accounts)
    raced_conflict: Conflict | None = None
    with conn.transaction() as tx, conn.cursor(row_factory=tuple_row) as cur:
        existing = _read_accounts(cur, [a.account_id for a in requested])
        wanted: dict[str, Account] = {}
        for account in requested:
            earlier = wanted.setdefault(account.account_id, account)
            if earlier != account:
                return Conflict(account.account_id, differing_account_fields(earlier, account))
            problem = account_problem(account, existing.get(account.account_id))
            if problem is not None:
                return problem
        new = [a for a in wanted.values() if a.account_id not in existing]
        if not new:
            return None
        cur.execute(
            "INSERT INTO ledger_accounts (account_id, kind, floor_fen) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[]) "
            "ON CONFLICT (account_id) DO NOTHING RETURNING account_id",
            ([a.account_id for a in new], [str(a.kind) for a in new], [a.floor_fen for a in new]),
        )
        inserted = {row[0] for row in cur.fetchall()}
        # another writer opened some of them between our read and our insert: theirs must equal ours
        raced = [a for a in new if a.account_id not in inserted]
        stored = _read_accounts(cur, [a.account_id for a in raced])
        for account in raced:
            if stored[account.account_id] != account:
                fields = differing_account_fields(stored[account.account_id], account)
                raced_conflict = Conflict(account.account_id, fields)
                raise psycopg.Rollback(tx)
    return raced_conflict


def account(conn: Connection, account_id: str) -> Account | None:
    """The account with this id, if open."""
    with conn.cursor(row_factory=tuple_row) as cur:
        return _read_accounts(cur, [account_id]).get(account_id)


def balance_fen(conn: Connection, account_id: str) -> int:
    """Normal-side balance of an account; KeyError for an unknown account."""
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute("SELECT balance_fen FROM ledger_accounts WHERE account_id = %s", (account_id,)).fetchone()
    if row is None:
        raise KeyError(account_id)
    return int(row[0])


def balances_fen(
    conn: Connection, account_ids: Sequence[str], *, after_posting_id: str | None = None
) -> dict[str, int]:
    """Normal-side balances of accounts now, or right after a posting; KeyError for an unknown account or posting."""
    with conn.cursor(row_factory=tuple_row) as cur:
        if after_posting_id is None:
            cur.execute(
                "SELECT account_id, balance_fen FROM ledger_accounts WHERE account_id = ANY(%s)", (list(account_ids),)
            )
        else:
            row = cur.execute("SELECT seq FROM ledger_postings WHERE posting_id = %s", (after_posting_id,)).fetchone()
            if row is None:
                raise KeyError(after_posting_id)
            cur.execute(_BALANCES_AFTER_SQL, {"ids": list(account_ids), "seq": row[0]})
        found = {account_id: int(balance) for account_id, balance in cur.fetchall()}
    for account_id in account_ids:
        if account_id not in found:
            raise KeyError(account_id)
    return {account_id: found[account_id] for account_id in account_ids}


def _read_accounts(cur: Cursor, account_ids: Sequence[str]) -> dict[str, Account]:
    if not account_ids:
        return {}
    cur.execute(
        "SELECT account_id, kind, floor_fen FROM ledger_accounts WHERE account_id = ANY(%s)", (list(account_ids),)
    )
    return {row[0]: Account(row[0], AccountKind(row[1]), row[2]) for row in cur.fetchall()}


# --------------------------------------------------------------------------- postings


def posting_row(
    p: Posting, debit_balance_after_fen: int, credit_balance_after_fen: int, batch_id: int, seq: int
) -> tuple[Any, ...]:
    """The values of a `ledger_postings` row in the order of POSTING_ROW_COLUMNS."""
    return (
        p.posting_id,
        p.debit_account_id,
        p.credit_account_id,
        p.amount_fen,
        str(p.kind),
        p.at,
        p.reference,
        p.reverses,
        p.overdraw,
        debit_balance_after_fen,
        credit_balance_after_fen,
        batch_id,
        seq,
    )


def post_batch(
    conn: Connection,
    postings: Sequence[Posting],
    *,
    max_posting_fen: int = DEFAULT_MAX_POSTING_FEN,
    max_attempts: int = MAX_ATTEMPTS,
) -> PostOutcome:
    """Post a batch all-or-nothing in one transaction with `Ledger.post_all`'s outcomes; transient clashes retry."""
    if not 0 < max_posting_fen <= MAX_BIGINT:
        raise ValueError(f"max_posting_fen must be in 1..{MAX_BIGINT}, got {max_posting_fen}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    batch = tuple(postings)
    problem = batch_problem(batch)
    if problem is not None:
        return problem
    owned = conn.info.transaction_status == TransactionStatus.IDLE
    attempt = 1
    while True:
        try:
            with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
                return _post_once(cur, batch, max_posting_fen)
        except (errors.SerializationFailure, errors.DeadlockDetected, errors.UniqueViolation) as exc:
            if attempt >= max_attempts or not _retryable(exc, owned=owned):
                raise
            log.info("ledger batch %s: attempt %d failed (%s), retrying", batch[0].posting_id, attempt, exc.sqlstate)
            time.sleep(_RETRY_PAUSE_S * attempt)
            attempt += 1


def _retryable(exc: psycopg.Error, *, owned: bool) -> bool:
    if isinstance(exc, errors.UniqueViolation):
        return exc.diag.constraint_name in _POSTING_UNIQUE_CONSTRAINTS
    # inside a caller's transaction its snapshot and locks outlive our savepoint: only the caller can retry
    return owned


def _post_once(cur: Cursor, batch: tuple[Posting, ...], max_posting_fen: int) -> PostOutcome:
    account_ids = sorted({a for p in batch for a in (p.debit_account_id, p.credit_account_id)})
    locked = _lock_accounts(cur, account_ids)
    accounts = {a: s.account for a, s in locked.items()}
    for posting in batch:
        problem = posting_problem(posting, accounts, max_posting_fen)
        if problem is not None:
            return problem
    existing = existing_outcome(batch, _read_postings(cur, [p.posting_id for p in batch]))
    if existing is not None:
        return existing
    return _apply(cur, batch, locked)


def _lock_accounts(cur: Cursor, account_ids: Sequence[str]) -> dict[str, _Locked]:
    # one global lock order (the C collation does not depend on the server's locale): no deadlocks between writers
    cur.execute(
        "SELECT account_id, kind, floor_fen, debits_fen, credits_fen, version FROM ledger_accounts "
        'WHERE account_id = ANY(%s) ORDER BY account_id COLLATE "C" FOR UPDATE',
        (list(account_ids),),
    )
    return {
        row[0]: _Locked(Account(row[0], AccountKind(row[1]), row[2]), row[3], row[4], row[5]) for row in cur.fetchall()
    }


def _read_postings(cur: Cursor, posting_ids: Sequence[str]) -> dict[str, Posting]:
    cur.execute(f"SELECT {_POSTING_COLUMNS} FROM ledger_postings WHERE posting_id = ANY(%s)", (list(posting_ids),))
    return {row[0]: _posting(row) for row in cur.fetchall()}


def _posting(row: Sequence[Any]) -> Posting:
    return Posting(
        posting_id=row[0],
        debit_account_id=row[1],
        credit_account_id=row[2],
        amount_fen=row[3],
        kind=PostingKind(row[4]),
        at=row[5].astimezone(UTC),
        reference=row[6],
        reverses=row[7],
        overdraw=row[8],
    )


def _reversal_targets(cur: Cursor, batch: Sequence[Posting]) -> tuple[dict[str, Posting], set[str]]:
    """Postings the batch reverses, and which of them already have a reversal."""
    target_ids = [p.reverses for p in batch if p.reverses is not None]
    if not target_ids:
        return {}, set()
    cur.execute(
        f"SELECT {_POSTING_COLUMNS}, EXISTS (SELECT 1 FROM ledger_postings r WHERE r.reverses = t.posting_id) "
        "FROM ledger_postings t WHERE t.posting_id = ANY(%s)",
        (target_ids,),
    )
    rows = cur.fetchall()
    return {row[0]: _posting(row) for row in rows}, {row[0] for row in rows if row[9]}


def _apply(cur: Cursor, batch: tuple[Posting, ...], locked: Mapping[str, _Locked]) -> Posted | Rejected:
    targets, reversed_before = _reversal_targets(cur, batch)
    accounts = {a: s.account for a, s in locked.items()}
    totals = {a: (s.debits_fen, s.credits_fen) for a, s in locked.items()}
    checked = check_batch(batch, accounts, totals, targets, reversed_before)
    if isinstance(checked, Rejected):
        return checked

    cur.execute(NEXT_POSTING_SEQS_SQL, (len(batch),))
    seqs = sorted(int(row[0]) for row in cur.fetchall())
    rows = [
        posting_row(p, debit_after, credit_after, seqs[0], seq)
        for p, (debit_after, credit_after), seq in zip(batch, checked.balances_after_fen, seqs, strict=True)
    ]
    # one global insertion order: two batches sharing new ids wait on each other's index entries without a cycle
    rows.sort(key=lambda r: r[0])
    cur.executemany(_INSERT_POSTING, rows)

    touched = list(checked.totals_fen)
    cur.execute(
        _UPDATE_ACCOUNTS,
        (
            touched,
            [checked.totals_fen[a][0] for a in touched],
            [checked.totals_fen[a][1] for a in touched],
            [checked.balances_fen[a] for a in touched],
            [locked[a].version for a in touched],
        ),
    )
    if cur.rowcount != len(touched):
        # impossible while every writer goes through the row locks above; refuse rather than lose an update
        raise RuntimeError(f"ledger accounts changed under their row locks: {touched}")
    return Posted(batch, checked.balances_fen)


def posting(conn: Connection, posting_id: str) -> Posting | None:
    """The stored posting with this id, if any."""
    with conn.cursor(row_factory=tuple_row) as cur:
        return _read_postings(cur, [posting_id]).get(posting_id)


def postings(conn: Connection, posting_ids: Sequence[str]) -> tuple[Posting, ...]:
    """The stored postings among these ids, in the order asked."""
    with conn.cursor(row_factory=tuple_row) as cur:
        stored = _read_postings(cur, posting_ids)
    return tuple(stored[i] for i in posting_ids if i in stored)


def history(conn: Connection, account_id: str, limit: int = 100) -> tuple[Entry, ...]:
    """The newest `limit` postings of an account, oldest first, with signed effect and running balance."""
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    with conn.cursor(row_factory=tuple_row) as cur:
        found = _read_accounts(cur, [account_id]).get(account_id)
        if found is None:
            raise KeyError(account_id)
        cur.execute(
            f"""
            SELECT * FROM (
                (SELECT {_POSTING_COLUMNS}, seq, debit_balance_after_fen AS after_fen, 'debit' AS side
                 FROM ledger_postings WHERE debit_account_id = %(a)s ORDER BY seq DESC LIMIT %(n)s)
                UNION ALL
                (SELECT {_POSTING_COLUMNS}, seq, credit_balance_after_fen, 'credit'
                 FROM ledger_postings WHERE credit_account_id = %(a)s ORDER BY seq DESC LIMIT %(n)s)
            ) AS h ORDER BY seq DESC LIMIT %(n)s
            """,
            {"a": account_id, "n": limit},
        )
        rows = cur.fetchall()
    normal = NORMAL_SIDE[found.kind]
    entries = []
    for row in reversed(rows):
        p = _posting(row)
        side = Side(row[11])
        entries.append(Entry(row[9], p, side, p.amount_fen if side is normal else -p.amount_fen, row[10]))
    return tuple(entries)


# --------------------------------------------------------------------------- invariants

_TOTALS_SQL: Final = """
    SELECT coalesce(sum(debits_fen), 0), coalesce(sum(credits_fen), 0),
           coalesce(sum(balance_fen) FILTER (WHERE normal_side = 'debit'), 0),
           coalesce(sum(balance_fen) FILTER (WHERE normal_side = 'credit'), 0),
           (SELECT coalesce(sum(amount_fen), 0) FROM ledger_postings)
    FROM ledger_accounts
"""
_ACCOUNT_SUMS_SQL: Final = """
    SELECT a.account_id, a.balance_fen, a.debits_fen, a.credits_fen, coalesce(d.total, 0), coalesce(c.total, 0)
    FROM ledger_accounts a
    LEFT JOIN (SELECT debit_account_id AS account_id, sum(amount_fen) AS total FROM ledger_postings GROUP BY 1) d
        USING (account_id)
    LEFT JOIN (SELECT credit_account_id AS account_id, sum(amount_fen) AS total FROM ledger_postings GROUP BY 1) c
        USING (account_id)
    WHERE a.debits_fen <> coalesce(d.total, 0) OR a.credits_fen <> coalesce(c.total, 0)
       OR a.balance_fen <> CASE a.normal_side WHEN 'debit' THEN coalesce(d.total, 0) - coalesce(c.total, 0)
                                              ELSE coalesce(c.total, 0) - coalesce(d.total, 0) END
    ORDER BY a.account_id LIMIT 20
"""
_RUNNING_SQL: Final = """
    WITH moves AS (
        SELECT debit_account_id AS account_id, seq, posting_id, -amount_fen AS credit_minus_debit,
               debit_balance_after_fen AS after_fen
        FROM ledger_postings
        UNION ALL
        SELECT credit_account_id, seq, posting_id, amount_fen, credit_balance_after_fen FROM ledger_postings
    ), running AS (
        SELECT account_id, seq, posting_id, after_fen,
               sum(credit_minus_debit) OVER (PARTITION BY account_id ORDER BY seq) AS credits_minus_debits
        FROM moves
    )
    SELECT r.account_id, r.posting_id, r.after_fen
    FROM running r JOIN ledger_accounts a USING (account_id)
    WHERE r.after_fen <> CASE a.normal_side WHEN 'credit' THEN r.credits_minus_debits ELSE -r.credits_minus_debits END
    ORDER BY r.account_id, r.seq LIMIT 20
"""
_FLOORS_SQL: Final = """
    SELECT p.posting_id, a.account_id
    FROM ledger_postings p JOIN ledger_accounts a ON a.account_id = p.debit_account_id
    WHERE a.normal_side = 'credit' AND a.floor_fen IS NOT NULL AND NOT p.overdraw
      AND p.debit_balance_after_fen < a.floor_fen
    UNION ALL
    SELECT p.posting_id, a.account_id
    FROM ledger_postings p JOIN ledger_accounts a ON a.account_id = p.credit_account_id
    WHERE a.normal_side = 'debit' AND a.floor_fen IS NOT NULL AND p.credit_balance_after_fen < a.floor_fen
    LIMIT 20
"""
_REVERSALS_SQL: Final = """
    SELECT r.posting_id, t.posting_id
    FROM ledger_postings r JOIN ledger_postings t ON t.posting_id = r.reverses
    WHERE (r.debit_account_id, r.credit_account_id, r.amount_fen)
          <> (t.credit_account_id, t.debit_account_id, t.amount_fen)
       OR t.kind = 'reversal' OR r.seq < t.seq
    LIMIT 20
"""


def check_invariants(conn: Connection) -> tuple[str, ...]:
    """Every violated ledger invariant, one line each (at most 20 per kind); empty when the ledger is sound."""
    problems: list[str] = []
    owned = conn.info.transaction_status == TransactionStatus.IDLE
    with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        if owned:
            # one snapshot for all the checks, so that concurrent writers can't make them disagree
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = cur.execute(_TOTALS_SQL).fetchone()
        assert row is not None
        debits, credits, debit_side, credit_side, posted = (int(v) for v in row)
        if debits != credits:
            problems.append(f"debits {debits} fen != credits {credits} fen")
        if debits != posted or credits != posted:
            problems.append(f"account totals {debits}/{credits} fen != {posted} fen posted")
        if debit_side != credit_side:
            problems.append(f"debit-normal balances {debit_side} fen != credit-normal balances {credit_side} fen")
        for account_id, balance, d, c, d_sum, c_sum in cur.execute(_ACCOUNT_SUMS_SQL).fetchall():
            problems.append(
                f"{account_id}: balance {balance}, debits {d}, credits {c} fen != Σ its postings ({d_sum}, {c_sum})"
            )
        for account_id, posting_id, after in cur.execute(_RUNNING_SQL).fetchall():
            problems.append(f"{account_id}: running balance {after} fen after {posting_id} != Σ postings up to it")
        for posting_id, account_id in cur.execute(_FLOORS_SQL).fetchall():
            problems.append(f"{posting_id} took {account_id} below its floor without overdraw")
        for reversal_id, target_id in cur.execute(_REVERSALS_SQL).fetchall():
            problems.append(f"{reversal_id} does not mirror {target_id}")
    return tuple(problems)
