"""HyperPod clusters on localaws: moto's clusters created and deleted on the virtual clock, every raw answer
checked against botocore's ``sagemaker`` model, and the cluster statuses read with real boto3 calls."""

from __future__ import annotations

import os
import re
import uuid

import pytest
from botocore.exceptions import ClientError
from hyperpod_helpers import lifecycle_done, upload_trivial_lifecycle, wait_for

from localaws import control

LIFECYCLE = {"SourceS3Uri": "s3://sagemaker-lifecycle/scripts", "OnCreate": "on_create.sh"}
ROLE = "arn:aws:iam::123456789012:role/hyperpod"


@pytest.fixture(autouse=True)
def _lifecycle_scripts(boto_client):
    """An OnCreate that exits 0 where the clusters' LifeCycleConfig points (a missing one fails a cluster)."""
    upload_trivial_lifecycle(boto_client("s3"), LIFECYCLE["SourceS3Uri"])


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


def test_the_cluster_comes_into_service_on_the_clock(localaws, sagemaker, cluster, advance, hyperpod_timing):
    name, arn = cluster
    wait_for(lambda: lifecycle_done(localaws, sagemaker, name), what="OnCreate on every node")
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


def test_a_clusters_tags_are_found_by_the_arn_create_returned(checked_client, boto_client, advance, hyperpod_timing):
    # Tag patterns use \p{L} classes, which Python's re cannot check: lengths and shapes are still checked.
    sagemaker = checked_client("sagemaker", lenient_strings=True)
    name = f"hp-{uuid.uuid4().hex[:10]}"
    group = {"InstanceGroupName": "controller", "InstanceType": "ml.t3.medium", "InstanceCount": 1,
             "LifeCycleConfig": LIFECYCLE, "ExecutionRole": ROLE}  # fmt: skip
    arn = sagemaker.create_cluster(ClusterName=name, InstanceGroups=[group], Tags=[{"Key": "team", "Value": "ml"}])[
        "ClusterArn"
    ]
    sagemaker.add_tags(ResourceArn=arn, Tags=[{"Key": "run", "Value": "r1"}])
    assert {t["Key"]: t["Value"] for t in sagemaker.list_tags(ResourceArn=arn)["Tags"]} == {"team": "ml", "run": "r1"}
    sagemaker.delete_cluster(ClusterName=name)
    advance(hyperpod_timing["cluster_deleting"])
    with pytest.raises(ClientError, match="ValidationException"):  # a common error: ListTags models none
        boto_client("sagemaker").list_tags(ResourceArn=arn)


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


# The nodes run their lifecycle scripts


def _create(sagemaker, on_create: str = "on_create.sh", groups=(("controller", 1), ("workers", 2))) -> tuple[str, str]:
    name = f"hp-{uuid.uuid4().hex[:10]}"
    lifecycle = {**LIFECYCLE, "OnCreate": on_create}
    arn = sagemaker.create_cluster(
        ClusterName=name,
        InstanceGroups=[
            {"InstanceGroupName": group, "InstanceType": "ml.t3.medium", "InstanceCount": count,
             "LifeCycleConfig": lifecycle, "ExecutionRole": ROLE}
            for group, count in groups
        ],
    )["ClusterArn"]
    return name, arn


def test_on_create_runs_on_every_node_with_the_resource_config(localaws, sagemaker, boto_client):
    """Each node downloads SourceS3Uri, finds its group in resource_config.json by its own address."""
    script = (
        "#!/bin/bash\nset -e\npython3 - \"$SAGEMAKER_RESOURCE_CONFIG_PATH\" $(hostname -I) > group.txt <<'PY'\n"
        "import json, sys\nconfig = json.load(open(sys.argv[1]))\n"
        "print(next(g['Name'] for g in config['InstanceGroups'] for i in g['Instances'] "
        "if i['CustomerIpAddress'] in sys.argv[2:]), config['ClusterConfig']['ClusterName'])\nPY\n"
        "cat helper.txt >> group.txt\n"
    )
    s3 = boto_client("s3")
    upload_trivial_lifecycle(s3, LIFECYCLE["SourceS3Uri"], "whoami.sh", script)
    upload_trivial_lifecycle(s3, LIFECYCLE["SourceS3Uri"], "helper.txt", "a file beside it\n")
    name, _ = _create(sagemaker, "whoami.sh")
    wait_for(lambda: lifecycle_done(localaws, sagemaker, name), what="OnCreate on every node")
    nodes = sagemaker.list_cluster_nodes(ClusterName=name)["ClusterNodeSummaries"]
    seen = sorted(
        (localaws.app.nodes.node_dir(n["InstanceId"]) / "lifecycle" / "group.txt").read_text() for n in nodes
    )
    assert seen == sorted(f"{group} {name}\na file beside it\n" for group in ("controller", "workers", "workers"))


def test_in_service_waits_for_the_lifecycle_scripts(localaws, sagemaker, boto_client, advance, hyperpod_timing):
    upload_trivial_lifecycle(boto_client("s3"), LIFECYCLE["SourceS3Uri"], "slow.sh", "#!/bin/bash\nsleep 1\n")
    name, _ = _create(sagemaker, "slow.sh", groups=(("controller", 1),))
    advance(hyperpod_timing["cluster_creating"] + 60)
    assert sagemaker.describe_cluster(ClusterName=name)["ClusterStatus"] == "Creating"  # scripts still run
    wait_for(lambda: sagemaker.describe_cluster(ClusterName=name)["ClusterStatus"] == "InService", what="InService")


def test_a_failing_on_create_fails_the_cluster(localaws, sagemaker, boto_client):
    upload_trivial_lifecycle(boto_client("s3"), LIFECYCLE["SourceS3Uri"], "fails.sh", "#!/bin/bash\nexit 3\n")
    name, _ = _create(sagemaker, "fails.sh")
    wait_for(lambda: sagemaker.describe_cluster(ClusterName=name)["ClusterStatus"] == "Failed", what="Failed")
    described = sagemaker.describe_cluster(ClusterName=name)
    message = described["FailureMessage"]
    assert re.match(r'Instance i-\w+ failed to provision with the following error: "Lifecycle scripts did not', message)
    assert f"log group '/aws/sagemaker/Clusters/{name}/{described['ClusterArn'].rsplit('/', 1)[-1]}'" in message
    assert "OnCreate exited 3" in message
    assert {g["Status"] for g in described["InstanceGroups"]} == {"Failed"}
    assert "Failure" in set(_node_statuses(sagemaker, name).values())


def test_an_on_create_missing_from_s3_fails_the_cluster(sagemaker):
    name, _ = _create(sagemaker, "not-uploaded.sh")
    described = sagemaker.describe_cluster(ClusterName=name)
    assert described["ClusterStatus"] == "Failed"
    assert "Ensure the scripts exist in provided S3 path" in described["FailureMessage"]
    assert "'not-uploaded.sh' is not under s3://sagemaker-lifecycle/scripts" in described["FailureMessage"]


def test_delete_stops_what_the_nodes_run(localaws, sagemaker, boto_client):
    script = "#!/bin/bash\nnohup sleep 300 > /dev/null 2>&1 &\necho $! > daemon.pid\n"
    upload_trivial_lifecycle(boto_client("s3"), LIFECYCLE["SourceS3Uri"], "daemon.sh", script)
    name, _ = _create(sagemaker, "daemon.sh", groups=(("controller", 1),))
    wait_for(lambda: lifecycle_done(localaws, sagemaker, name), what="OnCreate")
    (node,) = _node_statuses(sagemaker, name)
    pid = int((localaws.app.nodes.node_dir(node) / "lifecycle" / "daemon.pid").read_text())
    assert _alive(pid)
    sagemaker.delete_cluster(ClusterName=name)
    wait_for(lambda: not _alive(pid), what="the daemon to end")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return not stat.read().split(") ", 1)[1].startswith("Z")
