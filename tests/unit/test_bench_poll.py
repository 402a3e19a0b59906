"""The pure helpers of bench/poll.py: its options, how meters are spread over endpoints and processes, the rounds'
clocks, the registry rows as the poller loads them."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bench.poll import parse_args, polled_meters, round_shifts, server_specs, split_meters
from headend.poll.targets import Endpoint


def test_defaults_and_quick() -> None:
    args = parse_args([])
    assert (args.meters, args.endpoints, args.repeat, args.protocols) == (1000, 50, 3, ["modbus", "dlt645"])
    assert (args.baud, args.latency_s, args.server_processes, args.profile) == (9600, 0.03, 1, False)
    quick = parse_args(["--quick", "--protocol", "dlt645"])
    assert (quick.meters, quick.endpoints, quick.repeat, quick.protocols) == (200, 20, 1, ["dlt645"])
    sized = parse_args(["--meters", "40", "--endpoints", "4", "--repeat", "5", "--protocol", "modbus"])
    assert (sized.meters, sized.endpoints, sized.repeat, sized.protocols) == (40, 4, 5, ["modbus"])


@pytest.mark.parametrize(
    "argv",
    [
        ["--protocol", "mqtt"],
        ["--repeat", "0"],
        ["--meters", "10", "--endpoints", "11"],
        ["--meters", "1000", "--endpoints", "4"],  # 250 units on one Modbus endpoint
        ["--baud", "0"],
        ["--latency-s", "-1"],
        ["--server-processes", "0"],
    ],
)
def test_bad_options_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_meters_are_spread_evenly_over_endpoints_and_processes() -> None:
    assert split_meters(1000, 50) == [20] * 50
    assert split_meters(10, 4) == [3, 3, 2, 2]
    specs = server_specs("modbus", 10, 4, 3, 9600, 0.03)
    assert [s.endpoints for s in specs] == [(0, 3), (1,), (2,)]
    assert [s.meters_each for s in specs] == [(3, 2), (3,), (2,)]
    assert sum(sum(s.meters_each) for s in specs) == 10
    assert len(server_specs("dlt645", 10, 2, 8, 9600, 0.03)) == 2  # no process without an endpoint


def test_each_round_is_a_later_load_point_ending_at_the_true_time() -> None:
    interval = timedelta(minutes=15)
    assert round_shifts(4, interval) == [-3 * interval, -2 * interval, -interval, timedelta(0)]
    assert round_shifts(1, interval) == [timedelta(0)]


def test_registry_rows_become_the_meters_the_poller_loads() -> None:
    rows = [
        {"meter_id": "B", "protocol": "modbus", "model": "eastron_sdm120", "endpoint": "127.0.0.1:5021"}
        | {"unit_id": "2", "address": "", "bus": ""},
        {"meter_id": "A", "protocol": "dlt645", "model": "dlt645_2007", "endpoint": "127.0.0.1:5020"}
        | {"unit_id": "", "address": "000000001001", "bus": "rs485-1"},
    ]
    first, second = polled_meters(rows)
    assert (first.meter_id, first.endpoint, first.address, first.unit_id) == (
        "A",
        Endpoint("127.0.0.1", 5020, "rs485-1"),
        "000000001001",
        None,
    )
    assert (second.meter_id, second.endpoint, second.unit_id, second.model) == (
        "B",
        Endpoint("127.0.0.1", 5021),
        2,
        "eastron_sdm120",
    )
