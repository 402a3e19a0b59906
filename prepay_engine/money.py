"""Money in the engine: exact yuan as `Decimal`, charges in integer fen, and a rounder that never drifts.

Rounding rule, used everywhere a fen amount comes from an exact amount: ROUND_HALF_UP to the fen
(half a fen rounds up; charges are never negative, so "up" and "away from zero" agree).

A run of charges must add up to the exact total rounded *once*, not to the sum of individually
rounded charges (a million charges of 0.0016749 yuan would otherwise be 0 fen each, or 1 fen each).
`FenAccumulator` carries the rounding residue: each charge is the difference between the rounded
running totals after and before it.

A loop over many charges may keep the running total as an integer number of pico-yuan (10⁻¹² yuan:
every amount of a price with up to 9 decimals is a whole number of them) and round it with integers;
`to_pico_yuan` says when an amount cannot be, and the loop then goes on in `Decimal`.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow

FEN_PER_YUAN = 100
WH_PER_KWH = 1_000

# Arithmetic on exact amounts runs in this context: a result that would need rounding raises
# `decimal.Inexact` instead of silently losing a digit.
EXACT = Context(prec=60, rounding=ROUND_HALF_UP, traps=[Inexact, InvalidOperation, Overflow, DivisionByZero])
_ZERO = Decimal(0)
_FEN_PER_YUAN = Decimal(FEN_PER_YUAN)


def _check_decimal(value: Decimal, what: str) -> None:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError(f"{what} must be a finite Decimal, got {value!r}")


def round_yuan_to_fen(amount_yuan: Decimal) -> int:
    """The exact amount `amount_yuan` rounded to whole fen, ROUND_HALF_UP."""
    _check_decimal(amount_yuan, "amount_yuan")
    return _round_fen(amount_yuan)


def _round_fen(amount_yuan: Decimal) -> int:
    return int(EXACT.multiply(amount_yuan, _FEN_PER_YUAN).to_integral_value(rounding=ROUND_HALF_UP))


def yuan_to_fen(amount_yuan: Decimal) -> int:
    """`amount_yuan` in fen; it must be a whole number of fen (ValueError otherwise, nothing is rounded)."""
    _check_decimal(amount_yuan, "amount_yuan")
    amount_fen = amount_yuan.scaleb(2, context=EXACT)
    if amount_fen != amount_fen.to_integral_value():
        raise ValueError(f"{amount_yuan} yuan is not a whole number of fen")
    return int(amount_fen)


def fen_to_yuan(amount_fen: int) -> Decimal:
    """`amount_fen` as exact yuan with two decimals (e.g. 5000 -> Decimal('50.00'))."""
    assert isinstance(amount_fen, int)
    return Decimal(amount_fen).scaleb(-2, context=EXACT)


def energy_amount_yuan(energy_wh: int, unit_price_yuan_per_kwh: Decimal) -> Decimal:
    """Exact cost of `energy_wh` at `unit_price_yuan_per_kwh` (no rounding)."""
    assert energy_wh >= 0
    _check_decimal(unit_price_yuan_per_kwh, "unit_price_yuan_per_kwh")
    return EXACT.multiply(Decimal(energy_wh), unit_price_yuan_per_kwh).scaleb(-3, context=EXACT)


@dataclass(frozen=True, slots=True)
class FenAccumulator:
    """Running exact total of an account's charges and the fen charged so far; invariant: fen = round(total)."""

    exact_total_yuan: Decimal = _ZERO
    charged_fen: int = 0

    def __post_init__(self) -> None:
        assert self.exact_total_yuan >= 0, self.exact_total_yuan
        assert self.charged_fen == _round_fen(self.exact_total_yuan), (self.charged_fen, self.exact_total_yuan)

    def add(self, amount_yuan: Decimal) -> tuple[FenAccumulator, int]:
        """The accumulator after charging `amount_yuan` (exact, >= 0), and the whole fen to charge for it."""
        _check_decimal(amount_yuan, "amount_yuan")
        total_yuan, charged_fen = accumulate(self.exact_total_yuan, amount_yuan)
        return FenAccumulator(total_yuan, charged_fen), charged_fen - self.charged_fen


PICO_YUAN_PER_YUAN = 10**12
_PICO_YUAN_PER_FEN = PICO_YUAN_PER_YUAN // FEN_PER_YUAN


def to_pico_yuan(amount_yuan: Decimal) -> int | None:
    """`amount_yuan` as a whole number of 10⁻¹² yuan; None if it has more decimals than that."""
    scaled = amount_yuan.scaleb(12, context=EXACT)
    whole = int(scaled)
    return whole if scaled == whole else None


def pico_yuan_to_yuan(amount_pico_yuan: int) -> Decimal:
    """Exact yuan of a whole number of 10⁻¹² yuan, without trailing zeros after the point."""
    amount_yuan = Decimal(amount_pico_yuan).scaleb(-12, context=EXACT)
    if amount_yuan == amount_yuan.to_integral_value():
        return amount_yuan.quantize(Decimal(1), context=EXACT)
    return amount_yuan.normalize(context=EXACT)


def round_pico_yuan_to_fen(amount_pico_yuan: int) -> int:
    """`round_yuan_to_fen` of a non-negative amount in 10⁻¹² yuan, with integers only."""
    assert amount_pico_yuan >= 0, amount_pico_yuan
    return (amount_pico_yuan + _PICO_YUAN_PER_FEN // 2) // _PICO_YUAN_PER_FEN


def accumulate(exact_total_yuan: Decimal, amount_yuan: Decimal) -> tuple[Decimal, int]:
    """The running exact total after adding `amount_yuan` (exact, >= 0), and that total rounded to fen.

    `FenAccumulator.add` without building the accumulator: a loop over many charges keeps the two numbers and
    builds the accumulator once at the end.
    """
    assert amount_yuan >= 0, amount_yuan  # a NaN or an infinity fails this too, or traps in EXACT
    total_yuan = EXACT.add(exact_total_yuan, amount_yuan)
    return total_yuan, _round_fen(total_yuan)
