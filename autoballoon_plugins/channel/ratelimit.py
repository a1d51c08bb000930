"""A token bucket: ``rate`` tokens per second, at most ``burst`` saved up."""

from __future__ import annotations


class TokenBucket:
    """Allow bursts of ``burst`` messages, then ``rate`` per second on average.

    Times are passed in (monotonic seconds), so the bucket is a pure object.
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def allow(self, now: float) -> bool:
        """Take one token if there is one."""
        if now > self._stamp:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    @property
    def tokens(self) -> float:
        return self._tokens
