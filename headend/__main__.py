"""`python -m headend` runs the command line."""

from headend.cli import app

app()
