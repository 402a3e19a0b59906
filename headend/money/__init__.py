"""Money in PostgreSQL: the double-entry ledger, payments, and the intake every payment comes through."""
