"""Shipped demand traces (JSON); see autoballoon_sim.traces module docs."""
