"""The virtual clock that drives every simulated AWS lifecycle in localaws.

``virtual_now = start + real_elapsed * speed + advanced``. Speed and manual advances let a test or a demo walk
a Snowball job through days of shipping in seconds, while the clock itself never goes backwards.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta


class VirtualClock:
    """Thread-safe virtual UTC time: real time scaled by ``speed``, plus any manual advances."""

    def __init__(
        self,
        speed: float = 1.0,
        start: datetime | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self._lock = threading.Lock()
        self._monotonic = monotonic
        self._speed = _check_speed(speed)
        # Re-anchored on every speed change so that changing speed never makes time jump.
        self._anchor_virtual = start or datetime.now(UTC)
        self._anchor_real = monotonic()

    def now(self) -> datetime:
        """The current virtual time (timezone-aware, UTC)."""
        with self._lock:
            return self._now_locked()

    @property
    def speed(self) -> float:
        with self._lock:
            return self._speed

    def set_speed(self, speed: float) -> None:
        """Run virtual time at ``speed`` times real time from now on (0 freezes it)."""
        speed = _check_speed(speed)
        with self._lock:
            self._anchor_virtual = self._now_locked()
            self._anchor_real = self._monotonic()
            self._speed = speed

    def advance(self, seconds: float) -> None:
        """Jump virtual time forward by ``seconds``."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"advance_seconds must be a finite number >= 0, got {seconds!r}")
        with self._lock:
            self._anchor_virtual += timedelta(seconds=seconds)

    def snapshot(self) -> dict:
        """The control endpoint's view: ``{"now": iso8601, "speed": x}``."""
        with self._lock:
            return {"now": self._now_locked().isoformat(), "speed": self._speed}

    def _now_locked(self) -> datetime:
        elapsed = (self._monotonic() - self._anchor_real) * self._speed
        return self._anchor_virtual + timedelta(seconds=elapsed)


def _check_speed(speed: float) -> float:
    speed = float(speed)
    if not math.isfinite(speed) or speed < 0:
        raise ValueError(f"speed must be a finite number >= 0, got {speed!r}")
    return speed
