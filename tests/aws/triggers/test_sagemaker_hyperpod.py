from __future__ import annotations

import pytest

from finetune_pipeline.aws.hooks.sagemaker_hyperpod import HyperPodHook
from finetune_pipeline.aws.triggers.sagemaker_hyperpod import HyperPodClusterInServiceTrigger

LIFECYCLE = {"SourceS3Uri": "s3://sagemaker-ftp/scripts", "OnCreate": "on_create.sh"}
GROUP = {
    "InstanceGroupName": "controller",
    "InstanceType": "ml.t3.medium",
    "InstanceCount": 1,
    "LifeCycleConfig": LIFECYCLE,
    "ExecutionRole": "arn:aws:iam::1:role/r",
    "ThreadsPerCore": 1,
}


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
