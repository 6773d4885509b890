from __future__ import annotations

import json
import time

import pytest
from hyperpod_helpers import upload_trivial_lifecycle

from finetune_pipeline.aws.hooks.sagemaker_hyperpod import HyperPodHook
from finetune_pipeline.aws.triggers.sagemaker_hyperpod import (
    HyperPodClusterInServiceTrigger,
    HyperPodJobCompleteTrigger,
)

LIFECYCLE = {"SourceS3Uri": "s3://sagemaker-ftp/scripts", "OnCreate": "on_create.sh"}
GROUP = {
    "InstanceGroupName": "controller",
    "InstanceType": "ml.t3.medium",
    "InstanceCount": 1,
    "LifeCycleConfig": LIFECYCLE,
    "ExecutionRole": "arn:aws:iam::1:role/r",
    "ThreadsPerCore": 1,
}


@pytest.fixture(autouse=True)
def _lifecycle_scripts(boto_client):
    """An OnCreate that exits 0 where the clusters' LifeCycleConfig points (a missing one fails a cluster)."""
    upload_trivial_lifecycle(boto_client("s3"), LIFECYCLE["SourceS3Uri"])


@pytest.fixture
def hook(aws_conn) -> HyperPodHook:
    return HyperPodHook(aws_conn_id=aws_conn)


@pytest.fixture
def cluster(hook, unique) -> str:
    """A new cluster, ``Creating``; returns its name."""
    name = unique("hp")
    hook.create_cluster(name, [GROUP])
    return name


def trigger_for(name: str, attempts: int = 2000) -> HyperPodClusterInServiceTrigger:
    return HyperPodClusterInServiceTrigger(cluster_name=name, waiter_delay=0.01, waiter_max_attempts=attempts)


def test_serialize_round_trip():
    trigger = HyperPodClusterInServiceTrigger(
        cluster_name="hp", waiter_delay=2, waiter_max_attempts=3, verify=False
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "finetune_pipeline.aws.triggers.sagemaker_hyperpod.HyperPodClusterInServiceTrigger"
    assert kwargs == {
        "cluster_name": "hp",
        "waiter_delay": 2,
        "waiter_max_attempts": 3,
        "aws_conn_id": "aws_default",
        "verify": False,
    }
    rebuilt = HyperPodClusterInServiceTrigger(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert (rebuilt.waiter_name, rebuilt.waiter_args) == ("cluster_in_service", {"ClusterName": "hp"})
    assert isinstance(rebuilt.hook(), HyperPodHook)


def test_fires_once_the_cluster_is_in_service(hook, cluster, advance_clock, timing, run_trigger):
    assert hook.describe_cluster(cluster)["ClusterStatus"] == "Creating"
    event = run_trigger(
        trigger_for(cluster), during=lambda: advance_clock(timing["hyperpod"]["cluster_creating"])
    )
    assert event == {"status": "success", "cluster_name": cluster}
    # Run again, as after a triggerer restart: it polls the cluster as it is now.
    assert run_trigger(trigger_for(cluster, attempts=1))["status"] == "success"


def test_error_event_when_the_cluster_is_deleted_meanwhile(hook, cluster, run_trigger):
    event = run_trigger(trigger_for(cluster), during=lambda: hook.delete_cluster(cluster))
    assert event["status"] == "error" and event["cluster_name"] == cluster
    assert f"HyperPod cluster {cluster} did not come into service" in event["message"]
    assert "Deleting" in event["message"]


def test_error_event_for_a_missing_cluster(unique, run_trigger):
    name = unique("hp-missing")
    event = run_trigger(trigger_for(name, attempts=5))
    assert event["status"] == "error" and event["cluster_name"] == name
    assert f"HyperPod cluster {name} did not come into service" in event["message"]
    assert "ResourceNotFound" in event["message"]


# HyperPodJobCompleteTrigger


def job_trigger(
    cluster: str, job_key: str, jobs_uri: str, attempts: int = 2000, controller_group: str = "controller"
) -> HyperPodJobCompleteTrigger:
    return HyperPodJobCompleteTrigger(
        cluster_name=cluster, job_key=job_key, jobs_uri=jobs_uri, controller_group=controller_group,
        waiter_delay=0.01, waiter_max_attempts=attempts,
    )  # fmt: skip


def write_state(boto_client, bucket: str, job_key: str, state: str, **fields) -> None:
    record = {"job_key": job_key, "state": state, "slurm_job_id": "4", "exit_code": None, "reason": None,
              "log_tail": ["last line"], "updated": "2026-01-01T00:00:00Z", **fields}  # fmt: skip
    boto_client("s3").put_object(Bucket=bucket, Key=f"jobs/state/{job_key}.json", Body=json.dumps(record).encode())


def test_job_trigger_serialize_round_trip():
    trigger = HyperPodJobCompleteTrigger(
        cluster_name="hp", job_key="k", jobs_uri="s3://b/jobs", controller_group="controller-machine",
        waiter_delay=2, waiter_max_attempts=3, region_name="eu-west-1",
    )  # fmt: skip
    classpath, kwargs = trigger.serialize()
    assert classpath == "finetune_pipeline.aws.triggers.sagemaker_hyperpod.HyperPodJobCompleteTrigger"
    assert kwargs == {"cluster_name": "hp", "job_key": "k", "jobs_uri": "s3://b/jobs",
                      "controller_group": "controller-machine", "waiter_delay": 2,
                      "waiter_max_attempts": 3, "aws_conn_id": "aws_default", "region_name": "eu-west-1"}  # fmt: skip
    assert HyperPodJobCompleteTrigger(**kwargs).serialize() == (classpath, kwargs)


def test_job_trigger_logs_node_counts_while_the_cluster_comes_up(
    cluster, bucket, boto_client, unique, advance_clock, timing, run_trigger, capsys
):
    job_key = unique("job")

    def cluster_then_job() -> None:
        time.sleep(0.1)
        advance_clock(timing["hyperpod"]["cluster_creating"])
        time.sleep(0.1)
        write_state(boto_client, bucket, job_key, "RUNNING")
        time.sleep(0.1)
        write_state(boto_client, bucket, job_key, "COMPLETED", exit_code=0)

    event = run_trigger(job_trigger(cluster, job_key, f"s3://{bucket}/jobs"), during=cluster_then_job)
    assert event["status"] == "success" and event["state"]["state"] == "COMPLETED"
    logged = capsys.readouterr().out
    assert f"HyperPod cluster {cluster} is Creating; nodes by status: 1 Pending." in logged
    assert f"HyperPod cluster {cluster} is InService; nodes by status: 1 Running." in logged
    assert f"HyperPod job {job_key} is RUNNING (Slurm job 4)." in logged
    assert logged.index("is RUNNING") < logged.index("is COMPLETED")


def test_job_trigger_reports_a_failed_job(cluster, bucket, boto_client, unique, run_trigger):
    job_key = unique("job")
    write_state(boto_client, bucket, job_key, "FAILED", exit_code=2)
    event = run_trigger(job_trigger(cluster, job_key, f"s3://{bucket}/jobs"))
    assert (event["status"], event["state"]["exit_code"], event["state"]["log_tail"]) == ("error", 2, ["last line"])


def test_job_trigger_ends_when_the_cluster_failed(hook, bucket, boto_client, unique, run_trigger):
    name = unique("hp")
    hook.create_cluster(name, [{**GROUP, "LifeCycleConfig": {**LIFECYCLE, "OnCreate": "not-there.sh"}}])
    event = run_trigger(job_trigger(name, unique("job"), f"s3://{bucket}/jobs"))
    assert event["status"] == "error" and event["message"] == f"HyperPod cluster {name} is Failed"


def test_job_trigger_ends_when_the_cluster_has_no_controller_group(cluster, bucket, unique, run_trigger):
    event = run_trigger(job_trigger(cluster, unique("job"), f"s3://{bucket}/jobs", controller_group="head"))
    assert event["status"] == "error"
    assert event["message"] == (
        f"HyperPod cluster {cluster} has no instance group 'head' (it has controller), where the job agent was to run"
    )


def test_job_trigger_ends_when_there_is_no_such_cluster(bucket, unique, run_trigger):
    event = run_trigger(job_trigger("hp-never-made", unique("job"), f"s3://{bucket}/jobs"))
    assert (event["status"], event["message"]) == ("error", "HyperPod cluster hp-never-made does not exist")


def test_job_trigger_gives_up_after_its_attempts(cluster, bucket, unique, run_trigger):
    event = run_trigger(job_trigger(cluster, "never", f"s3://{bucket}/jobs", attempts=3))
    assert event["status"] == "error"
    assert event["message"].startswith("HyperPod job never did not end within 3 polls")
    assert event["message"].endswith("last state: none written yet")
