"""The money and the decisions: tariffs, ledger, payments, usage charging, disconnect policy. Pure: no I/O, no clock."""
