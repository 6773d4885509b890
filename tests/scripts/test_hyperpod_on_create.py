"""The shipped HyperPod lifecycle script (include/scripts/hyperpod/on_create.sh) on localaws's nodes."""

from __future__ import annotations

import uuid

from hyperpod_helpers import SCRIPTS, wait_for

from localaws import control

ROLE = "arn:aws:iam::123456789012:role/hyperpod-exec"


def create(boto_client, localaws, files: dict[str, bytes]) -> str:
    s3, sagemaker = boto_client("s3"), boto_client("sagemaker")
    bucket = f"sagemaker-oncreate-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for name, body in {"on_create.sh": (SCRIPTS / "on_create.sh").read_bytes(), **files}.items():
        s3.put_object(Bucket=bucket, Key=f"lc/{name}", Body=body)
    name = f"hp-{uuid.uuid4().hex[:8]}"
    group = {"InstanceGroupName": "controller-machine", "InstanceType": "ml.t3.medium", "InstanceCount": 1,
             "LifeCycleConfig": {"SourceS3Uri": f"s3://{bucket}/lc", "OnCreate": "on_create.sh"},
             "ExecutionRole": ROLE}  # fmt: skip
    sagemaker.create_cluster(ClusterName=name, InstanceGroups=[group])
    url = localaws.endpoint_url
    control.advance_clock(url, control.get_timing(url)["hyperpod"]["cluster_creating"])
    wait_for(lambda: sagemaker.describe_cluster(ClusterName=name)["ClusterStatus"] != "Creating", what="an end")
    return name


def test_without_a_job_agent_config_the_cluster_has_no_agent(boto_client, localaws):
    name = create(boto_client, localaws, {})
    sagemaker = boto_client("sagemaker")
    assert sagemaker.describe_cluster(ClusterName=name)["ClusterStatus"] == "InService"
    (node,) = sagemaker.list_cluster_nodes(ClusterName=name)["ClusterNodeSummaries"]
    log = (localaws.app.nodes.node_dir(node["InstanceId"]) / "script.log").read_text()
    assert "[on_create] node group: controller-machine" in log and "no job agent on this cluster" in log
    sagemaker.delete_cluster(ClusterName=name)


def test_a_broken_job_agent_config_fails_the_cluster(boto_client, localaws):
    name = create(boto_client, localaws, {"job_agent.json": b'{"jobs_uri": "s3://b/j"}',
                                          "job_agent.py": (SCRIPTS / "job_agent.py").read_bytes()})  # fmt: skip
    described = boto_client("sagemaker").describe_cluster(ClusterName=name)
    assert described["ClusterStatus"] == "Failed" and "OnCreate exited 1" in described["FailureMessage"]
