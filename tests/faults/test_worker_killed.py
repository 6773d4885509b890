"""A worker SIGKILLed during each create step, after AWS made the resource; the retry makes no second one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fault_helpers import CREATES, Figures, create_case

from localaws import control

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("create_worker.py")
HOLD_SECONDS = 120  # localaws holds the create's answer this long; the worker is killed well before


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """One worker process per create, all started at once so their imports overlap."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "plugins"), str(REPO_ROOT),
                                                        os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    log = open(tmp_path_factory.mktemp("workers") / "workers.log", "w")  # noqa: SIM115 - closed below
    started = [
        subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=log, text=True, env=env, cwd=REPO_ROOT)  # fmt: skip
        for _ in CREATES
    ]
    yield iter(started)
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    log.close()


def read_line(process: subprocess.Popen, timeout: float) -> str:
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return lines[0].strip() if lines else ""


@pytest.mark.parametrize("operation", list(CREATES))
def test_a_worker_killed_after_each_create_commits_then_retried_leaves_one_resource(
    localaws, aws_conn, workers, context, unique, timing, record, operation
):
    url = localaws.endpoint_url
    case = create_case(operation, url, unique, context["ti"], timing)
    worker = next(workers)
    assert read_line(worker, timeout=120) == "ready", "the worker did not start"
    control.add_faults(
        url,
        {"service": case.service, "operation": operation, "kind": "latency", "seconds": HOLD_SECONDS,
         "phase": "after", "limit": 1},  # fmt: skip
    )
    spec = {"operator": case.operator, "arguments": case.arguments, "ti": vars(context["ti"]),
            "env": {"AIRFLOW_CONN_AWS_DEFAULT": os.environ["AIRFLOW_CONN_AWS_DEFAULT"]}}  # fmt: skip
    worker.stdin.write(json.dumps(spec) + "\n")
    worker.stdin.flush()
    # localaws counts the held answer once the create is done: that is the moment to kill the worker.
    deadline = time.monotonic() + 60
    held = f"{case.service}.{operation}.latency"
    while control.get_faults(url)["injected"].get(held) != 1:
        assert worker.poll() is None, f"the worker ended before its {operation} was held"
        assert time.monotonic() < deadline, f"the worker's {operation} never reached localaws"
        time.sleep(0.05)
    worker.kill()
    assert worker.wait(timeout=30) == -9
    made_by_killed_try = case.count()
    view = control.clear_faults(url)

    completed = 0
    try:
        case.build().execute(context)  # the task's retry, same task run
        completed = 1
    finally:
        made = case.count()
        record(
            Figures(
                f"{case.service} {operation}: worker SIGKILLed after the create, then retried",
                sum(view["injected"].values()) + 1,  # the held answer, and the kill
                completed,
                1,
                max(0, made - 1),
                notes=["held answer + SIGKILL"],
            )
        )
    assert made_by_killed_try == 1
    assert made == 1
