"""BoundedMemo: the per-shape memos of the op's host path (prepared calls, validated wrapper calls, compiled
launches, capacity lengths, mask key ranges)."""
from __future__ import annotations


class BoundedMemo(dict):
    """A dict that starts over once it holds `limit` entries. A cache whose capacity grows every step makes a key
    per step, so a memo keyed by shapes and strides would otherwise grow without end. Lookups stay dict.get: the
    hot path pays no Python frame."""

    __slots__ = ("limit",)

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def remember(self, key, value):
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value
