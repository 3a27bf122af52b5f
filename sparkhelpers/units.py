"""Byte sizes for people: precise enough to be true (never "needs 0.0 GiB, 0.0 GiB free")."""

from __future__ import annotations

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def _unit(n: float) -> int:
    i = 0
    while abs(n) >= 1024 and i < len(UNITS) - 1:
        n /= 1024
        i += 1
    return i


def _in(n: float, unit: int, decimals: int) -> str:
    return f"{int(n)} B" if unit == 0 else f"{n / 1024**unit:.{decimals}f} {UNITS[unit]}"


def human_bytes(n: float) -> str:
    """1536 -> '1.50 KiB', 123_456_789 -> '118 MiB': three significant digits in the largest unit."""
    unit = _unit(n)
    value = abs(n) / 1024**unit
    return _in(n, unit, 0 if value >= 100 else 1 if value >= 10 else 2)


def human_pair(a: float, b: float) -> tuple[str, str]:
    """Two sizes in one unit, with as many decimals as it takes to tell them apart; each in its own
    unit when one would read as zero in the other's (a full disk is "12.0 KiB", not "0.0 GiB")."""
    unit = _unit(max(abs(a), abs(b)))
    for decimals in range(1, 4):
        x, y = _in(a, unit, decimals), _in(b, unit, decimals)
        if any(n and float(t.split()[0]) == 0 for n, t in ((a, x), (b, y))):
            return human_bytes(a), human_bytes(b)
        if x != y or a == b:
            return x, y
    return f"{int(a)} B", f"{int(b)} B"
