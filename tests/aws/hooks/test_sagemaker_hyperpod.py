from __future__ import annotations

import json
import re

import pytest
from botocore.waiter import WaiterModel
from hyperpod_helpers import upload_trivial_lifecycle

from finetune_pipeline.aws.hooks.sagemaker_hyperpod import HyperPodHook

ROLE_ARN = "arn:aws:iam::123456789012:role/finetune-hyperpod-exec"
LIFECYCLE = {"SourceS3Uri": "s3://sagemaker-ftp-lifecycle/scripts", "OnCreate": "on_create.sh"}


@pytest.fixture(autouse=True)
def _lifecycle_scripts(boto_client):
    """An OnCreate that exits 0 where the clusters' LifeCycleConfig points (a missing one fails a cluster)."""
    upload_trivial_lifecycle(boto_client("s3"), LIFECYCLE["SourceS3Uri"])


def groups(controller: str = "controller", workers: int = 2) -> list[dict]:
    common = {"LifeCycleConfig": LIFECYCLE, "ExecutionRole": ROLE_ARN, "ThreadsPerCore": 1}
    return [
        {"InstanceGroupName": controller, "InstanceType": "ml.t3.medium", "InstanceCount": 1, **common},
        {"InstanceGroupName": "workers", "InstanceType": "ml.g5.2xlarge", "InstanceCount": workers, **common},
    ]


@pytest.fixture
def hook(aws_conn) -> HyperPodHook:
    return HyperPodHook(aws_conn_id=aws_conn)


def test_client_type_and_waiters_are_ours(hook):
    assert hook.client_type == "sagemaker"
    assert hook.waiter_path.name == "sagemaker_hyperpod.json"
    model = WaiterModel(json.loads(hook.waiter_path.read_text()))
    assert model.waiter_names == ["cluster_in_service"]
    assert "cluster_in_service" in hook.list_waiters()


def test_cluster_calls(hook, unique, advance_clock, timing):
    name = unique("hp")
    assert hook.find_cluster(name) is None
    arn = hook.create_cluster(name, groups(), tags=[{"Key": "project", "Value": "ftp"}])
    assert re.fullmatch(r"arn:aws:sagemaker:us-east-1:\d{12}:cluster/[a-z0-9]{12}", arn)
    cluster = hook.find_cluster(name)
    assert (cluster["ClusterArn"], cluster["ClusterName"], cluster["ClusterStatus"]) == (
        arn,
        name,
        "Creating",
    )
    assert hook.describe_cluster(arn)["ClusterName"] == name  # by ARN too
    assert name in {summary["ClusterName"] for summary in hook.list_clusters(name_contains=name)}

    nodes = hook.list_cluster_nodes(name)
    assert sorted(node["InstanceGroupName"] for node in nodes) == ["controller", "workers", "workers"]
    assert {node["InstanceStatus"]["Status"] for node in nodes} == {"Pending"}
    assert all(re.fullmatch(r"i-[0-9a-f]{17}", node["InstanceId"]) for node in nodes)
    assert [
        n["InstanceGroupName"] for n in hook.list_cluster_nodes(name, instance_group_name_contains="work")
    ] == ["workers", "workers"]

    advance_clock(timing["hyperpod"]["cluster_creating"])
    assert hook.describe_cluster(name)["ClusterStatus"] == "InService"
    assert {node["InstanceStatus"]["Status"] for node in hook.list_cluster_nodes(name)} == {"Running"}

    assert hook.delete_cluster(name) == arn
    assert hook.find_cluster(name)["ClusterStatus"] == "Deleting"
    advance_clock(timing["hyperpod"]["cluster_deleting"])
    assert hook.find_cluster(name) is None


def test_find_cluster_matches_the_exact_name(hook, unique):
    name = unique("hp")
    hook.create_cluster(f"{name}-long", groups())
    assert hook.find_cluster(name) is None


def test_cluster_id():
    assert HyperPodHook.cluster_id("arn:aws:sagemaker:us-east-1:123456789012:cluster/abcd1234") == "abcd1234"
