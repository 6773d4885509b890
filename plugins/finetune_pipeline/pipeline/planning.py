"""Decide how the initial bulk copy travels: over the network, or offline on Snowball devices."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

SECONDS_PER_DAY = 86_400
# Usable terabytes per device by capacity code, from the Snowball Edge device specifications.
USABLE_TB_BY_CAPACITY = {"T8": 8, "T13": 13, "T14": 14, "T32": 32, "T42": 42, "T50": 42, "T80": 80,
                         "T98": 98, "T100": 100, "T240": 210, "NoPreference": 80}


@dataclass(frozen=True)
class TransferPlan:
    mode: Literal["offline", "online"]
    size_bytes: int
    online_days: float
    max_online_days: float
    devices: int
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def online_transfer_days(size_bytes: int, link_gbps: float, link_utilization: float) -> float:
    """Days to push ``size_bytes`` through a link at the share of bandwidth we may use."""
    usable_bits_per_second = link_gbps * 1e9 * link_utilization
    return size_bytes * 8 / usable_bits_per_second / SECONDS_PER_DAY


def plan_transfer(
    size_bytes: int, link_gbps: float, link_utilization: float, max_online_days: float, capacity: str
) -> TransferPlan:
    """Offline when the wire would take longer than ``max_online_days``; otherwise online."""
    if size_bytes <= 0:
        raise ValueError(f"size_bytes must be positive, got {size_bytes}")
    days = online_transfer_days(size_bytes, link_gbps, link_utilization)
    devices = math.ceil(size_bytes / (USABLE_TB_BY_CAPACITY[capacity] * 1e12))
    if days > max_online_days:
        reason = (f"{size_bytes / 1e12:,.1f} TB over {link_gbps:g} Gbps at {link_utilization:.0%} takes "
                  f"{days:,.1f} days, more than the {max_online_days:g} allowed: ship {devices} Snowball device(s)")
        return TransferPlan("offline", size_bytes, days, max_online_days, devices, reason)
    reason = (f"{size_bytes / 1e12:,.3f} TB over {link_gbps:g} Gbps takes {days:,.2f} days, "
              f"within the {max_online_days:g} allowed: copy online")
    return TransferPlan("online", size_bytes, days, max_online_days, 0, reason)
