"""Client helpers for the localaws control endpoint (``/_localaws/...``), using urllib only."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request


def get_clock(endpoint_url: str) -> dict:
    """GET /_localaws/clock -> ``{"now": iso8601, "speed": x}``."""
    return _call(endpoint_url, "GET", "/_localaws/clock")


def advance_clock(endpoint_url: str, seconds: float) -> dict:
    """Jump the virtual clock forward by ``seconds``; returns the new clock."""
    return _call(endpoint_url, "POST", "/_localaws/clock", {"advance_seconds": seconds})


def set_clock_speed(endpoint_url: str, speed: float) -> dict:
    """Run the virtual clock at ``speed`` times real time (0 freezes it); returns the new clock."""
    return _call(endpoint_url, "POST", "/_localaws/clock", {"speed": speed})


def get_timing(endpoint_url: str) -> dict:
    """GET /_localaws/timing -> the server's timing profile (seconds per simulated state)."""
    return _call(endpoint_url, "GET", "/_localaws/timing")


def add_faults(endpoint_url: str, *rules: dict) -> list[dict]:
    """Switch fault rules on (see :mod:`localaws.faults`); returns them with their ids and counters.

    e.g. ``add_faults(url, {"service": "*", "kind": "throttle", "rate": 0.3, "seed": 7})`` or
    ``{"service": "snowball", "operation": "CreateJob", "kind": "lost_response", "limit": 1}``.
    """
    return _call(endpoint_url, "POST", "/_localaws/faults", {"rules": list(rules)})["rules"]


def get_faults(endpoint_url: str) -> dict:
    """GET /_localaws/faults -> ``{"rules": [...with matched/injected], "calls": {...}, "injected": {...}}``."""
    return _call(endpoint_url, "GET", "/_localaws/faults")


def clear_faults(endpoint_url: str) -> dict:
    """Switch every fault rule off and reset the counters; returns what they had counted."""
    return _call(endpoint_url, "DELETE", "/_localaws/faults")


def save_state(endpoint_url: str) -> dict:
    """Snapshot the server's AWS state to its ``--state-file`` now; returns the file, its size and the clock."""
    return _call(endpoint_url, "POST", "/_localaws/state", {})


def interrupt_instance(endpoint_url: str, instance_id: str, code: str, state: str | None = None) -> dict:
    """AWS ends an EC2 instance itself: ``terminated`` (or ``stopped``) with StateReason ``code``, e.g.
    ``Server.InsufficientInstanceCapacity`` or ``Server.SpotInstanceTermination``; its node stops."""
    payload = {"code": code, **({"state": state} if state else {})}
    return _call(endpoint_url, "POST", f"/_localaws/ec2/instances/{instance_id}/interrupt", payload)


def add_capacity_block(endpoint_url: str, instance_type: str, availability_zone: str, **options) -> str:
    """A Capacity Block as if bought (``instance_count``, ``starts_in_seconds``, ``duration_hours``,
    ``region``, ``account``); returns its capacity reservation ID."""
    payload = {"instance_type": instance_type, "availability_zone": availability_zone, **options}
    return _call(endpoint_url, "POST", "/_localaws/ec2/capacity-blocks", payload)["capacity_reservation_id"]


def wait_until_healthy(endpoint_url: str, timeout: float = 30.0) -> None:
    """Poll GET /_localaws/health until it answers ok; raises TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            if _call(endpoint_url, "GET", "/_localaws/health", timeout=2.0).get("status") == "ok":
                return
        except (OSError, ValueError) as error:  # not listening yet, or answering something else
            last_error = error
        if time.monotonic() >= deadline:
            raise TimeoutError(f"localaws at {endpoint_url} not healthy after {timeout}s: {last_error}")
        time.sleep(0.1)  # polling interval between health probes


def _call(
    endpoint_url: str, method: str, path: str, payload: dict | None = None, timeout: float = 10.0
) -> dict:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(
        endpoint_url.rstrip("/") + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise ValueError(
            f"{method} {path} failed with {error.code}: {error.read().decode(errors='replace')}"
        ) from None
