"""Builders of snapshots and policies for the policy tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from autoballoon_core.interfaces import Policy
from autoballoon_core.model import GuestState, GuestStats, HostState, PressureLevel, Snapshot
from autoballoon_core.options import settings_from
from autoballoon_core.plugins import collect, create_plugin_manager
from autoballoon_sim.config import default_config

_SPECS = collect(create_plugin_manager()).policies

ALL_POLICIES = sorted(_SPECS)


def make_policy(name: str, **options: Any) -> Policy:
    """The registered policy ``name`` built with ``options`` (unparsed values)."""
    spec = _SPECS[name]
    config = default_config(name, settings_from(spec.component.schema, options))
    return spec.create(name, config.policy_options, config)


def guest(name: str, max_bytes: int, actual: int, *, floor: int = 0, free: int | None = None,
          caches: int | None = 0, target: int | None = None, weight: float = 1.0,
          pressure: PressureLevel = PressureLevel.NONE, wanted: int = 0,
          stalled_until: float = 0.0) -> GuestState:
    stats = None if free is None else GuestStats(total=actual, free=free, caches=caches,
                                                 available=free + (caches or 0))
    return GuestState(id=f"t:{name}", name=name, backend="t", max_bytes=max_bytes,
                      actual_bytes=actual, floor=floor, weight=weight, target_bytes=target,
                      stats=stats, pressure=pressure, pressure_wanted=wanted,
                      stalled_until=stalled_until)


def snapshot(guests: Iterable[GuestState], *, total: int | None, available: int | None,
             level: PressureLevel = PressureLevel.NONE, time: float = 0.0,
             level_since: float = 0.0) -> Snapshot:
    by_id: Mapping[str, GuestState] = {g.id: g for g in guests}
    return Snapshot(time=time, host=HostState(level=level, level_since=level_since,
                                              mem_total=total, mem_available=available),
                    guests=by_id)
