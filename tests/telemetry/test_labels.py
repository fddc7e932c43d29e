from __future__ import annotations

from inferplane.telemetry import BoundedLabel


def test_values_beyond_the_limit_become_other() -> None:
    label = BoundedLabel(2, known=("a",))
    assert [label(v) for v in ("a", "b", "c", "b", "a")] == ["a", "b", "other", "b", "a"]
