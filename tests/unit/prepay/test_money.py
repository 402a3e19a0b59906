"""Money: fen/yuan conversions, exact energy amounts, and the residue-carrying `FenAccumulator`."""

from __future__ import annotations

import decimal
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prepay_engine.money import (
    FenAccumulator,
    energy_amount_yuan,
    fen_to_yuan,
    pico_yuan_to_yuan,
    round_pico_yuan_to_fen,
    round_yuan_to_fen,
    to_pico_yuan,
    yuan_to_fen,
)

# exact amounts with up to 7 decimals, as energy (Wh) x price (4 decimals) / 1000 produces
exact_amounts = st.integers(min_value=0, max_value=50_000_000).map(lambda n: Decimal(n).scaleb(-7))


# --------------------------------------------------------------------------- conversions


@pytest.mark.parametrize(
    ("amount", "expected_fen"),
    [
        ("0.005", 1),  # half a fen rounds up
        ("0.0049999", 0),
        ("0.025", 3),  # banker's rounding would give 2
        ("1.235", 124),
        ("1.2349999", 123),
        ("0", 0),
        ("167.4900000", 16749),
    ],
)
def test_round_yuan_to_fen_is_half_up(amount: str, expected_fen: int) -> None:
    assert round_yuan_to_fen(Decimal(amount)) == expected_fen


def test_yuan_to_fen_is_exact() -> None:
    assert yuan_to_fen(Decimal("50.00")) == 5000
    assert yuan_to_fen(Decimal("50")) == 5000
    assert yuan_to_fen(Decimal("0.01")) == 1
    assert yuan_to_fen(Decimal("0.010000")) == 1


@pytest.mark.parametrize("bad", [Decimal("0.001"), Decimal("12.345"), Decimal("NaN"), Decimal("Infinity")])
def test_yuan_to_fen_refuses_what_is_not_whole_fen(bad: Decimal) -> None:
    with pytest.raises(ValueError, match=r"fen|finite"):
        yuan_to_fen(bad)


def test_float_is_refused() -> None:
    with pytest.raises(ValueError, match="finite Decimal"):
        yuan_to_fen(0.1)  # type: ignore[arg-type]


def test_fen_to_yuan_has_two_decimals() -> None:
    assert str(fen_to_yuan(5000)) == "50.00"
    assert str(fen_to_yuan(1)) == "0.01"
    assert str(fen_to_yuan(-250)) == "-2.50"


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_fen_yuan_round_trip(amount_fen: int) -> None:
    assert yuan_to_fen(fen_to_yuan(amount_fen)) == amount_fen


def test_energy_amount_is_exact() -> None:
    assert energy_amount_yuan(3, Decimal("0.5583")) == Decimal("0.0016749")
    assert energy_amount_yuan(0, Decimal("0.5583")) == 0
    big_wh, price = 987_654_321_987, Decimal("0.55831234567")
    assert Fraction(energy_amount_yuan(big_wh, price)) == Fraction(big_wh) * Fraction(price) / 1000


def test_an_amount_that_would_need_rounding_raises_instead_of_losing_a_digit() -> None:
    price = Decimal("0." + "7" * 70)  # more digits than the exact context's precision
    with pytest.raises(decimal.Inexact):
        energy_amount_yuan(3, price)


# --------------------------------------------------------------------------- FenAccumulator


def test_a_million_small_charges_add_up_to_the_exact_total_rounded_once() -> None:
    amount = energy_amount_yuan(3, Decimal("0.5583"))  # 0.0016749 yuan = 0.16749 fen
    assert round_yuan_to_fen(amount) == 0  # rounding each charge alone would charge nothing at all
    accumulator = FenAccumulator()
    total_fen = 0
    largest_fen = 0
    for _ in range(1_000_000):
        accumulator, fen = accumulator.add(amount)
        total_fen += fen
        largest_fen = max(largest_fen, fen)
    # 1,000,000 x 3 Wh = 3,000 kWh at 0.5583 = 1,674.90 yuan, exactly
    assert accumulator.exact_total_yuan == Decimal("1674.9")
    assert total_fen == accumulator.charged_fen == 167_490
    assert largest_fen == 1


def test_residue_is_carried_from_charge_to_charge() -> None:
    accumulator = FenAccumulator()
    fens = []
    for _ in range(4):
        accumulator, fen = accumulator.add(Decimal("0.004"))  # 0.4 fen each
        fens.append(fen)
    # running totals 0.4, 0.8, 1.2, 1.6 fen round to 0, 1, 1, 2
    assert fens == [0, 1, 0, 1]
    assert accumulator == FenAccumulator(Decimal("0.016"), 2)


def test_accumulator_refuses_an_inconsistent_state_and_negative_charges() -> None:
    with pytest.raises(AssertionError):
        FenAccumulator(Decimal("0.016"), 1)
    with pytest.raises(AssertionError):
        FenAccumulator().add(Decimal("-0.01"))


@given(st.lists(exact_amounts, max_size=200))
def test_charges_never_drift_from_the_exact_running_total(amounts: list[Decimal]) -> None:
    accumulator = FenAccumulator()
    charged_fen = 0
    exact_fen = Fraction(0)
    prefix_yuan = Decimal(0)
    for amount in amounts:
        accumulator, fen = accumulator.add(amount)
        assert fen >= 0
        charged_fen += fen
        exact_fen += Fraction(amount) * 100
        prefix_yuan += amount
        # at every step the fen charged so far are the exact running total rounded once
        assert charged_fen == round_yuan_to_fen(prefix_yuan)
        assert abs(charged_fen - exact_fen) <= Fraction(1, 2)
    assert charged_fen == round_yuan_to_fen(sum(amounts, Decimal(0)))
    assert accumulator.charged_fen == charged_fen


# --------------------------------------------------------------------------- pico-yuan running totals


@given(st.integers(min_value=0, max_value=10**22), st.integers(min_value=0, max_value=12))
def test_pico_yuan_round_like_the_decimal_amount(units: int, decimals: int) -> None:
    amount_yuan = Decimal(units).scaleb(-decimals)
    pico_yuan = to_pico_yuan(amount_yuan)
    assert pico_yuan is not None
    assert pico_yuan_to_yuan(pico_yuan) == amount_yuan
    assert round_pico_yuan_to_fen(pico_yuan) == round_yuan_to_fen(amount_yuan)


def test_an_amount_finer_than_a_pico_yuan_has_no_pico_yuan_form() -> None:
    assert to_pico_yuan(Decimal("0.0000000000001")) is None
    assert to_pico_yuan(Decimal("12.3456789012345")) is None
    assert to_pico_yuan(Decimal("1E+3")) == 10**15


def test_pico_yuan_back_to_yuan_keeps_no_trailing_zeros() -> None:
    assert str(pico_yuan_to_yuan(12_345_678_900_000)) == "12.3456789"
    assert str(pico_yuan_to_yuan(100 * 10**12)) == "100"
    assert str(pico_yuan_to_yuan(0)) == "0"
    # the half fen rounds up, as ROUND_HALF_UP does
    assert round_pico_yuan_to_fen(5 * 10**9) == 1
    assert round_pico_yuan_to_fen(5 * 10**9 - 1) == 0
