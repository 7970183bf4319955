"""Rate limit windows counted in this process's memory: while the limits' storage is away,
and always under RATE_LIMIT_STORAGE_URL=memory://. A `limits` storage, so the library's
fixed-window limiter counts in it as it counts in Redis.

Not the library's own MemoryStorage: as of limits 5.8 it is not safe across threads, and a
gunicorn worker answers WEB_THREADS requests at once. Two requests counted together can
start its expiry timer twice (a RuntimeError out of the count) or drop counts at a window's
start (one caller gets twice its limit in that window); its expiry timer, a thread of its
own, can drop a count the requests are making. Here one lock guards every window, and
ended windows are dropped by the requests themselves, at most once a second: no thread."""

from __future__ import annotations

import threading
import time

from limits.storage import Storage

# How often ended windows (of callers not seen since) are dropped.
SWEEP_INTERVAL_S = 1.0


class MemoryWindows(Storage):
    """Each key's count and the end of its window (time.time()), under one lock."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[int, float]] = {}
        self._next_sweep = 0.0

    @property
    def base_exceptions(self) -> type[Exception]:
        return ValueError

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        with self._lock:
            if now >= self._next_sweep:
                self._windows = {k: w for k, w in self._windows.items() if w[1] > now}
                self._next_sweep = now + SWEEP_INTERVAL_S
            count, ends = self._windows.get(key, (0, now))
            if ends <= now:  # the window ended (or none was open): a new one from now
                count, ends = 0, now + expiry
            count += amount
            self._windows[key] = (count, ends)
            return count

    def get(self, key: str) -> int:
        count, ends = self._window(key)
        return count if ends > time.time() else 0

    def get_expiry(self, key: str) -> float:
        now = time.time()
        return max(self._window(key)[1], now)

    def check(self) -> bool:
        return True

    def reset(self) -> int:
        with self._lock:
            count = len(self._windows)
            self._windows = {}
            return count

    def clear(self, key: str) -> None:
        with self._lock:
            self._windows.pop(key, None)

    def _window(self, key: str) -> tuple[int, float]:
        with self._lock:
            return self._windows.get(key, (0, 0.0))
