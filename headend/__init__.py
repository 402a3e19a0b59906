"""The head-end application: settings, database, ingest, reports and the CLI."""
