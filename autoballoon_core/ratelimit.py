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

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def allow(self, now: float) -> bool:
        """Take one token if there is one."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def available(self, now: float) -> int:
        """Whole tokens there are at ``now`` (none is taken)."""
        self._refill(now)
        return int(self._tokens)

    def wait(self, now: float) -> float:
        """Seconds from ``now`` until a whole token is there (0 when one is)."""
        self._refill(now)
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate

    @property
    def tokens(self) -> float:
        return self._tokens
