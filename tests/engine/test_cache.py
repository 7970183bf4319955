"""The per-process LRU cache keeps the most recently used entries."""

from __future__ import annotations

from engine.cache import LRUCache


def test_the_least_recently_used_entry_goes_first() -> None:
    cache: LRUCache[str, int] = LRUCache(2)
    cache["a"], cache["b"] = 1, 2
    assert cache["a"] == 1  # "a" is now the most recent
    cache["c"] = 3
    assert "b" not in cache and cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == (1, 3)
