"""localaws restarted while a trigger waits: the wait resumes against the restored state and completes."""

from __future__ import annotations

import json
import signal
import time

import pytest
from airflow.sdk.exceptions import TaskDeferred
from fault_helpers import CONTROLLER, LIFECYCLE_URI, ROLE_ARN, Figures, clusters_named, upload_lifecycle

from finetune_pipeline.aws.operators.sagemaker_hyperpod import HyperPodEnsureClusterOperator
from finetune_pipeline.aws.utils.retries import CONNECTION_RETRIES
from localaws import control


def polls(url: str) -> int:
    return control.get_faults(url)["calls"].get("sagemaker.DescribeCluster", 0)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_localaws_restarted_while_a_trigger_waits(
    localaws_process, tmp_path, monkeypatch, context, unique, run_trigger, record, signum
):
    state = tmp_path / "state.pickle"
    # A hard kill loses what came after the last snapshot: snapshots every 0.2 s while requests come in.
    server = localaws_process(
        "--timing", "demo", "--clock-speed", "0", "--state-file", str(state), "--state-interval", "0.2"
    )
    connection = {"conn_type": "aws", "login": "t", "password": "t",
                  "extra": {"endpoint_url": server.url, "region_name": "us-east-1",
                            "config_kwargs": {"retries": CONNECTION_RETRIES}}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    creating = control.get_timing(server.url)["hyperpod"]["cluster_creating"]
    upload_lifecycle(server.url)  # an OnCreate that exits 0; after the restart, the node runs it again
    name = unique("hp")
    operator = HyperPodEnsureClusterOperator(
        task_id="cluster", cluster_name=name, instance_groups=[CONTROLLER], execution_role_arn=ROLE_ARN,
        lifecycle_s3_uri=LIFECYCLE_URI, deferrable=True, waiter_delay=0.2, waiter_max_attempts=1000,
    )  # fmt: skip
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    created_at, seen = time.time(), {}

    def restart_while_it_waits() -> None:
        deadline = time.monotonic() + 30
        while polls(server.url) < 3 or not (state.exists() and state.stat().st_mtime > created_at + 0.2):
            assert time.monotonic() < deadline, "the trigger never polled, or no snapshot was taken"
            time.sleep(0.05)
        seen["before"] = polls(server.url)
        server.restart(signum)
        assert control.get_clock(server.url)["speed"] == 0
        control.advance_clock(server.url, creating + 1)

    event = run_trigger(deferred.value.trigger, during=restart_while_it_waits, timeout=180)
    completed = 0
    try:
        arn = operator.execute_complete(context, event, **(deferred.value.kwargs or {}))
        completed = 1
    finally:
        made = clusters_named(server.url, name)
        record(
            Figures(
                f"localaws restarted ({signal.Signals(signum).name}) while a HyperPod trigger waits",
                1,
                completed,
                1,
                max(0, made - 1),
                notes=[f"{seen.get('before')} polls before the restart, {polls(server.url)} after"],
            )
        )
    assert event["status"] == "success"
    assert made == 1
    status = operator.hook.describe_cluster(name)
    assert (status["ClusterArn"], status["ClusterStatus"]) == (arn, "InService")
