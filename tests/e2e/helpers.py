"""Assertions shared by the test modules."""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from cluster import ALL_PODS


def assert_all_answered(pods: list[str], count: int, stderr: str,
                        expected: Iterable[str] = ALL_PODS) -> None:
    """Every request answered, and exactly the expected pods took part."""
    expected = set(expected)
    assert len(pods) == count, (
        f"{count - len(pods)} of {count} requests failed; answers: {Counter(pods)}; "
        f"curl said:\n{stderr}")
    assert set(pods) == expected, (
        f"answers came from {dict(Counter(pods))}, expected every one of {sorted(expected)} "
        f"and no other")
