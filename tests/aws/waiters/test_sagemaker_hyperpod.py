from __future__ import annotations

import asyncio
import json

import pytest
from botocore.exceptions import WaiterError
from botocore.waiter import WaiterModel
from hyperpod_helpers import upload_trivial_lifecycle

from finetune_pipeline.aws.hooks.sagemaker_hyperpod import HyperPodHook

FAST = {"Delay": 0.01, "MaxAttempts": 5}
LIFECYCLE = {"SourceS3Uri": "s3://sagemaker-ftp/scripts", "OnCreate": "on_create.sh"}


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
    group = {
        "InstanceGroupName": "controller",
        "InstanceType": "ml.t3.medium",
        "InstanceCount": 1,
        "LifeCycleConfig": LIFECYCLE,
        "ExecutionRole": "arn:aws:iam::1:role/r",
        "ThreadsPerCore": 1,
    }
    hook.create_cluster(name, [group])
    return name


def wait_async(hook: HyperPodHook, **kwargs) -> None:
    """Wait with the waiter the provider's triggers use: our JSON on an aiobotocore client."""

    async def main() -> None:
        async with await hook.get_async_conn() as client:
            waiter = hook.get_waiter("cluster_in_service", deferrable=True, client=client)
            await waiter.wait(**kwargs)

    asyncio.run(main())


def test_model_is_valid(hook):
    model = WaiterModel(json.loads(hook.waiter_path.read_text()))
    waiter = model.get_waiter("cluster_in_service")
    assert waiter.operation == "DescribeCluster"
    assert {(a.expected, a.state) for a in waiter.acceptors} == {
        ("InService", "success"),
        ("Failed", "failure"),
        ("Deleting", "failure"),
    }


def test_cluster_in_service_waits_through_creating(hook, cluster, advance_clock, timing):
    waiter = hook.get_waiter("cluster_in_service")
    with pytest.raises(WaiterError, match="Max attempts exceeded"):
        waiter.wait(ClusterName=cluster, WaiterConfig={"Delay": 0.01, "MaxAttempts": 2})
    advance_clock(timing["hyperpod"]["cluster_creating"])
    waiter.wait(ClusterName=cluster, WaiterConfig=FAST)


def test_cluster_in_service_fails_once_deleting(hook, cluster):
    hook.delete_cluster(cluster)
    with pytest.raises(WaiterError, match="terminal failure"):
        hook.get_waiter("cluster_in_service").wait(ClusterName=cluster, WaiterConfig=FAST)


def test_cluster_in_service_stops_on_an_unknown_cluster(hook, unique):
    with pytest.raises(WaiterError, match="ResourceNotFound"):
        hook.get_waiter("cluster_in_service").wait(ClusterName=unique("hp-missing"), WaiterConfig=FAST)


def test_async_waiter_from_our_json(hook, cluster, advance_clock, timing):
    with pytest.raises(WaiterError, match="Max attempts exceeded"):
        wait_async(hook, ClusterName=cluster, WaiterConfig={"Delay": 0.01, "MaxAttempts": 2})
    advance_clock(timing["hyperpod"]["cluster_creating"])
    wait_async(hook, ClusterName=cluster, WaiterConfig=FAST)
    hook.delete_cluster(cluster)
    with pytest.raises(WaiterError, match="terminal failure"):
        wait_async(hook, ClusterName=cluster, WaiterConfig=FAST)
