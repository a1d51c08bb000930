"""Weighted water-filling: split an amount over guests with capacities.

Used by the ``autoballoon`` policy to decide FROM WHOM memory is taken or TO
WHOM it is given back. Pure arithmetic, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping


def water_fill(capacity: Mapping[str, float], weight: Mapping[str, float],
               amount: float) -> dict[str, float]:
    """Split ``amount`` so that key ``k`` gets ``min(capacity[k], lam * capacity[k] / weight[k])``.

    ``lam`` is chosen so the parts add up to ``amount`` (or every capacity is
    used). With equal weights the split is proportional to capacity; a larger
    weight protects a key (it gives less, or receives less when capacity means
    room). Keys with no capacity or a weight <= 0 get nothing.
    """
    keys = [k for k, c in capacity.items() if c > 0 and weight.get(k, 0.0) > 0]
    total = sum(capacity[k] for k in keys)
    if amount <= 0 or not keys:
        return {}
    if amount >= total:
        return {k: float(capacity[k]) for k in keys}
    # Each key saturates once lam reaches its weight: walk keys by weight.
    keys.sort(key=lambda k: weight[k])
    saturated = 0.0
    slope = sum(capacity[k] / weight[k] for k in keys)
    lam = 0.0
    for index, key in enumerate(keys):
        lam = (amount - saturated) / slope
        if lam <= weight[key]:
            break
        saturated += capacity[key]
        slope -= capacity[key] / weight[key]
        if slope <= 0 or index == len(keys) - 1:
            lam = weight[key]
            break
    return {k: min(float(capacity[k]), lam * capacity[k] / weight[k]) for k in keys}
