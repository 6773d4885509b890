"""The timing profiles: the same states in each, and demo waits long enough for Airflow to defer on them."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from localaws.timing import PROFILES, get_profile


def test_every_profile_times_the_same_states():
    shapes = {
        name: {group: sorted(values) for group, values in profile.to_dict().items() if group != "name"}
        for name, profile in PROFILES.items()
    }
    assert shapes["demo"] == shapes["realistic"]


def test_demo_states_that_operators_defer_on_last_at_least_ten_seconds():
    # A trigger that fires within seconds of its deferral hits an open Airflow race (apache/airflow#67287):
    # the resumed task is marked up_for_retry. Every DMS, HyperPod and SSM state an operator waits out
    # therefore lasts 10 virtual seconds or more in the demo.
    demo = get_profile("demo")
    for group in (demo.dms, demo.hyperpod, demo.ssm):
        for state, seconds in asdict(group).items():
            assert seconds >= 10, f"{type(group).__name__}.{state} lasts {seconds} s"


def test_unknown_profile():
    with pytest.raises(ValueError, match="unknown timing profile 'fast'"):
        get_profile("fast")
