"""The `headend` command line: typer apps that parse, call a capability, print."""
