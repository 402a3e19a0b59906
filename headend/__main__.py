"""`python -m headend` runs the command line."""

from headend.cli.app import app

if __name__ == "__main__":  # not when a spawned worker process (settlement) imports this module again
    app()
