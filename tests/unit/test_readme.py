"""The README stays true: every setting is in its configuration table, every command group in its command table."""

from __future__ import annotations

import re
from pathlib import Path

from typer.core import TyperGroup
from typer.main import get_command

from headend.cli.app import app
from headend.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_configuration_table() -> None:
    documented = set(re.findall(r"`HEADEND_([A-Z0-9_]+)`", README))
    expected = {name.upper() for name in Settings.model_fields}
    assert sorted(expected - documented) == []


def test_every_command_is_in_the_command_table() -> None:
    root = get_command(app)
    assert isinstance(root, TyperGroup)
    missing = [name for name in root.commands if f"`headend {name}" not in README and f"`{name}`" not in README]
    assert missing == []
