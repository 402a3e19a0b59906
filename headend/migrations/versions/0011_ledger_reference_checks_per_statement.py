"""Check the ledger postings' references once per statement instead of once per row and key.

A foreign key runs a query per inserted row and per key: a usage posting paid two (its debit and its credit
account) and queued a third (`reverses`, NULL). On the settlement benchmark's COPY of 100,000 postings that was
about 14 µs of backend CPU per posting of 33–38 µs, the largest single cost of appending postings. The same rule
is now checked by one statement trigger over the statement's new rows (a set-based anti-join): every debit and
credit account is open, and every reversed posting exists. It raises `foreign_key_violation`, as the foreign
keys did.

What a foreign key also guaranteed, that the referenced rows stay, holds by construction: `ledger_postings` is
append-only already, and `ledger_accounts` now refuses DELETE, TRUNCATE and a change of `account_id` (an account
is closed by its state, never removed). Two more entries per posting go: the index on `batch_id`, which no query
uses, and the NULL entry of every posting that reverses nothing in the unique index on `reverses` (now partial,
under the same name, so a second reversal of a posting still fails on `ledger_postings_reverses_key`).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FOREIGN_KEYS = (
    ("ledger_postings_debit_account_id_fkey", "debit_account_id", "ledger_accounts", "account_id"),
    ("ledger_postings_credit_account_id_fkey", "credit_account_id", "ledger_accounts", "account_id"),
    ("ledger_postings_reverses_fkey", "reverses", "ledger_postings", "posting_id"),
)


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION ledger_postings_references_exist() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            bad record;
        BEGIN
            SELECT n.posting_id, n.debit_account_id, n.credit_account_id, n.reverses INTO bad
            FROM new_postings n
            WHERE NOT EXISTS (SELECT 1 FROM ledger_accounts a WHERE a.account_id = n.debit_account_id)
                OR NOT EXISTS (SELECT 1 FROM ledger_accounts a WHERE a.account_id = n.credit_account_id)
                OR (n.reverses IS NOT NULL
                    AND NOT EXISTS (SELECT 1 FROM ledger_postings p WHERE p.posting_id = n.reverses))
            LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION 'ledger posting % refers to what does not exist (debit %, credit %, reverses %)',
                    bad.posting_id, bad.debit_account_id, bad.credit_account_id, coalesce(bad.reverses, '-')
                    USING ERRCODE = 'foreign_key_violation', TABLE = 'ledger_postings';
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER ledger_postings_references_exist AFTER INSERT ON ledger_postings "
        "REFERENCING NEW TABLE AS new_postings FOR EACH STATEMENT EXECUTE FUNCTION ledger_postings_references_exist()"
    )
    for name, *_ in _FOREIGN_KEYS:
        op.drop_constraint(name, "ledger_postings", type_="foreignkey")
    op.execute(
        """
        CREATE FUNCTION ledger_accounts_stay() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'ledger accounts stay (postings refer to them): % refused', TG_OP
                USING ERRCODE = 'restrict_violation', HINT = 'close an account through its state instead';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER ledger_accounts_no_delete BEFORE DELETE OR UPDATE OF account_id ON ledger_accounts "
        "FOR EACH ROW EXECUTE FUNCTION ledger_accounts_stay()"
    )
    op.execute(
        "CREATE TRIGGER ledger_accounts_no_truncate BEFORE TRUNCATE ON ledger_accounts "
        "FOR EACH STATEMENT EXECUTE FUNCTION ledger_accounts_stay()"
    )
    op.drop_index("ix_ledger_postings_batch_id", table_name="ledger_postings")
    op.drop_constraint("ledger_postings_reverses_key", "ledger_postings", type_="unique")
    op.execute(
        "CREATE UNIQUE INDEX ledger_postings_reverses_key ON ledger_postings (reverses) WHERE reverses IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_index("ledger_postings_reverses_key", table_name="ledger_postings")
    op.create_unique_constraint("ledger_postings_reverses_key", "ledger_postings", ["reverses"])
    op.create_index("ix_ledger_postings_batch_id", "ledger_postings", ["batch_id"])
    op.execute("DROP TRIGGER ledger_accounts_no_truncate ON ledger_accounts")
    op.execute("DROP TRIGGER ledger_accounts_no_delete ON ledger_accounts")
    op.execute("DROP FUNCTION ledger_accounts_stay()")
    for name, column, table, key in _FOREIGN_KEYS:
        op.create_foreign_key(name, "ledger_postings", table, [column], [key])
    op.execute("DROP TRIGGER ledger_postings_references_exist ON ledger_postings")
    op.execute("DROP FUNCTION ledger_postings_references_exist()")
