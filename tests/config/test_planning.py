"""The planner ships a Snowball when the link is too slow, and copies online otherwise."""

from __future__ import annotations

import pytest

from finetune_pipeline.pipeline.planning import online_transfer_days, plan_transfer


def test_one_petabyte_over_one_gigabit_takes_about_four_months():
    days = online_transfer_days(10**15, link_gbps=1, link_utilization=0.8)
    assert 110 < days < 120


def test_large_snapshot_goes_offline_with_enough_devices():
    plan = plan_transfer(10**15, 1, 0.8, 7, "T80")
    assert plan.mode == "offline"
    assert plan.devices == 13
    assert "ship 13 Snowball device(s)" in plan.reason


def test_small_snapshot_goes_online():
    plan = plan_transfer(50 * 10**9, 1, 0.8, 7, "T80")
    assert plan.mode == "online"
    assert plan.devices == 0
    assert plan.online_days < 0.01


def test_non_positive_size_is_an_error():
    with pytest.raises(ValueError, match="size_bytes must be positive"):
        plan_transfer(0, 1, 0.8, 7, "T80")
