"""How fast a figure falls, over a sliding window."""

from __future__ import annotations

import collections


class FallRate:
    """How fast a figure falls: bytes per second over a sliding window (0 when rising)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=4096)

    def add(self, now: float, value: int) -> None:
        self._samples.append((now, value))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, v0), (t1, v1) = self._samples[0], self._samples[-1]
        if t1 - t0 <= 0:
            return 0.0
        return max(0.0, (v0 - v1) / (t1 - t0))
