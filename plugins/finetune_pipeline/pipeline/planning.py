"""Decide how the initial bulk copy travels: over the network, or offline on Snowball devices.

Both routes are timed from the export's real size (its manifest), and the comparison is logged:

- **online**: the size through the link at the share of it the copy may use. The link is the public
  internet (its measured bandwidth), AWS Site-to-Site VPN (1.25 Gbps per tunnel, times the tunnels, e.g.
  ECMP over a transit gateway), or Direct Connect (a 1, 10 or 100 Gbps dedicated port).
- **offline**: ship empty devices, copy onto them in parallel at the device's rate, ship them back, and
  import at the same rate after AWS's handling.

The route that meets the deadline wins, online first (no devices, and no weeks of WAL held by the slot);
if neither meets it, the faster one, and the reason says the deadline is missed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400
TB = 1e12

# Site-to-Site VPN: "Maximum bandwidth per VPN tunnel: up to 1.25 Gbps"
# (https://docs.aws.amazon.com/vpn/latest/s2svpn/vpn-limits.html).
VPN_TUNNEL_GBPS = 1.25
# Direct Connect dedicated connections run at 1, 10 or 100 Gbps (400 in some locations)
# (https://docs.aws.amazon.com/directconnect/latest/UserGuide/dedicated_connection.html).
DIRECT_CONNECT_GBPS = (1, 10, 100)

# Usable terabytes per device by SnowballCapacityPreference. Snowball Edge Storage Optimized: 80 TB (T80), and
# the 210 TB NVMe device (SnowballType V3_5S, capacity T240); Compute Optimized: 42 TB (T42), 28 TB NVMe
# (V3_5C, T32). (https://docs.aws.amazon.com/snowball/latest/developer-guide/device-differences.html and the
# Snowball FAQ https://aws.amazon.com/snowball/faqs/: "Snowball Edge Storage Optimized 80TB or 210TB".)
USABLE_TB_BY_CAPACITY = {"T8": 8, "T13": 13, "T14": 14, "T32": 28, "T42": 42, "T50": 42, "T80": 80,
                         "T98": 98, "T100": 100, "T240": 210, "NoPreference": 80}
# Sustained copy rate onto one device, MB/s. AWS's performance table fills an 82 TB device in 1.22 days at
# 800 MB/s and in 3.16 days at 300 MB/s, and rates fall with small files and slow sources
# (https://docs.aws.amazon.com/snowball/latest/developer-guide/performance.html). The HDD devices are planned
# at 300, the NVMe devices at 800, the top of that table; measure yours (transfer.device_copy_mb_per_s).
DEVICE_COPY_MB_PER_S = {"EDGE": 300, "EDGE_C": 300, "EDGE_CG": 300, "EDGE_S": 300, "STANDARD": 300,
                        "V3_5C": 800, "V3_5S": 800}
# Door-to-door days each way by ShippingOption: one-day and two-day shipping in the US; standard shipping
# elsewhere takes days to a week or more (CreateJob, ShippingOption).
SHIPPING_DAYS = {"NEXT_DAY": 1, "EXPRESS": 1, "SECOND_DAY": 2, "STANDARD": 7}


def link_gbps(link: str, *, internet_gbps: float | None = None, vpn_tunnels: int = 1,
              direct_connect_gbps: int = 10) -> float:
    """The raw capacity of the link to AWS."""
    if link == "internet":
        if not internet_gbps or internet_gbps <= 0:
            raise ValueError("an internet link needs its bandwidth (link_gbps)")
        return internet_gbps
    if link == "vpn":
        return VPN_TUNNEL_GBPS * vpn_tunnels
    if link == "direct_connect":
        if direct_connect_gbps not in DIRECT_CONNECT_GBPS:
            raise ValueError(f"Direct Connect ports run at {DIRECT_CONNECT_GBPS} Gbps, not {direct_connect_gbps}")
        return float(direct_connect_gbps)
    raise ValueError(f"unknown link {link!r}: internet, vpn or direct_connect")


def online_transfer_days(size_bytes: int, link_gbps: float, link_utilization: float) -> float:
    """Days to push ``size_bytes`` through a link at the share of bandwidth we may use."""
    usable_bits_per_second = link_gbps * 1e9 * link_utilization
    return size_bytes * 8 / usable_bits_per_second / SECONDS_PER_DAY


@dataclass(frozen=True)
class SnowballTime:
    devices: int
    usable_tb_per_device: float
    copy_mb_per_s: float
    shipping_days_each_way: float
    copy_days: float
    import_days: float

    @property
    def total_days(self) -> float:
        return 2 * self.shipping_days_each_way + self.copy_days + self.import_days


def snowball_time(size_bytes: int, *, snowball_type: str, capacity: str, shipping_option: str,
                  shipping_days_each_way: float | None = None, copy_mb_per_s: float | None = None,
                  import_handling_days: float = 1) -> SnowballTime:
    """Devices at their usable capacity, loaded in parallel at the device's rate, shipped both ways, imported."""
    usable = USABLE_TB_BY_CAPACITY[capacity]
    devices = max(1, math.ceil(size_bytes / (usable * TB)))
    rate = copy_mb_per_s or DEVICE_COPY_MB_PER_S.get(snowball_type, 300)
    per_device_days = size_bytes / devices / (rate * 1e6) / SECONDS_PER_DAY
    shipping = shipping_days_each_way if shipping_days_each_way is not None else SHIPPING_DAYS[shipping_option]
    return SnowballTime(devices, usable, rate, shipping, per_device_days, import_handling_days + per_device_days)


@dataclass(frozen=True)
class TransferPlan:
    mode: Literal["offline", "online"]
    size_bytes: int
    link: str
    link_gbps: float
    online_days: float
    snowball_days: float
    deadline_days: float
    devices: int
    reason: str
    snowball: dict = field(default_factory=dict)
    forced: bool = False

    def as_dict(self) -> dict:
        return asdict(self)

    def comparison(self) -> str:
        s = self.snowball
        return (f"{_size(self.size_bytes)}: online over {self.link} ({self.link_gbps:g} Gbps) "
                f"{self.online_days:,.2f} days; Snowball {self.snowball_days:,.1f} days ({self.devices} device(s) "
                f"of {s['usable_tb_per_device']:g} TB: ship {s['shipping_days_each_way']:g} d, copy "
                f"{s['copy_days']:.2f} d at {s['copy_mb_per_s']:g} MB/s, ship back {s['shipping_days_each_way']:g} d, "
                f"import {s['import_days']:.2f} d); deadline {self.deadline_days:g} days")


def _size(n: float) -> str:
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{int(n)} B"


def plan_transfer(
    size_bytes: int,
    *,
    link: str = "internet",
    link_gbps_value: float | None = None,
    vpn_tunnels: int = 1,
    direct_connect_gbps: int = 10,
    link_utilization: float,
    deadline_days: float,
    snowball_type: str = "EDGE_S",
    capacity: str = "T80",
    shipping_option: str = "SECOND_DAY",
    shipping_days_each_way: float | None = None,
    device_copy_mb_per_s: float | None = None,
    import_handling_days: float = 1,
    route: str = "auto",
) -> TransferPlan:
    """Online if the link meets the deadline, else Snowball if it does, else the faster; ``route`` forces one."""
    if size_bytes <= 0:
        raise ValueError(f"size_bytes must be positive, got {size_bytes}")
    gbps = link_gbps(link, internet_gbps=link_gbps_value, vpn_tunnels=vpn_tunnels,
                     direct_connect_gbps=direct_connect_gbps)
    online = online_transfer_days(size_bytes, gbps, link_utilization)
    snow = snowball_time(size_bytes, snowball_type=snowball_type, capacity=capacity, shipping_option=shipping_option,
                         shipping_days_each_way=shipping_days_each_way, copy_mb_per_s=device_copy_mb_per_s,
                         import_handling_days=import_handling_days)
    offline = snow.total_days
    over = f"over {link} at {gbps:g} Gbps x {link_utilization:.0%}"
    if route in ("offline", "online"):
        mode, forced = route, True
        reason = f"transfer.route forces {route} (the plan alone would say: %s)"
    else:
        forced = False
        reason = "%s"
    if online <= deadline_days:
        auto = "online"
        why = (f"{_size(size_bytes)} {over} takes {online:,.2f} days, within the {deadline_days:g}-day deadline: "
               "copy online")
    elif offline <= deadline_days:
        auto = "offline"
        why = (f"{_size(size_bytes)} {over} takes {online:,.1f} days, past the {deadline_days:g}-day deadline; "
               f"{snow.devices} Snowball device(s) take {offline:,.1f} days: ship them")
    else:
        auto = "online" if online <= offline else "offline"
        why = (f"neither route meets the {deadline_days:g}-day deadline ({online:,.1f} days online, {offline:,.1f} "
               f"with {snow.devices} Snowball device(s)): the faster, {auto}")
    if not forced:
        mode = auto
    plan = TransferPlan(mode=mode, size_bytes=size_bytes, link=link, link_gbps=gbps, online_days=online,
                        snowball_days=offline, deadline_days=deadline_days,
                        devices=snow.devices if mode == "offline" else 0, reason=reason % why,
                        snowball={**asdict(snow), "total_days": offline}, forced=forced)
    log.info("transfer plan: %s", plan.comparison())
    return plan
