"""
The fault suite: the pipeline's AWS operators run against localaws while it injects AWS's failures.

Each scenario records its figures (faults injected, runs completed, resources duplicated, rows lost); each
prints its own line, and the table of all of them is printed at the end of the test run.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import botocore.session
import pytest
from fault_helpers import FIGURES, Figures

from localaws import control


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("fault suite: faults injected and survived")
    for figures in FIGURES:
        terminalreporter.write_line(figures.line())
    duplicated = sum(f.duplicates for f in FIGURES)
    lost = sum(f.rows_lost or 0 for f in FIGURES)
    terminalreporter.write_line(
        f"{len(FIGURES)} scenarios, {sum(f.faults_injected for f in FIGURES)} faults injected, "
        f"{sum(f.runs_completed for f in FIGURES)}/{sum(f.runs for f in FIGURES)} runs completed, "
        f"{duplicated} resources duplicated, {lost} rows lost"
    )


@pytest.fixture
def record():
    """``record(Figures(...))``: keep a scenario's figures for the summary and print them now."""

    def add(figures: Figures) -> Figures:
        FIGURES.append(figures)
        print(figures.line())
        return figures

    return add


@pytest.fixture(scope="package", autouse=True)
def _parse_service_models_once():
    """One botocore loader for every hook's session, so each service model is parsed once (speed only)."""
    original = botocore.session.create_loader
    loaders: dict = {}

    def shared_loader(search_path_string=None):
        if search_path_string not in loaders:
            loaders[search_path_string] = original(search_path_string)
        return loaders[search_path_string]

    botocore.session.create_loader = shared_loader
    yield
    botocore.session.create_loader = original


@pytest.fixture(autouse=True)
def _no_faults_left_behind(localaws, aws_conn):
    """Every scenario starts and ends with no fault rules and the clock frozen where it was."""
    url = localaws.endpoint_url
    control.clear_faults(url)
    speed = control.get_clock(url)["speed"]
    control.set_clock_speed(url, 0)
    yield
    control.clear_faults(url)
    control.set_clock_speed(url, speed)


@pytest.fixture
def unique():
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def context(unique):
    ti = SimpleNamespace(dag_id="fault_suite", task_id="task", run_id=unique("manual"), map_index=-1)
    return {"ti": ti}


@pytest.fixture
def timing(localaws) -> dict:
    return control.get_timing(localaws.endpoint_url)
