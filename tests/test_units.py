"""Byte sizes precise enough to be true."""

from __future__ import annotations

import pytest

from sparkhelpers.units import human_bytes, human_pair


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.50 KiB"), (123_456_789, "118 MiB"),
                                         (15 * 1024**3, "15.0 GiB"), (3 * 1024**5, "3.00 PiB")])
def test_human_bytes(n, text):
    assert human_bytes(n) == text


def test_a_small_need_is_never_shown_as_zero():
    assert human_bytes(300_000) == "293 KiB" and "0.0" not in human_bytes(1)


@pytest.mark.parametrize(("a", "b"), [(14 * 1024**2, 1024**2), (1024**3 + 5 * 1024**2, 1024**3), (1025, 1024),
                                      (10 * 1024**3 + 1, 10 * 1024**3)])
def test_a_pair_is_told_apart(a, b):
    x, y = human_pair(a, b)
    assert x != y and x.split()[-1] == y.split()[-1] or x.endswith(" B"), (x, y)


def test_an_equal_pair_stays_short():
    assert human_pair(2 * 1024**3, 2 * 1024**3) == ("2.0 GiB", "2.0 GiB")


def test_a_pair_never_shows_a_nonzero_size_as_zero():
    assert human_pair(12 * 1024, 5 * 1024**3) == ("12.0 KiB", "5.00 GiB")
    assert human_pair(0, 5 * 1024**3) == ("0.0 GiB", "5.0 GiB")
