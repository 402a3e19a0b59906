"""How many processes a settlement charges with."""

from __future__ import annotations

import os

import pytest

from headend.engine.settlement import settle_workers


def test_a_settlement_runs_one_worker_more_than_cpus_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert settle_workers(0) == 3
    assert settle_workers(1) == 1
    assert settle_workers(5) == 5
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: one CPU
    assert settle_workers(0) == 2
