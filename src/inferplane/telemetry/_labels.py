"""Bounded label values, so a metric's cardinality stays finite whatever clients send."""

from __future__ import annotations

__all__ = ["BoundedLabel"]

OTHER = "other"


class BoundedLabel:
    """The first ``limit`` distinct values keep their name; later ones become ``other``."""

    def __init__(self, limit: int, known: tuple[str, ...] = ()) -> None:
        self.limit = limit
        self._kept: set[str] = set(known[:limit])

    def __call__(self, value: str) -> str:
        if value in self._kept:
            return value
        if len(self._kept) < self.limit:
            self._kept.add(value)
            return value
        return OTHER
