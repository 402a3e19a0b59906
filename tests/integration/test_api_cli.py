"""The API's commands on the real PostgreSQL: tokens, channel secrets, and `headend serve` answering over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import psycopg
from typer.testing import CliRunner, Result

from headend.api import store
from headend.api.credentials import Principal, Role
from headend.cli.app import app
from tests.integration.conftest import ADMIN_URL, wait_for


def _run(database_url: str, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"HEADEND_DATABASE_URL": database_url})


def _channel(database_url: str, channel: str) -> tuple[Any, ...] | None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT hmac_secret, previous_hmac_secret, previous_valid_until - now() > interval '23 hours', "
            "disabled_at IS NOT NULL FROM payment_channels WHERE channel = %s",
            (channel,),
        ).fetchone()


def test_a_token_is_printed_once_stored_as_its_hash_and_revoked(database_url: str) -> None:
    created = _run(database_url, "api-token", "create", "--name", "ops.zhang", "--role", "operator")
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert "shown once" in created.stderr
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert store.principal_for_token(conn, token) == Principal("ops.zhang", Role.OPERATOR)
        stored = conn.execute("SELECT token_sha256 FROM api_principals").fetchone()
        assert stored is not None
        assert token.encode() not in bytes(stored[0])

    again = _run(database_url, "api-token", "create", "--name", "ops.zhang", "--role", "admin")
    assert again.exit_code == 1
    assert "already exists" in again.stderr
    bad_name = _run(database_url, "api-token", "create", "--name", "Ops Zhang", "--role", "operator")
    assert bad_name.exit_code == 1
    assert "must be 1–64" in bad_name.stderr
    channel_name = _run(database_url, "api-token", "create", "--name", "we.chat", "--role", "channel")
    assert channel_name.exit_code == 1
    assert "named after its channel" in channel_name.stderr
    bad_role = _run(database_url, "api-token", "create", "--name", "x", "--role", "root")
    assert bad_role.exit_code == 2

    revoked = _run(database_url, "api-token", "revoke", "--name", "ops.zhang")
    assert revoked.exit_code == 0, revoked.output
    assert "principal ops.zhang revoked at" in revoked.stdout
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert store.principal_for_token(conn, token) is None
    assert "already revoked" in _run(database_url, "api-token", "revoke", "--name", "ops.zhang").stdout
    unknown = _run(database_url, "api-token", "revoke", "--name", "nobody")
    assert unknown.exit_code == 1
    assert "no principal 'nobody'" in unknown.stderr


def test_channels_are_added_rotated_disabled_and_enabled(database_url: str, tmp_path: Path) -> None:
    added = _run(database_url, "channel", "add", "--channel", "wechat")
    assert added.exit_code == 0, added.output
    secret = added.stdout.strip()
    assert _channel(database_url, "wechat") == (secret, None, None, False)
    twice = _run(database_url, "channel", "add", "--channel", "wechat")
    assert twice.exit_code == 1
    assert "already exists" in twice.stderr
    counter = _run(database_url, "channel", "add", "--channel", "counter")
    assert counter.exit_code == 1
    assert "reserved" in counter.stderr

    secret_file = tmp_path / "alipay.secret"
    secret_file.write_text("alipay-secret-from-a-file-0123456789abcdef\n", encoding="utf-8")
    from_file = _run(database_url, "channel", "add", "--channel", "alipay", "--secret-file", str(secret_file))
    assert from_file.exit_code == 0, from_file.output
    assert "alipay-secret" not in from_file.output
    assert _channel(database_url, "alipay") == ("alipay-secret-from-a-file-0123456789abcdef", None, None, False)
    short = tmp_path / "short.secret"
    short.write_text("too short", encoding="utf-8")
    refused = _run(database_url, "channel", "add", "--channel", "unionpay", "--secret-file", str(short))
    assert refused.exit_code == 1
    assert "32–256" in refused.stderr
    missing = _run(database_url, "channel", "add", "--channel", "unionpay", "--secret-file", str(tmp_path / "nope"))
    assert missing.exit_code == 1
    assert _channel(database_url, "unionpay") is None

    rotated = _run(database_url, "channel", "rotate", "--channel", "wechat")
    assert rotated.exit_code == 0, rotated.output
    new_secret = rotated.stdout.strip()
    assert "previous accepted until" in rotated.stderr
    assert _channel(database_url, "wechat") == (new_secret, secret, True, False)
    at_once = _run(database_url, "channel", "rotate", "--channel", "wechat", "--grace-hours", "0")
    assert at_once.exit_code == 0, at_once.output
    assert "previous refused from now on" in at_once.stderr
    assert _channel(database_url, "wechat") == (at_once.stdout.strip(), None, None, False)
    unknown = _run(database_url, "channel", "rotate", "--channel", "nope")
    assert unknown.exit_code == 1
    assert "no channel 'nope'" in unknown.stderr

    disabled = _run(database_url, "channel", "disable", "--channel", "wechat")
    assert disabled.exit_code == 0, disabled.output
    assert disabled.stdout.strip() == "channel wechat disabled"
    assert "already disabled" in _run(database_url, "channel", "disable", "--channel", "wechat").stdout
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert store.channel_secrets(conn, "wechat", datetime.now(UTC)) == ()
    enabled = _run(database_url, "channel", "enable", "--channel", "wechat")
    assert enabled.stdout.strip() == "channel wechat enabled"
    assert _run(database_url, "channel", "disable", "--channel", "nope").exit_code == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_answers_over_http_until_stopped(database_url: str) -> None:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "headend", "serve", "--port", str(port)],
        env={**os.environ, "HEADEND_DATABASE_URL": database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def healthy() -> bool:
            try:
                return httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx2.TransportError:
                return False

        wait_for(healthy, 30, "the API to answer")
        answer = httpx2.get(f"http://127.0.0.1:{port}/v1/accounts/A1", timeout=5)
        assert answer.status_code == 401
        assert answer.headers["content-type"] == "application/problem+json"
        assert "/v1/channels/{channel}/payments" in httpx2.get(f"http://127.0.0.1:{port}/openapi.json").json()["paths"]
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    # uvicorn shuts down gracefully, then ends by the signal it was sent, as process managers expect
    assert server.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output


def test_serve_refuses_a_database_that_is_not_migrated(tmp_path: Path) -> None:
    name = f"headend_unmigrated_{os.getpid()}_{tmp_path.name[-8:]}".replace("-", "_")
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        result = subprocess.run(
            [sys.executable, "-m", "headend", "serve", "--port", str(_free_port())],
            env={**os.environ, "HEADEND_DATABASE_URL": ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert result.returncode != 0
    assert "run `headend migrate` first" in result.stdout + result.stderr
