"""Helpers for tests of what a running worker says: a private Mosquitto on a chosen port, a worker's stderr lines."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest

BROKER_CONFIG = """\
listener {port} 127.0.0.1
allow_anonymous {anonymous}
persistence false
log_dest none
"""


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def private_mosquitto(port: int, *, allow_anonymous: bool = True) -> Iterator[None]:
    """A Mosquitto of our own on 127.0.0.1:`port` (refusing every client when not `allow_anonymous`)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    workdir = Path(tempfile.mkdtemp(prefix="test-mosquitto-"))
    config = workdir / "mosquitto.conf"
    config.write_text(BROKER_CONFIG.format(port=port, anonymous="true" if allow_anonymous else "false"))
    # mosquitto started as root reads its configuration as its own unprivileged user
    config.chmod(0o644)
    workdir.chmod(0o755)
    process = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _listening(port):
            assert process.poll() is None, f"mosquitto exited with {process.returncode}"
            assert time.monotonic() < deadline, "mosquitto did not listen within 10 s"
            time.sleep(0.05)
        yield
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


class Lines:
    """The lines a process writes to one of its pipes, collected by a thread as they come."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._stream = stream
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()

    def close(self) -> None:
        """After the process has ended: the last lines read, the pipe closed."""
        self._reader.join(10)
        self._stream.close()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, text: str, timeout_s: float, *, after: int = 0) -> int:
        """The index of the first line from `after` on that contains `text`; fail the test after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for index in range(after, len(self.lines)):
                    if text in self.lines[index]:
                        return index
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no line with {text!r} within {timeout_s} s:\n" + "\n".join(self.lines))
                self._changed.wait(left)
