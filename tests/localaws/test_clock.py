"""The virtual clock, directly and through the control endpoint."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest

from localaws import control
from localaws.clock import VirtualClock

START = datetime(2030, 1, 1, tzinfo=UTC)


class FakeMonotonic:
    def __init__(self):
        self.value = 100.0

    def __call__(self) -> float:
        return self.value


def test_virtual_time_is_scaled_real_time_plus_advances():
    real = FakeMonotonic()
    clock = VirtualClock(speed=60.0, start=START, monotonic=real)
    assert clock.now() == START
    real.value += 2
    assert clock.now() == START + timedelta(minutes=2)
    clock.advance(3600)
    assert clock.now() == START + timedelta(hours=1, minutes=2)


def test_changing_speed_never_makes_time_jump():
    real = FakeMonotonic()
    clock = VirtualClock(speed=10.0, start=START, monotonic=real)
    real.value += 5
    clock.set_speed(0)  # frozen from here
    frozen = clock.now()
    assert frozen == START + timedelta(seconds=50)
    real.value += 1000
    assert clock.now() == frozen
    clock.set_speed(2)
    real.value += 1
    assert clock.now() == frozen + timedelta(seconds=2)
    assert clock.snapshot() == {"now": (frozen + timedelta(seconds=2)).isoformat(), "speed": 2.0}


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
def test_clock_refuses_going_backwards_or_nonsense(bad):
    clock = VirtualClock(start=START, monotonic=FakeMonotonic())
    with pytest.raises(ValueError):
        clock.advance(bad)
    with pytest.raises(ValueError):
        clock.set_speed(bad)
    assert clock.now() == START


def test_clock_is_consistent_under_concurrent_advances():
    clock = VirtualClock(speed=0, start=START)
    threads = [threading.Thread(target=lambda: [clock.advance(1) for _ in range(500)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert clock.now() == START + timedelta(seconds=4000)


def test_control_endpoint_reports_and_advances_the_clock(localaws):
    url = localaws.endpoint_url
    before = control.get_clock(url)
    assert set(before) == {"now", "speed"}
    after = control.advance_clock(url, 3600)
    moved = datetime.fromisoformat(after["now"]) - datetime.fromisoformat(before["now"])
    assert timedelta(hours=1) <= moved < timedelta(hours=1, seconds=30)
    assert after["speed"] == before["speed"]


def test_control_endpoint_sets_the_speed(localaws):
    url = localaws.endpoint_url
    original = control.get_clock(url)["speed"]
    try:
        frozen = control.set_clock_speed(url, 0)
        assert frozen["speed"] == 0
        assert control.get_clock(url)["now"] == frozen["now"]
        both = control.advance_clock(url, 10)
        assert datetime.fromisoformat(both["now"]) == datetime.fromisoformat(frozen["now"]) + timedelta(
            seconds=10
        )
    finally:
        control.set_clock_speed(url, original)
    assert control.get_clock(url)["speed"] == original


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b"{}", b'{"advance_seconds": -5}', b'{"speed": "fast"}', b'{"speed": true}']
)
def test_control_endpoint_rejects_bad_requests(localaws, body):
    before = control.get_clock(localaws.endpoint_url)
    request = urllib.request.Request(f"{localaws.endpoint_url}/_localaws/clock", data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400
    assert "error" in json.loads(refused.value.read())
    assert control.get_clock(localaws.endpoint_url)["speed"] == before["speed"]
