"""The pure helpers of bench/reaction.py: probe placement, grid, schedules, percentiles, log parsing, backlog."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime

import pytest

from bench.reaction import (
    Summary,
    background_step_wh,
    grid_floor,
    group_by_concentrator,
    max_outstanding,
    parse_sweep,
    percentile,
    poisson_times,
    sample_indices,
    sample_sql,
)


def _sql_predicate_in_python(accounts: int, sample: int, i: int) -> bool:
    # sample_sql is `(i % stride = half AND i / stride < sample)`: integer arithmetic, the same in Python
    stride = accounts // sample
    assert sample_sql(accounts, sample) == f"(i % {stride} = {stride // 2} AND i / {stride} < {sample})"
    return i % stride == stride // 2 and i // stride < sample


@pytest.mark.parametrize(("accounts", "sample"), [(100_000, 200), (10_000, 40), (1_001, 7), (10, 5), (3, 1)])
def test_the_sql_predicate_selects_exactly_the_sample(accounts: int, sample: int) -> None:
    chosen = sample_indices(accounts, sample)
    assert len(chosen) == sample == len(set(chosen))
    assert all(0 <= i < accounts for i in chosen)
    assert [i for i in range(accounts) if _sql_predicate_in_python(accounts, sample, i)] == chosen


def test_probes_are_spread_evenly() -> None:
    chosen = sample_indices(100_000, 200)
    gaps = {b - a for a, b in itertools.pairwise(chosen)}
    assert gaps == {500}
    assert chosen[0] == 250


def test_grid_floor() -> None:
    assert grid_floor(datetime(2026, 11, 22, 20, 44, 59, 999, tzinfo=UTC)) == datetime(2026, 11, 22, 20, 30, tzinfo=UTC)
    assert grid_floor(datetime(2026, 11, 22, 20, 45, tzinfo=UTC)) == datetime(2026, 11, 22, 20, 45, tzinfo=UTC)


def test_background_steps_are_register_steps() -> None:
    steps = {background_step_wh(i) for i in range(1000)}
    assert min(steps) == 50
    assert max(steps) == 540
    assert all(s % 10 == 0 for s in steps)


def test_poisson_times_increase_and_repeat_with_the_seed() -> None:
    times = poisson_times(500, 0.2, seed=3)
    assert len(times) == 500
    assert all(b > a for a, b in itertools.pairwise(times))
    assert times == poisson_times(500, 0.2, seed=3)
    assert 0.15 < times[-1] / 500 < 0.25


def test_nearest_rank_percentile() -> None:
    values = [float(v) for v in range(1, 201)]
    assert percentile(values, 50) == 100
    assert percentile(values, 99) == 198
    assert percentile(values, 100) == 200
    assert percentile([5.0], 99) == 5
    assert percentile([3.0, 1.0, 2.0], 0) == 1


def test_summary() -> None:
    s = Summary.of([0.1, 0.3, 0.2])
    assert (s.p50, s.max, s.count) == (0.2, 0.3, 3)
    assert math.isnan(Summary.of([]).p99)
    assert Summary.of([0.0123, 0.004]).ms() == "p50 4.0 · p90 12 · p99 12 · max 12 ms"


def test_parse_sweep() -> None:
    line = (
        "2026-11-22 20:21:01,201 INFO headend.engine.runner: charged 4 accounts: 4 charges, 4 postings, 288 fen, "
        "4 notifications, 4 commands in 0.05 s"
    )
    sweep = parse_sweep(line)
    assert sweep is not None
    assert (sweep.accounts, sweep.charges, sweep.seconds) == (4, 4, 0.05)
    assert sweep.ended == datetime(2026, 11, 22, 20, 21, 1, 201000).timestamp()  # noqa: DTZ001 - local, as logged
    assert parse_sweep("2026-11-22 20:20:42,269 INFO headend.dispatch: subscribed to x") is None
    assert parse_sweep("stopped: 296 accounts") is None


def test_group_by_concentrator_keeps_order() -> None:
    rows = [("d1", "m1", 10, 40), ("d1", "m2", 20, 80), ("d0", "m3", 30, 120)]
    assert group_by_concentrator(rows) == [("d1", [("m1", 10, 40), ("m2", 20, 80)]), ("d0", [("m3", 30, 120)])]


def test_max_outstanding() -> None:
    spans = [(0.0, 5.0), (1.0, 2.0), (2.0, 3.0), (4.0, 10.0), (20.0, 21.0)]
    assert max_outstanding(spans, 0.0, 30.0) == 2  # (1, 2) ends when (2, 3) begins
    assert max_outstanding(spans, 4.5, 6.0) == 2  # open at the window's start
    assert max_outstanding(spans, 11.0, 19.0) == 0
    assert max_outstanding([(0.0, 1.0)] * 3 + [(0.5, 2.0)], 0.0, 1.0) == 4
