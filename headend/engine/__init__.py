"""The prepay engine's edge: charging readings into the ledger, the runner, settlement, account operations."""
