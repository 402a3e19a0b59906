"""Database access: engine, schema models, migrations and storage-specific helpers."""
