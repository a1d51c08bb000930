"""Shared settings of the unit tests.

Hypothesis runs without per-example deadlines: the suite shares a 2-core
machine with real guests, and time is not what the property tests check
(benchmarks under bench/ measure speed).
"""

from hypothesis import settings

settings.register_profile("autoballoon", deadline=None)
settings.load_profile("autoballoon")
