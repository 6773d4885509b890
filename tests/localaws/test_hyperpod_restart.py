"""localaws restarted under a HyperPod cluster whose controller runs the job agent: the node processes were not
saved, so the nodes run OnCreate again in their folders; the agent comes back and runs the next job, and a
job that was running when localaws went down ends FAILED (its Slurm job NODE_FAIL)."""

from __future__ import annotations

import json
import signal

import boto3
import pytest
from hyperpod_helpers import FAKE_TRAIN, make_bundle, upload_job_agent_lifecycle, wait_for

from localaws import control

ROLE = "arn:aws:iam::123456789012:role/hyperpod-exec"


def clients(url: str):
    make = lambda service: boto3.client(  # noqa: E731
        service, endpoint_url=url, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
    )
    return make("s3"), make("sagemaker")


def put_spec(s3, job_key: str, *args: str) -> None:
    spec = {"job_key": job_key, "bundle_uri": "s3://jobs/code/bundle.zip",
            "command": ["python3", "train.py", "--output-uri", f"s3://jobs/models/{job_key}", *args],
            "env": {}, "nodes": 1, "time_limit_minutes": 5, "sbatch_args": [], "installed_modules": []}  # fmt: skip
    s3.put_object(Bucket="jobs", Key=f"hp/jobs/{job_key}.json", Body=json.dumps(spec).encode(), IfNoneMatch="*")


def state(s3, job_key: str) -> str | None:
    try:
        return json.loads(s3.get_object(Bucket="jobs", Key=f"hp/state/{job_key}.json")["Body"].read())["state"]
    except s3.exceptions.NoSuchKey:
        return None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_the_job_agent_comes_back_after_a_restart(localaws_process, tmp_path, signum):
    server = localaws_process(
        "--timing", "demo", "--clock-speed", "0", "--state-file", str(tmp_path / "state.pickle"),
        "--state-interval", "0.2",
    )  # fmt: skip
    s3, sagemaker = clients(server.url)
    s3.create_bucket(Bucket="jobs")
    s3.put_object(Bucket="jobs", Key="code/bundle.zip", Body=make_bundle(FAKE_TRAIN))
    upload_job_agent_lifecycle(s3, "s3://sagemaker-restart/lc", "s3://jobs/hp")
    group = {"InstanceGroupName": "controller", "InstanceType": "ml.t3.medium", "InstanceCount": 1,
             "LifeCycleConfig": {"SourceS3Uri": "s3://sagemaker-restart/lc", "OnCreate": "on_create.sh"},
             "ExecutionRole": ROLE}  # fmt: skip
    worker = {**group, "InstanceGroupName": "workers", "InstanceType": "ml.g5.2xlarge"}  # Slurm's compute node
    sagemaker.create_cluster(ClusterName="restarted", InstanceGroups=[group, worker])
    control.advance_clock(server.url, control.get_timing(server.url)["hyperpod"]["cluster_creating"])
    wait_for(lambda: sagemaker.describe_cluster(ClusterName="restarted")["ClusterStatus"] == "InService",
             what="InService")  # fmt: skip
    put_spec(s3, "before", "--sleep", "60")
    wait_for(lambda: state(s3, "before") == "RUNNING", what="the first job to run")
    control.save_state(server.url)  # a SIGKILL keeps only what a snapshot holds: the job RUNNING

    server.restart(signum)
    s3, sagemaker = clients(server.url)
    assert sagemaker.describe_cluster(ClusterName="restarted")["ClusterStatus"] == "InService"
    wait_for(lambda: state(s3, "before") == "FAILED", timeout=60, what="the interrupted job to be FAILED")
    put_spec(s3, "after")
    wait_for(lambda: state(s3, "after") == "COMPLETED", timeout=60, what="the next job to complete")
    sagemaker.delete_cluster(ClusterName="restarted")
