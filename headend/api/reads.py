"""Read models of the API: an account with its balances, a page of its ledger — each one statement, one snapshot."""

from __future__ import annotations

from datetime import UTC
from typing import Final

from psycopg.rows import tuple_row

from headend.api.db import Connection
from headend.api.schemas import AccountOut, LedgerBook, LedgerEntryOut, LedgerPage, PendingCommandOut
from prepay_engine.ledger import (
    MAX_BIGINT,
    NORMAL_SIDE,
    AccountKind,
    Side,
    debt_account_id,
    emergency_credit_account_id,
    prepaid_account_id,
)

_BOOK_ACCOUNT: Final = {
    LedgerBook.PREPAID: prepaid_account_id,
    LedgerBook.EMERGENCY_CREDIT: emergency_credit_account_id,
    LedgerBook.DEBT: debt_account_id,
}
_ACCOUNT_SQL: Final = """
    SELECT p.account_id, p.meter_id, p.tariff_code, p.policy_code, p.zone,
           (SELECT balance_fen FROM ledger_accounts WHERE account_id = %(prepaid)s),
           (SELECT balance_fen FROM ledger_accounts WHERE account_id = %(emergency)s),
           (SELECT balance_fen FROM ledger_accounts WHERE account_id = %(debt)s),
           p.emergency_credit_fen, p.debt_recovery_bps, p.supply, p.protected, p.keep_supply, p.pending_command,
           p.charged_until, p.opened_at
    FROM prepaid_accounts p WHERE p.account_id = %(account)s
"""
# the newest postings of one ledger account before a sequence number: one index range scan per side
_PAGE_SQL: Final = """
    WITH a AS (
        SELECT l.kind, l.balance_fen FROM ledger_accounts l
        WHERE l.account_id = %(ledger)s AND EXISTS (SELECT 1 FROM prepaid_accounts WHERE account_id = %(account)s)
    )
    SELECT a.kind, a.balance_fen, h.* FROM a LEFT JOIN LATERAL (
        SELECT * FROM (
            (SELECT seq, posting_id, kind, at, reference, reverses, amount_fen, credit_account_id,
                    debit_balance_after_fen, 'debit' AS side
             FROM ledger_postings WHERE debit_account_id = %(ledger)s AND seq < %(before)s
             ORDER BY seq DESC LIMIT %(n)s)
            UNION ALL
            (SELECT seq, posting_id, kind, at, reference, reverses, amount_fen, debit_account_id,
                    credit_balance_after_fen, 'credit'
             FROM ledger_postings WHERE credit_account_id = %(ledger)s AND seq < %(before)s
             ORDER BY seq DESC LIMIT %(n)s)
        ) AS both_sides ORDER BY seq DESC LIMIT %(n)s
    ) AS h ON true
    ORDER BY h.seq DESC
"""


def account_view(conn: Connection, account_id: str) -> AccountOut | None:
    """A prepaid account with its balances now, or None when there is no such account."""
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(
            _ACCOUNT_SQL,
            {
                "account": account_id,
                "prepaid": prepaid_account_id(account_id),
                "emergency": emergency_credit_account_id(account_id),
                "debt": debt_account_id(account_id),
            },
        ).fetchone()
    if row is None:
        return None
    pending = row[13]
    return AccountOut(
        account_id=row[0],
        meter_id=row[1],
        tariff_code=row[2],
        policy_code=row[3],
        zone=row[4],
        balance_fen=row[5],
        emergency_credit_outstanding_fen=row[6],
        debt_fen=row[7],
        emergency_credit_limit_fen=row[8],
        debt_recovery_bps=row[9],
        supply=row[10],
        protected=row[11],
        keep_supply=row[12],
        pending_command=None if pending is None else PendingCommandOut(**pending),
        charged_until=row[14].astimezone(UTC),
        opened_at=row[15].astimezone(UTC),
    )


def ledger_page(
    conn: Connection, account_id: str, book: LedgerBook, *, limit: int, before_seq: int | None
) -> LedgerPage | None:
    """Up to `limit` postings of one of the account's ledger accounts before `before_seq`, newest first."""
    ledger_id = _BOOK_ACCOUNT[book](account_id)
    before = MAX_BIGINT if before_seq is None else before_seq
    params = {"ledger": ledger_id, "account": account_id, "before": before, "n": limit + 1}
    with conn.cursor(row_factory=tuple_row) as cur:
        rows = cur.execute(_PAGE_SQL, params).fetchall()
    if not rows:
        return None
    normal = NORMAL_SIDE[AccountKind(rows[0][0])]
    postings = [r for r in rows if r[2] is not None]
    entries = [
        LedgerEntryOut(
            seq=seq,
            posting_id=posting_id,
            kind=kind,
            at=at.astimezone(UTC),
            delta_fen=amount if Side(side) is normal else -amount,
            balance_after_fen=after,
            counter_account_id=counter,
            reference=reference,
            reverses=reverses,
        )
        for _, _, seq, posting_id, kind, at, reference, reverses, amount, counter, after, side in postings[:limit]
    ]
    more = len(postings) > limit
    return LedgerPage(
        account_id=account_id,
        book=book,
        ledger_account_id=ledger_id,
        balance_fen=rows[0][1],
        entries=entries,
        next_before_seq=entries[-1].seq if more else None,
    )
