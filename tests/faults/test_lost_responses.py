"""A create whose answer is lost after AWS has made the resource: exactly one resource, whatever botocore does."""

from __future__ import annotations

import pytest
from fault_helpers import CREATES, Figures, create_case

from localaws import control


@pytest.mark.parametrize("mode", ["error", "drop"])
@pytest.mark.parametrize("operation", list(CREATES))
def test_a_lost_answer_after_each_create_leaves_exactly_one_resource(
    localaws, context, unique, timing, record, operation, mode
):
    url = localaws.endpoint_url
    case = create_case(operation, url, unique, context["ti"], timing)
    rule = {"service": case.service, "operation": operation, "kind": "lost_response", "mode": mode, "limit": 1}
    control.add_faults(url, rule)
    completed = 0
    try:
        case.build().execute(context)
        completed = 1
    finally:
        view = control.clear_faults(url)
        made = case.count()
        record(
            Figures(
                f"{case.service} {operation}: answer lost ({'5xx' if mode == 'error' else 'connection dropped'})",
                sum(view["injected"].values()),
                completed,
                1,
                max(0, made - 1),
            )
        )
    assert view["injected"] == {f"{case.service}.{operation}.lost_response": 1}
    assert made == 1
