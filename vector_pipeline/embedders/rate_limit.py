"""Client-side rate limiting: stay under a model's requests and tokens per minute.

Two token buckets (requests and tokens), each holding at most one minute's allowance and
refilling continuously, shared by every thread that sends requests for the model. The
provider's own view wins when it is stricter: OpenAI-style `x-ratelimit-remaining-*` and
`x-ratelimit-reset-*` headers pause sending until the window resets. Sleeping here, before a
request, is cheaper than being answered 429 and backing off.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)(ms|h|m|s))")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_reset(value: str) -> float | None:
    """Seconds in OpenAI's reset format ("1s", "6m0s", "20ms", "1h2m3.5s"); None if unreadable."""
    parts = _DURATION.findall(value.strip())
    if not parts or "".join(n + u for n, u in parts) != value.strip():
        try:
            return float(value)
        except ValueError:
            return None
    return sum(float(number) * _UNIT[unit] for number, unit in parts)


class _Bucket:
    def __init__(self, per_minute: float, now: float) -> None:
        self.capacity = per_minute
        self.rate = per_minute / 60.0
        self.level = per_minute
        self.updated = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        # A request larger than a whole minute's allowance waits for a full bucket, then goes.
        amount = min(amount, self.capacity)
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate


class RateLimiter:
    def __init__(
        self,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._clock, self._sleep = clock, sleep
        now = clock()
        self._requests = _Bucket(requests_per_minute, now) if requests_per_minute else None
        self._tokens = _Bucket(tokens_per_minute, now) if tokens_per_minute else None
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def acquire(self, tokens: int) -> float:
        """Block until one request of `tokens` tokens may be sent; return the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                wait = max(0.0, self._paused_until - now)
                for bucket, amount in ((self._requests, 1), (self._tokens, tokens)):
                    if bucket is not None:
                        bucket.refill(now)
                        wait = max(wait, bucket.wait_for(amount))
                if wait == 0.0:
                    for bucket, amount in ((self._requests, 1), (self._tokens, tokens)):
                        if bucket is not None:
                            bucket.level -= min(amount, bucket.capacity)
                    return waited
            self._sleep(wait)
            waited += wait

    def observe(self, headers: Mapping[str, str]) -> None:
        """Pause everyone until the reset when the provider says a window is used up."""
        pause = 0.0
        for kind in ("requests", "tokens"):
            remaining = headers.get(f"x-ratelimit-remaining-{kind}")
            reset = headers.get(f"x-ratelimit-reset-{kind}")
            if remaining is None or reset is None:
                continue
            try:
                exhausted = float(remaining) <= 0
            except ValueError:
                continue
            seconds = parse_reset(reset)
            if exhausted and seconds:
                pause = max(pause, seconds)
        if pause:
            with self._lock:
                self._paused_until = max(self._paused_until, self._clock() + pause)
