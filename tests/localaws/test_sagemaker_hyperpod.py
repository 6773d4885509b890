"""HyperPod clusters on localaws: moto's clusters created and deleted on the virtual clock, every raw answer
checked against botocore's ``sagemaker`` model, and the cluster statuses read with real boto3 calls."""

from __future__ import annotations

import re
import uuid

import pytest

from localaws import control

LIFECYCLE = {"SourceS3Uri": "s3://sagemaker-lifecycle/scripts", "OnCreate": "on_create.sh"}
ROLE = "arn:aws:iam::123456789012:role/hyperpod"


@pytest.fixture
def sagemaker(checked_client):
    return checked_client("sagemaker")


@pytest.fixture
def hyperpod_timing(localaws) -> dict:
    return control.get_timing(localaws.endpoint_url)["hyperpod"]


@pytest.fixture
def cluster(sagemaker) -> tuple[str, str]:
    """CreateCluster with a controller and two workers; returns (name, ARN)."""
    name = f"hp-{uuid.uuid4().hex[:10]}"
    common = {"LifeCycleConfig": LIFECYCLE, "ExecutionRole": ROLE, "ThreadsPerCore": 1}
    arn = sagemaker.create_cluster(
        ClusterName=name,
        InstanceGroups=[
            {"InstanceGroupName": "controller", "InstanceType": "ml.t3.medium", "InstanceCount": 1, **common},
            {"InstanceGroupName": "workers", "InstanceType": "ml.g5.2xlarge", "InstanceCount": 2, **common},
        ],
    )["ClusterArn"]
    return name, arn


def _node_statuses(sagemaker, name: str) -> dict[str, str]:
    nodes = sagemaker.list_cluster_nodes(ClusterName=name)["ClusterNodeSummaries"]
    return {node["InstanceId"]: node["InstanceStatus"]["Status"] for node in nodes}


def test_a_new_cluster_is_creating_with_pending_nodes(sagemaker, cluster):
    name, arn = cluster
    assert re.fullmatch(r"arn:aws:sagemaker:us-east-1:123456789012:cluster/[a-z0-9]{12}", arn)
    described = sagemaker.describe_cluster(ClusterName=name)
    assert described["ClusterStatus"] == "Creating" and "FailureMessage" not in described
    groups = {
        (g["InstanceGroupName"], g["Status"], g["CurrentCount"], g["TargetCount"])
        for g in described["InstanceGroups"]
    }
    assert groups == {("controller", "Creating", 0, 1), ("workers", "Creating", 0, 2)}
    nodes = _node_statuses(sagemaker, name)
    assert len(nodes) == 3 and set(nodes.values()) == {"Pending"}
    summaries = sagemaker.list_clusters(NameContains=name)["ClusterSummaries"]
    assert [(s["ClusterArn"], s["ClusterStatus"]) for s in summaries] == [(arn, "Creating")]


def test_the_cluster_comes_into_service_on_the_clock(sagemaker, cluster, advance, hyperpod_timing):
    name, arn = cluster
    advance(hyperpod_timing["cluster_creating"] - 1)
    assert sagemaker.describe_cluster(ClusterName=arn)["ClusterStatus"] == "Creating"
    advance(1)
    described = sagemaker.describe_cluster(ClusterName=arn)
    assert described["ClusterStatus"] == "InService"
    assert {g["InstanceGroupName"]: g["CurrentCount"] for g in described["InstanceGroups"]} == {
        "controller": 1,
        "workers": 2,
    }
    nodes = _node_statuses(sagemaker, name)
    assert set(nodes.values()) == {"Running"}
    node_id = sorted(nodes)[0]
    details = sagemaker.describe_cluster_node(ClusterName=arn, NodeId=node_id)["NodeDetails"]
    assert (details["InstanceId"], details["InstanceStatus"]["Status"]) == (node_id, "Running")


def test_delete_goes_through_deleting(sagemaker, cluster, advance, hyperpod_timing):
    name, arn = cluster
    assert sagemaker.delete_cluster(ClusterName=name)["ClusterArn"] == arn
    assert sagemaker.describe_cluster(ClusterName=name)["ClusterStatus"] == "Deleting"
    assert set(_node_statuses(sagemaker, name).values()) == {"ShuttingDown"}
    assert sagemaker.delete_cluster(ClusterName=arn)["ClusterArn"] == arn  # deleting again changes nothing
    advance(hyperpod_timing["cluster_deleting"])
    with pytest.raises(sagemaker.exceptions.ResourceNotFound):
        sagemaker.describe_cluster(ClusterName=name)
    assert sagemaker.list_clusters(NameContains=name)["ClusterSummaries"] == []


def test_unknown_clusters_and_nodes_are_resource_not_found(sagemaker, cluster):
    name, _ = cluster
    missing = f"hp-{uuid.uuid4().hex[:10]}"
    for call in (
        lambda: sagemaker.describe_cluster(ClusterName=missing),
        lambda: sagemaker.list_cluster_nodes(ClusterName=missing),
        lambda: sagemaker.delete_cluster(ClusterName=missing),
        lambda: sagemaker.describe_cluster_node(ClusterName=name, NodeId="i-0123456789abcdef0"),
    ):
        with pytest.raises(sagemaker.exceptions.ResourceNotFound):
            call()


def test_a_name_in_use_is_refused(sagemaker, cluster):
    name, _ = cluster
    group = {
        "InstanceGroupName": "controller",
        "InstanceType": "ml.t3.medium",
        "InstanceCount": 1,
        "LifeCycleConfig": LIFECYCLE,
        "ExecutionRole": ROLE,
    }
    with pytest.raises(sagemaker.exceptions.ResourceInUse):
        sagemaker.create_cluster(ClusterName=name, InstanceGroups=[group])
