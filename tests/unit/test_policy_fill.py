"""Weighted water-filling used by the autoballoon policy."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from autoballoon_plugins.policies._policy_fill import water_fill

caps = st.dictionaries(st.text("abcdef", min_size=1, max_size=3),
                       st.floats(0, 1e12, allow_nan=False), max_size=12)


def test_equal_weights_split_in_proportion_to_capacity() -> None:
    out = water_fill({"a": 300.0, "b": 100.0}, {"a": 1.0, "b": 1.0}, 200.0)
    assert out == {"a": 150.0, "b": 50.0}


def test_heavier_weight_gives_less() -> None:
    out = water_fill({"a": 100.0, "b": 100.0}, {"a": 1.0, "b": 3.0}, 100.0)
    assert out["a"] > out["b"]
    assert abs(sum(out.values()) - 100.0) < 1e-6


def test_more_than_all_takes_all_and_zero_weight_takes_nothing() -> None:
    assert water_fill({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 1.0}, 10.0) == {"a": 1.0, "b": 2.0}
    assert water_fill({"a": 1.0}, {"a": 0.0}, 1.0) == {}
    assert water_fill({"a": 1.0}, {"a": 1.0}, 0.0) == {}


@given(caps, st.data(), st.floats(0, 2e12, allow_nan=False))
def test_parts_respect_capacities_and_add_up(capacity: dict[str, float], data: st.DataObject,
                                             amount: float) -> None:
    weights = {k: data.draw(st.floats(0.01, 100)) for k in capacity}
    out = water_fill(capacity, weights, amount)
    assert all(0 <= out[k] <= capacity[k] * (1 + 1e-9) for k in out)
    usable = sum(c for c in capacity.values() if c > 0)
    expected = min(amount, usable)
    assert abs(sum(out.values()) - expected) <= 1e-6 * max(1.0, expected)
