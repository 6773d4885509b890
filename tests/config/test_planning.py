"""The planner times both routes from the real size and takes the one that meets the deadline."""

from __future__ import annotations

import pytest

from finetune_pipeline.pipeline.planning import link_gbps, online_transfer_days, plan_transfer, snowball_time

PB = 10**15


def test_the_seed_figures_one_petabyte_over_a_gigabit_is_months_five_snowballs_are_days():
    online = online_transfer_days(PB, link_gbps=1, link_utilization=0.8)
    assert 110 < online < 120  # about four months
    # Snowball Edge Storage Optimized 210 TB devices (V3_5S, capacity T240), two-day shipping.
    snow = snowball_time(PB, snowball_type="V3_5S", capacity="T240", shipping_option="SECOND_DAY")
    assert snow.devices == 5
    assert 2.5 < snow.copy_days < 3.5  # 200 TB each at 800 MB/s, loaded in parallel
    assert 7 < snow.total_days < 14  # days, not months
    plan = plan_transfer(PB, link="internet", link_gbps_value=1, link_utilization=0.8, deadline_days=30,
                         snowball_type="V3_5S", capacity="T240")
    assert plan.mode == "offline" and plan.devices == 5
    assert "past the 30-day deadline; 5 Snowball device(s) take" in plan.reason


def test_links_vpn_tunnels_and_direct_connect_ports():
    assert link_gbps("vpn", vpn_tunnels=4) == 5.0
    assert link_gbps("direct_connect", direct_connect_gbps=100) == 100
    with pytest.raises(ValueError, match="Direct Connect ports run at"):
        link_gbps("direct_connect", direct_connect_gbps=40)
    with pytest.raises(ValueError, match="needs its bandwidth"):
        link_gbps("internet")
    # 1 PB over 100 Gbps Direct Connect at 80% is about a day: online wins the same deadline.
    plan = plan_transfer(PB, link="direct_connect", direct_connect_gbps=100, link_utilization=0.8, deadline_days=30)
    assert plan.mode == "online" and plan.online_days < 1.2 and plan.devices == 0


def test_a_small_export_goes_online_and_the_comparison_is_logged(caplog):
    with caplog.at_level("INFO", logger="finetune_pipeline.pipeline.planning"):
        plan = plan_transfer(13_000, link="internet", link_gbps_value=1, link_utilization=0.8, deadline_days=7)
    assert plan.mode == "online" and plan.online_days < 1e-6
    assert "13.0 kB: online over internet" in caplog.text and "Snowball" in caplog.text


def test_when_no_route_meets_the_deadline_the_faster_is_taken_and_said():
    plan = plan_transfer(PB, link="vpn", vpn_tunnels=1, link_utilization=0.5, deadline_days=3,
                         snowball_type="V3_5S", capacity="T240")
    assert plan.mode == "offline"
    assert plan.reason.startswith("neither route meets the 3-day deadline")


def test_route_can_be_forced_and_the_plan_still_says_what_it_would_do():
    plan = plan_transfer(50_000_000, link="internet", link_gbps_value=1, link_utilization=0.8, deadline_days=7,
                         route="offline")
    assert plan.mode == "offline" and plan.forced and plan.devices == 1
    assert "transfer.route forces offline" in plan.reason and "copy online" in plan.reason


def test_non_positive_size_is_an_error():
    with pytest.raises(ValueError, match="size_bytes must be positive"):
        plan_transfer(0, link_gbps_value=1, link_utilization=0.8, deadline_days=7)
