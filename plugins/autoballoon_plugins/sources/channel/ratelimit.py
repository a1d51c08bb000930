"""The guest channel's token bucket (shared with the audit log's rate cap)."""

from autoballoon_core.ratelimit import TokenBucket

__all__ = ["TokenBucket"]
