"""Alembic migrations; the schema is owned here."""
