"""HyperPod submission end to end on localaws: the shipped lifecycle script starts the job agent on the
controller, the real operator and trigger submit and follow a fake bundle through Slurm (localaws's shims)."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred
from hyperpod_helpers import (
    FAKE_TRAIN,
    make_bundle,
    sbatch_calls,
    upload_job_agent_lifecycle,
    wait_for,
)

from finetune_pipeline.aws.operators.sagemaker_hyperpod import HyperPodSubmitJobOperator
from localaws import control

ROLE = "arn:aws:iam::123456789012:role/hyperpod-exec"
FAST = {"waiter_delay": 0.05, "waiter_max_attempts": 2000}


@pytest.fixture(scope="module")
def cluster(localaws):
    """One InService cluster (controller + 2 workers) whose controller runs the job agent; deleted after."""
    import boto3

    url = localaws.endpoint_url
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                      aws_access_key_id="t", aws_secret_access_key="t")  # fmt: skip
    sagemaker = boto3.client("sagemaker", endpoint_url=url, region_name="us-east-1",
                             aws_access_key_id="t", aws_secret_access_key="t")  # fmt: skip
    suffix = uuid.uuid4().hex[:8]
    bucket = f"ftp-jobs-{suffix}"
    s3.create_bucket(Bucket=bucket)
    lifecycle = f"s3://sagemaker-ftp-{suffix}/lifecycle"
    jobs_uri = f"s3://{bucket}/hyperpod"
    upload_job_agent_lifecycle(s3, lifecycle, jobs_uri)
    s3.put_object(Bucket=bucket, Key="code/bundle.zip", Body=make_bundle(FAKE_TRAIN))
    common = {"LifeCycleConfig": {"SourceS3Uri": lifecycle, "OnCreate": "on_create.sh"}, "ExecutionRole": ROLE}
    name = f"hp-{suffix}"
    arn = sagemaker.create_cluster(
        ClusterName=name,
        InstanceGroups=[
            {"InstanceGroupName": "controller", "InstanceType": "ml.t3.medium", "InstanceCount": 1, **common},
            {"InstanceGroupName": "workers", "InstanceType": "ml.g5.2xlarge", "InstanceCount": 2, **common},
        ],
    )["ClusterArn"]
    control.advance_clock(url, control.get_timing(url)["hyperpod"]["cluster_creating"])
    wait_for(lambda: sagemaker.describe_cluster(ClusterName=name)["ClusterStatus"] != "Creating", what="InService")
    assert sagemaker.describe_cluster(ClusterName=name)["ClusterStatus"] == "InService"
    yield {"server": localaws, "name": name, "arn": arn, "bucket": bucket, "jobs_uri": jobs_uri, "s3": s3,
           "bundle_uri": f"s3://{bucket}/code/bundle.zip"}  # fmt: skip
    sagemaker.delete_cluster(ClusterName=name)


def submit(cluster, job_key: str, *args: str, **overrides) -> HyperPodSubmitJobOperator:
    arguments = {
        "task_id": "train",
        "cluster_name": cluster["name"],
        "job_key": job_key,
        "jobs_uri": cluster["jobs_uri"],
        "bundle_uri": cluster["bundle_uri"],
        "entrypoint": "train.py",
        "entrypoint_args": ["--output-uri", f"s3://{cluster['bucket']}/models/{job_key}", *args],
        "nodes": 2,
        "controller_group": "controller",
        "deferrable": True,
        **FAST,
        **overrides,
    }
    return HyperPodSubmitJobOperator(**arguments)


def defer(operator, context) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    return deferred.value


def has_success(cluster, job_key: str) -> bool:
    listing = cluster["s3"].list_objects_v2(Bucket=cluster["bucket"], Prefix=f"models/{job_key}/_SUCCESS")
    return listing.get("KeyCount", 0) == 1


def state_of(cluster, job_key: str) -> dict | None:
    try:
        body = cluster["s3"].get_object(Bucket=cluster["bucket"], Key=f"hyperpod/state/{job_key}.json")["Body"]
    except cluster["s3"].exceptions.NoSuchKey:
        return None
    return json.loads(body.read())


def test_a_job_runs_to_completed_through_the_deferred_operator(aws_conn, cluster, context, unique, run_trigger):
    job_key = unique("ftp-ok")
    operator = submit(cluster, job_key)
    deferred = defer(operator, context)
    event = run_trigger(deferred.trigger, timeout=60)
    record = operator.execute_complete(context, event)
    assert record["state"] == "COMPLETED" and record["exit_code"] == 0
    assert "rank 0 done" in record["log_tail"] and "rank 1 done" in record["log_tail"]  # one task per node
    assert has_success(cluster, job_key)
    assert len(sbatch_calls(cluster["server"], cluster["arn"], job_key)) == 1


def test_a_job_runs_to_completed_in_the_worker(aws_conn, cluster, context, unique):
    job_key = unique("ftp-worker")
    record = submit(cluster, job_key, deferrable=False).execute(context)
    assert record["state"] == "COMPLETED" and has_success(cluster, job_key)


def test_a_failed_job_fails_the_task_with_its_log_tail(aws_conn, cluster, context, unique, run_trigger, capsys):
    job_key = unique("ftp-fail")
    operator = submit(cluster, job_key, "--fail")
    event = run_trigger(defer(operator, context).trigger, timeout=60)
    with pytest.raises(AirflowFailException, match=f"HyperPod job {job_key} ended FAILED") as failed:
        operator.execute_complete(context, event)
    assert "RuntimeError: the fake trainer failed on purpose" in str(failed.value)
    logged = capsys.readouterr().out  # Airflow's task log (structlog writes to stdout here)
    assert "Last lines of HyperPod job" in logged and "the fake trainer failed on purpose" in logged
    assert not has_success(cluster, job_key)


def test_killing_the_task_cancels_the_job(aws_conn, cluster, context, unique, run_trigger):
    job_key = unique("ftp-kill")
    operator = submit(cluster, job_key, "--sleep", "60")
    deferred = defer(operator, context)
    wait_for(lambda: (state_of(cluster, job_key) or {}).get("state") == "RUNNING", what="the job to run")
    job_dir = job_folder(cluster, job_key)
    pids = wait_for(lambda: [int(p.read_text()) for p in (job_dir / "bundle").glob("pid.*")], what="pids")
    operator.on_kill()
    event = run_trigger(deferred.trigger, timeout=60)
    assert event["state"]["state"] == "CANCELLED"
    with pytest.raises(AirflowFailException, match="ended CANCELLED"):
        operator.execute_complete(context, event)
    for pid in pids:
        wait_for(lambda pid=pid: not alive(pid), what=f"process {pid} to end")


def test_killing_the_deferred_task_cancels_the_job(aws_conn, cluster, context, unique, run_trigger):
    """A user marks the deferred task failed: Airflow calls the trigger's on_kill in the triggerer."""
    import asyncio

    job_key = unique("ftp-kill-deferred")
    operator = submit(cluster, job_key, "--sleep", "60")
    trigger = defer(operator, context).trigger
    wait_for(lambda: (state_of(cluster, job_key) or {}).get("state") == "RUNNING", what="the job to run")
    asyncio.run(trigger.on_kill())
    event = run_trigger(trigger, timeout=60)
    assert event["state"]["state"] == "CANCELLED"


def test_more_nodes_than_the_cluster_has_fails_the_job(aws_conn, cluster, context, unique, run_trigger):
    """sbatch refuses 3 nodes on a cluster of 2 compute nodes, as slurmctld does: the agent reports FAILED."""
    job_key = unique("ftp-too-big")
    operator = submit(cluster, job_key, nodes=3)
    with pytest.raises(AirflowFailException, match="Requested node configuration is not available"):
        operator.execute_complete(context, run_trigger(defer(operator, context).trigger, timeout=60))
    assert sbatch_calls(cluster["server"], cluster["arn"], job_key) == []


def test_a_retry_after_the_spec_was_written_runs_one_slurm_job(aws_conn, cluster, context, unique, run_trigger):
    """The first try is killed right after its PUT (while deferred); the retry finds the spec and waits on it."""
    job_key = unique("ftp-retry")
    defer(submit(cluster, job_key), context)  # the killed try: it wrote the spec, then died
    retry = submit(cluster, job_key)
    event = run_trigger(defer(retry, context).trigger, timeout=60)
    assert retry.execute_complete(context, event)["state"] == "COMPLETED"
    assert retry.execute(context)["state"] == "COMPLETED"  # a later retry returns the ended job at once
    assert len(sbatch_calls(cluster["server"], cluster["arn"], job_key)) == 1


@pytest.mark.parametrize("mode", ["error", "drop"])
def test_a_lost_answer_to_the_put_still_runs_one_job(aws_conn, cluster, context, unique, run_trigger, faults, mode):
    job_key = unique("ftp-lost")
    faults({"service": "s3", "operation": "PutObject", "kind": "lost_response", "mode": mode, "limit": 1})
    operator = submit(cluster, job_key)
    try:
        # botocore sent the PUT again, got 412, found its own spec. A dropped connection's retry can take
        # long enough for the job to end before the operator looks: it then returns the ended job at once.
        result = operator.execute(context)
    except TaskDeferred as deferred:
        result = operator.execute_complete(context, run_trigger(deferred.trigger, timeout=60))
    injected = control.get_faults(cluster["server"].endpoint_url)["injected"]
    assert injected == {"s3.PutObject.lost_response": 1}
    assert result["state"] == "COMPLETED"
    assert len(sbatch_calls(cluster["server"], cluster["arn"], job_key)) == 1


def test_the_agent_restarted_submits_nothing_twice(aws_conn, cluster, context, unique, run_trigger):
    job_key = unique("ftp-agent")
    operator = submit(cluster, job_key, "--sleep", "1")
    deferred = defer(operator, context)
    wait_for(lambda: state_of(cluster, job_key), what="the agent to take the job")
    restart_agent(cluster)
    event = run_trigger(deferred.trigger, timeout=60)
    assert operator.execute_complete(context, event)["state"] == "COMPLETED"
    assert len(sbatch_calls(cluster["server"], cluster["arn"], job_key)) == 1


# Helpers on the controller node's folder


def controller_dir(cluster):
    root = cluster["server"].app.nodes.root
    (agent,) = [p for p in root.glob("i-*/fsx/finetune-jobs/.job-agent") if p.exists()
                and cluster["jobs_uri"] in (p / "job_agent.json").read_text()]  # fmt: skip
    return agent.parents[2]


def job_folder(cluster, job_key: str):
    return controller_dir(cluster) / "fsx" / "finetune-jobs" / job_key


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = f"/proc/{pid}/stat"
    return not (os.path.exists(stat) and open(stat).read().split(") ", 1)[1].startswith("Z"))


def restart_agent(cluster) -> None:
    """Kill the agent (SIGKILL, as a crash) and run OnCreate again, which starts it as the node's boot would."""
    import signal
    import subprocess

    home = controller_dir(cluster)
    agent = home / "fsx" / "finetune-jobs" / ".job-agent"
    pid = int((agent / "job_agent.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), what="the agent to die")
    # What the node's own processes have (localaws ends a node's processes by its LOCALAWS_NODE_ID).
    environment = {**os.environ, "HOME": str(home), "LOCALAWS_NODE_ID": home.name,
                   "PATH": f"{home / '.localaws-bin'}:{os.environ['PATH']}",
                   "SAGEMAKER_RESOURCE_CONFIG_PATH": str(home / "opt/ml/config/resource_config.json"),
                   "PROVISION_LOG": str(home / "var/log/provision/provisioning.log"),
                   "AWS_ENDPOINT_URL": cluster["server"].endpoint_url,
                   "AWS_ACCESS_KEY_ID": "localaws", "AWS_SECRET_ACCESS_KEY": "localaws"}  # fmt: skip
    subprocess.run(["/bin/bash", "./on_create.sh"], cwd=home / "lifecycle", env=environment, check=True,
                   start_new_session=True, capture_output=True)  # fmt: skip
    wait_for(lambda: int((agent / "job_agent.pid").read_text()) != pid, what="a new agent")
