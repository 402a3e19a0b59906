"""A throwaway PostgreSQL cluster for tests that need a server configured otherwise than the shared one."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def as_postgres(*command: str) -> list[str]:
    """`command` as the postgres OS user when running as root (initdb and postgres refuse to run as root)."""
    if os.geteuid() != 0:
        return list(command)
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root without runuser to start PostgreSQL as the postgres user")
    return [runuser, "-u", "postgres", "--", *command]


@dataclass(frozen=True)
class Cluster:
    """A running throwaway cluster: its port and the folder of its socket."""

    port: int
    socket_dir: Path


@contextlib.contextmanager
def throwaway_cluster(
    bin_dir: Path, *, initdb_options: Sequence[str], server_options: str = "", prefix: str = "headend-pg-"
) -> Iterator[Cluster]:
    """A new cluster of the binaries in `bin_dir` on a free port of 127.0.0.1, stopped and removed afterwards."""
    if not (bin_dir / "initdb").exists():
        pytest.skip(f"no PostgreSQL binaries at {bin_dir}")
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", free_port()
    pg_ctl = str(bin_dir / "pg_ctl")
    subprocess.run(
        as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8", *initdb_options),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {folder} {server_options}".strip()
    try:
        subprocess.run(
            as_postgres(pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"),
            check=True,
            capture_output=True,
        )
        yield Cluster(port, folder)
    finally:
        subprocess.run(as_postgres(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
