"""`headend switches` and `headend meters find` start fast: their help loads no database driver nor web framework."""

from __future__ import annotations

import pytest

from tests.unit.test_cli_startup import HEAVY, _all_modules_after


@pytest.mark.parametrize(
    "args",
    [("switches", "--help"), ("switches", "import", "--help"), ("meters", "find", "--help")],
    ids=" ".join,
)
def test_help_imports_nothing_heavy(args: tuple[str, ...]) -> None:
    loaded = _all_modules_after(*args)
    assert "headend.cli.switches" in loaded  # the probe saw the command
    assert sorted({name.split(".")[0] for name in loaded} & set(HEAVY)) == []
    assert sorted(name for name in loaded if name.startswith("headend.registry")) == []
