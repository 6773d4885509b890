from __future__ import annotations

import os
import stat
import subprocess
from datetime import timedelta

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred

from finetune_pipeline.aws.hooks.sagemaker_hyperpod import HyperPodHook
from finetune_pipeline.aws.hooks.ssm import SsmCommandHook
from finetune_pipeline.aws.operators.sagemaker_hyperpod import (
    HyperPodEnsureClusterOperator,
    HyperPodSubmitJobOperator,
    build_submit_script,
)
from finetune_pipeline.aws.triggers.sagemaker_hyperpod import HyperPodClusterInServiceTrigger
from finetune_pipeline.aws.triggers.ssm import SsmCommandInvocationSucceededTrigger

ROLE_ARN = "arn:aws:iam::123456789012:role/finetune-hyperpod-exec"
LIFECYCLE_URI = "s3://sagemaker-ftp-lifecycle/scripts"
GROUPS = [
    {"InstanceGroupName": "controller", "InstanceType": "ml.t3.medium", "InstanceCount": 1},
    {"InstanceGroupName": "workers", "InstanceType": "ml.g5.2xlarge", "InstanceCount": 2},
]
FAST = {"waiter_delay": 0.01, "waiter_max_attempts": 2000}


@pytest.fixture
def hook(aws_conn) -> HyperPodHook:
    return HyperPodHook(aws_conn_id=aws_conn)


def ensure(name: str, **overrides) -> HyperPodEnsureClusterOperator:
    arguments = {
        "task_id": "cluster",
        "cluster_name": name,
        "instance_groups": GROUPS,
        "execution_role_arn": ROLE_ARN,
        "lifecycle_s3_uri": LIFECYCLE_URI,
    }
    return HyperPodEnsureClusterOperator(**{**arguments, **overrides})


# HyperPodEnsureClusterOperator


def test_ensure_cluster_creates_once_and_waits_in_the_worker(hook, context, unique, fast_clock, timing):
    name = unique("hp")
    # Creating lasts cluster_creating virtual seconds: ~0.1 s of real time while the worker blocks.
    fast_clock(timing["hyperpod"]["cluster_creating"] * 10)
    arn = ensure(name, tags={"project": "ftp"}, deferrable=False, **FAST).execute(context)
    assert hook.describe_cluster(name)["ClusterStatus"] == "InService"
    assert ensure(name, deferrable=False).execute(context) == arn  # the retry reuses it
    assert [s["ClusterArn"] for s in hook.list_clusters(name_contains=name)] == [arn]
    cluster = hook.describe_cluster(name)
    for group in cluster["InstanceGroups"]:
        assert group["LifeCycleConfig"] == {"SourceS3Uri": LIFECYCLE_URI, "OnCreate": "on_create.sh"}
        assert group["ExecutionRole"] == ROLE_ARN
    assert {g["InstanceGroupName"]: g["TargetCount"] for g in cluster["InstanceGroups"]} == {
        "controller": 1,
        "workers": 2,
    }


def test_ensure_cluster_defers_until_in_service(hook, context, unique, advance_clock, timing, run_trigger):
    name = unique("hp")
    operator = ensure(name, deferrable=True, **FAST)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    assert hook.describe_cluster(name)["ClusterStatus"] == "Creating"
    trigger = deferred.value.trigger
    assert isinstance(trigger, HyperPodClusterInServiceTrigger)
    classpath, kwargs = trigger.serialize()  # what the triggerer stores and rebuilds
    rebuilt = HyperPodClusterInServiceTrigger(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    event = run_trigger(rebuilt, during=lambda: advance_clock(timing["hyperpod"]["cluster_creating"]))
    arn = operator.execute_complete(context, event, **deferred.value.kwargs)
    assert arn == hook.describe_cluster(name)["ClusterArn"]
    assert ensure(name, deferrable=True).execute(context) == arn  # in service now: no second deferral


def test_ensure_cluster_without_waiting(hook, context, unique):
    name = unique("hp")
    arn = ensure(name, wait_for_completion=False).execute(context)
    assert hook.describe_cluster(name)["ClusterStatus"] == "Creating"
    assert ensure(name, wait_for_completion=False).execute(context) == arn


def test_ensure_cluster_refuses_a_cluster_being_deleted(hook, context, unique):
    name = unique("hp")
    ensure(name, wait_for_completion=False).execute(context)
    hook.delete_cluster(name)
    with pytest.raises(RuntimeError, match=f"HyperPod cluster {name} is Deleting"):
        ensure(name).execute(context)


def test_ensure_cluster_fails_without_retry_on_a_failed_cluster(hook, context, unique, monkeypatch):
    name = unique("hp")
    ensure(name, wait_for_completion=False).execute(context)
    operator = ensure(name)
    # localaws never fails a cluster: the description is real, only its status is one AWS can give.
    failed = {**hook.describe_cluster(name), "ClusterStatus": "Failed", "FailureMessage": "No capacity"}
    monkeypatch.setattr(operator.hook, "find_cluster", lambda _: failed)
    with pytest.raises(AirflowFailException, match=f"HyperPod cluster {name} is Failed: No capacity. Delete"):
        operator.execute(context)


def test_ensure_cluster_keeps_a_groups_own_settings(hook, context, unique):
    name = unique("hp")
    own = {"SourceS3Uri": "s3://sagemaker-other/scripts", "OnCreate": "gpu.sh"}
    groups = [{**GROUPS[0], "LifeCycleConfig": own, "ThreadsPerCore": 2}]
    ensure(name, instance_groups=groups, wait_for_completion=False).execute(context)
    group = hook.describe_cluster(name)["InstanceGroups"][0]
    assert group["LifeCycleConfig"] == own and group["ThreadsPerCore"] == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lifecycle_s3_uri": "s3://finetune-demo-data/lifecycle"}, "must start with 's3://sagemaker-'"),
        ({"instance_groups": []}, "needs at least one instance group"),
        (
            {"instance_groups": [{"InstanceGroupName": "c", "InstanceType": "ml.t3.medium"}]},
            "lacks InstanceCount",
        ),
        ({"instance_groups": [GROUPS[0], GROUPS[0]]}, "'controller' is used twice"),
    ],
)
def test_ensure_cluster_rejects_bad_input(context, unique, overrides, message):
    with pytest.raises(AirflowFailException, match=message):
        ensure(unique("hp"), **overrides).execute(context)


@pytest.mark.parametrize("mode", ["error", "drop"])
def test_ensure_cluster_whose_answer_is_lost_creates_one(hook, context, unique, faults, mode):
    """botocore sends CreateCluster again; AWS refuses the name as taken, and the operator finds the cluster."""
    name = unique("hp")
    faults({"service": "sagemaker", "operation": "CreateCluster", "kind": "lost_response", "mode": mode, "limit": 1})
    arn = ensure(name, wait_for_completion=False).execute(context)
    assert [s["ClusterArn"] for s in hook.list_clusters(name_contains=name)] == [arn]


def test_ensure_cluster_refused_as_invalid_fails_without_retry(context, unique):
    groups = [{"InstanceGroupName": "controller", "InstanceType": "ml.no-such-type", "InstanceCount": 1}]
    with pytest.raises(AirflowFailException, match="ValidationException"):
        ensure(unique("hp"), instance_groups=groups).execute(context)


def test_ensure_cluster_execute_complete(context, unique):
    name = unique("hp")
    operator = ensure(name)
    event = {"status": "success", "cluster_name": name}
    assert operator.execute_complete(context, event, cluster_arn="arn:c") == "arn:c"
    with pytest.raises(AirflowException, match=f"Waiting for HyperPod cluster {name} failed: .*Failed"):
        operator.execute_complete(
            context, {"status": "error", "message": "did not come into service: Failed"}
        )


# build_submit_script


@pytest.fixture
def fake_slurm(tmp_path):
    """``squeue`` and ``sbatch`` stand-ins on PATH: sbatch records its arguments, squeue lists QUEUED."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "sbatch.args"
    scripts = {
        "squeue": '#!/bin/sh\n[ -n "${QUEUED:-}" ] && echo "$QUEUED"\nexit 0\n',
        "sbatch": f'#!/bin/sh\nfor a in "$@"; do echo "$a"; done > {record}\necho 4242\n',
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir, record


def run_script(script: str, bin_dir, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **env}
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=environment, check=True)


def test_submit_script_submits_with_sbatch(fake_slurm):
    bin_dir, record = fake_slurm
    script = build_submit_script(
        job_key="ftp-v3",
        entrypoint="/fsx/finetune/train.py",
        entrypoint_args=["--dataset-uri", "s3://b/d v3"],
        nodes=2,
        sbatch_args=["--gpus-per-node", "8"],
        working_directory="/fsx/finetune",
    )
    assert run_script(script, bin_dir).stdout.strip() == "4242"
    assert record.read_text().splitlines() == [
        "--parsable",
        "--job-name",
        "ftp-v3",
        "--nodes",
        "2",
        "--chdir",
        "/fsx/finetune",
        "--gpus-per-node",
        "8",
        "--wrap",
        "srun python3 /fsx/finetune/train.py --dataset-uri 's3://b/d v3'",
    ]


def test_submit_script_skips_a_job_already_queued(fake_slurm):
    bin_dir, record = fake_slurm
    result = run_script(build_submit_script(job_key="ftp-v3", entrypoint="/t.py"), bin_dir, QUEUED="4242")
    assert "Slurm job ftp-v3 already queued: 4242" in result.stdout
    assert not record.exists()


def test_submit_script_runs_as_another_user():
    script = build_submit_script(job_key="ftp-v3", entrypoint="/t.py", slurm_user="ubuntu")
    assert script.startswith("sudo -u ubuntu -i bash -c ")
    subprocess.run(["sh", "-n", "-c", script], check=True)  # parses as shell


# HyperPodSubmitJobOperator


@pytest.fixture
def cluster(context, unique, advance_clock, timing) -> str:
    """An InService cluster (its controller node Running); returns its name."""
    name = unique("hp")
    ensure(name, wait_for_completion=False).execute(context)
    advance_clock(timing["hyperpod"]["cluster_creating"])
    return name


@pytest.fixture
def frozen_clock(fast_clock):
    """Hold SSM commands where they are until the test moves the clock."""
    fast_clock(0)


def submit(cluster: str, job_key: str, **overrides) -> HyperPodSubmitJobOperator:
    arguments = {
        "task_id": "submit",
        "cluster_name": cluster,
        "job_key": job_key,
        "controller_group": "controller",
        "entrypoint": "/fsx/finetune/train.py",
        "entrypoint_args": ["--dataset-version", "v3"],
        "wait_for_completion": False,
        **FAST,
    }
    return HyperPodSubmitJobOperator(**{**arguments, **overrides})


def controller_target(hook: HyperPodHook, cluster: str) -> str:
    controller = hook.list_cluster_nodes(cluster, instance_group_name_contains="controller")[0]["InstanceId"]
    cluster_id = HyperPodHook.cluster_id(hook.describe_cluster(cluster)["ClusterArn"])
    return f"sagemaker-cluster:{cluster_id}_controller-{controller}"


def test_submit_targets_the_controller_and_is_idempotent(aws_conn, hook, cluster, context, unique):
    job_key = unique("ftp-train")
    command_id = submit(cluster, job_key, command_timeout_seconds=900).execute(context)
    assert submit(cluster, job_key).execute(context) == command_id  # the retry sends nothing new

    commands = SsmCommandHook(aws_conn_id=aws_conn).list_commands(
        instance_id=controller_target(hook, cluster)
    )
    assert [(c["CommandId"], c["Comment"]) for c in commands] == [(command_id, f"finetune-job:{job_key}")]
    (script,) = commands[0]["Parameters"]["commands"]
    assert (
        f"--job-name {job_key}" in script
        and "srun python3 /fsx/finetune/train.py --dataset-version v3" in script
    )
    assert commands[0]["Parameters"]["executionTimeout"] == ["900"]
    assert commands[0]["DocumentName"] == "AWS-RunShellScript"


@pytest.mark.parametrize("mode", ["error", "drop"])
def test_submit_whose_answer_is_lost_sends_one_command(aws_conn, hook, cluster, context, unique, faults, mode):
    job_key = unique("ftp-train")
    faults({"service": "ssm", "operation": "SendCommand", "kind": "lost_response", "mode": mode})
    command_id = submit(cluster, job_key).execute(context)
    commands = SsmCommandHook(aws_conn_id=aws_conn).list_commands(instance_id=controller_target(hook, cluster))
    assert [c["CommandId"] for c in commands if c["Comment"] == f"finetune-job:{job_key}"] == [command_id]


def test_submit_sends_again_after_a_refusal(aws_conn, hook, cluster, context, unique, faults):
    job_key = unique("ftp-train")
    faults({"service": "ssm", "operation": "SendCommand", "kind": "throttle", "limit": 2})
    command_id = submit(cluster, job_key).execute(context)
    commands = SsmCommandHook(aws_conn_id=aws_conn).list_commands(instance_id=controller_target(hook, cluster))
    assert [c["CommandId"] for c in commands if c["Comment"] == f"finetune-job:{job_key}"] == [command_id]


def test_submit_keeps_the_oldest_of_duplicates_and_cancels_the_rest(
    aws_conn, hook, cluster, context, unique, frozen_clock, advance_clock
):
    job_key = unique("ftp-train")
    ssm = SsmCommandHook(aws_conn_id=aws_conn)
    target = controller_target(hook, cluster)

    def send() -> str:
        return ssm.send_command(
            InstanceIds=[target], DocumentName="AWS-RunShellScript", Comment=f"finetune-job:{job_key}",
            Parameters={"commands": ["true"]},
        )["CommandId"]

    first = send()
    advance_clock(1)
    second = send()
    assert submit(cluster, job_key).execute(context) == first
    statuses = {c["CommandId"]: c["Status"] for c in ssm.list_commands(instance_id=target)}
    assert (statuses[first], statuses[second]) == ("Pending", "Cancelled")


def test_submit_waits_in_the_worker(aws_conn, cluster, context, unique, fast_clock, timing):
    fast_clock((timing["ssm"]["command_pending"] + timing["ssm"]["command_in_progress"]) * 20)
    command_id = submit(cluster, unique("ftp-train"), wait_for_completion=True, deferrable=False).execute(
        context
    )
    statuses = {c["CommandId"]: c["Status"] for c in SsmCommandHook(aws_conn_id=aws_conn).list_commands()}
    assert statuses[command_id] == "Success"


def test_submit_defers_until_the_command_has_run(
    aws_conn, hook, cluster, context, unique, frozen_clock, advance_clock, timing, run_trigger
):
    operator = submit(cluster, unique("ftp-train"), wait_for_completion=True, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, SsmCommandInvocationSucceededTrigger)
    classpath, kwargs = trigger.serialize()
    assert kwargs["aws_conn_id"] == "aws_default"
    assert kwargs["instance_id"] == controller_target(hook, cluster)
    rebuilt = SsmCommandInvocationSucceededTrigger(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    ssm = timing["ssm"]
    event = run_trigger(
        rebuilt, during=lambda: advance_clock(ssm["command_pending"] + ssm["command_in_progress"])
    )
    assert operator.execute_complete(context, event) == kwargs["command_id"]


def test_submit_fails_when_the_command_is_cancelled(
    aws_conn, cluster, context, unique, frozen_clock, run_trigger
):
    job_key = unique("ftp-train")
    operator = submit(cluster, job_key, wait_for_completion=True, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    command_id = deferred.value.trigger.serialize()[1]["command_id"]
    ssm = SsmCommandHook(aws_conn_id=aws_conn).conn
    event = run_trigger(deferred.value.trigger, during=lambda: ssm.cancel_command(CommandId=command_id))
    assert event["status"] == "error" and event["command_id"] == command_id
    with pytest.raises(AirflowException, match=f"Submitting HyperPod job {job_key} failed: .*not succeed"):
        operator.execute_complete(context, event)


def test_submit_needs_a_running_controller(context, unique):
    name = unique("hp")
    ensure(name, wait_for_completion=False).execute(context)  # Creating: every node is still Pending
    with pytest.raises(
        RuntimeError, match=r"no running node in instance group 'controller'.*controller:Pending"
    ):
        submit(name, "ftp-x").execute(context)


def test_submit_another_job_key_sends_another_command(cluster, context, unique):
    assert submit(cluster, unique("ftp-a")).execute(context) != submit(cluster, unique("ftp-b")).execute(
        context
    )


def test_submit_names_the_missing_controller_group(cluster, context):
    with pytest.raises(RuntimeError, match=r"no running node in instance group 'head'.*controller:Running"):
        submit(cluster, "ftp-x", controller_group="head").execute(context)


def test_submit_rejects_a_bad_job_key(cluster, context):
    with pytest.raises(AirflowFailException, match="job_key 'bad key!' must be"):
        submit(cluster, "bad key!").execute(context)


def test_submit_execute_complete(context):
    operator = submit("hp", "ftp-x")
    assert operator.execute_complete(context, {"status": "success", "command_id": "c-1"}) == "c-1"
    failed = {
        "status": "error",
        "command_id": "c-1",
        "message": "SSM command c-1 on i-1 did not succeed: Waiter encountered a terminal failure state",
    }
    with pytest.raises(AirflowException, match="Submitting HyperPod job ftp-x failed: .*terminal failure"):
        operator.execute_complete(context, failed)


def test_task_arguments_keep_their_base_operator_meaning():
    """``execution_timeout`` and ``run_as_user`` belong to BaseOperator; the job's own are named otherwise."""
    with DAG("hyperpod_args", schedule=None, default_args={"execution_timeout": timedelta(hours=2)}):
        operator = submit("hp", "ftp-x", command_timeout_seconds=600, slurm_user="ubuntu")
        plain = submit("hp", "ftp-y", task_id="plain")
    assert operator.execution_timeout == timedelta(hours=2)
    assert plain.execution_timeout == timedelta(hours=2)
    assert operator.run_as_user is None and operator.slurm_user == "ubuntu"
    assert operator.command_timeout_seconds == 600
    assert submit("hp", "ftp-z").execution_timeout is None
