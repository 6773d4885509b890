from __future__ import annotations

import json
from datetime import timedelta

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred
from botocore.exceptions import ClientError
from hyperpod_helpers import upload_trivial_lifecycle, wait_for

from finetune_pipeline.aws.hooks.sagemaker_hyperpod import HyperPodHook
from finetune_pipeline.aws.operators.sagemaker_hyperpod import (
    HyperPodDeleteClusterOperator,
    HyperPodEnsureClusterOperator,
    HyperPodSubmitJobOperator,
)
from finetune_pipeline.aws.triggers.sagemaker_hyperpod import (
    HyperPodClusterInServiceTrigger,
    HyperPodJobCompleteTrigger,
)

ROLE_ARN = "arn:aws:iam::123456789012:role/finetune-hyperpod-exec"
LIFECYCLE_URI = "s3://sagemaker-ftp-lifecycle/scripts"
GROUPS = [
    {"InstanceGroupName": "controller", "InstanceType": "ml.t3.medium", "InstanceCount": 1},
    {"InstanceGroupName": "workers", "InstanceType": "ml.g5.2xlarge", "InstanceCount": 2},
]
FAST = {"waiter_delay": 0.01, "waiter_max_attempts": 2000}


@pytest.fixture(autouse=True)
def _lifecycle_scripts(boto_client):
    """An OnCreate that exits 0 where the clusters' LifeCycleConfig points (a missing one fails a cluster)."""
    upload_trivial_lifecycle(boto_client("s3"), LIFECYCLE_URI)


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


def test_delete_cluster_deletes_only_a_cluster_with_the_given_tags(hook, context, unique):
    name = unique("hp")
    arn = ensure(name, tags={"created-by-run": "run-1"}, wait_for_completion=False).execute(context)
    other_run = HyperPodDeleteClusterOperator(task_id="delete", cluster_name=name,
                                              only_if_tags={"created-by-run": "run-2"})  # fmt: skip
    assert other_run.execute(context) is None
    assert hook.describe_cluster(name)["ClusterStatus"] == "Creating"  # not its run's: kept
    creator = HyperPodDeleteClusterOperator(task_id="delete", cluster_name=name,
                                            only_if_tags={"created-by-run": "run-1"})  # fmt: skip
    assert creator.execute(context) == arn
    assert hook.describe_cluster(name)["ClusterStatus"] == "Deleting"
    assert creator.execute(context) == arn  # a retry: already Deleting, nothing sent again


def test_delete_cluster_of_a_cluster_that_does_not_exist_does_nothing(context, unique):
    assert HyperPodDeleteClusterOperator(task_id="delete", cluster_name=unique("hp")).execute(context) is None


def test_ensure_cluster_fails_without_retry_on_a_failed_cluster(hook, context, unique, boto_client):
    name = unique("hp")
    upload_trivial_lifecycle(boto_client("s3"), LIFECYCLE_URI, "fails.sh", "#!/bin/bash\nexit 1\n")
    group = {**GROUPS[0], "LifeCycleConfig": {"SourceS3Uri": LIFECYCLE_URI, "OnCreate": "fails.sh"},
             "ExecutionRole": ROLE_ARN}  # fmt: skip
    hook.create_cluster(name, [group])
    wait_for(lambda: hook.describe_cluster(name)["ClusterStatus"] == "Failed", what="the cluster to fail")
    failed = rf"HyperPod cluster {name} is Failed: Instance i-\w+ failed to provision .*Delete it"
    with pytest.raises(AirflowFailException, match=failed):
        ensure(name).execute(context)


def test_ensure_cluster_keeps_a_groups_own_settings(hook, context, unique, boto_client):
    name = unique("hp")
    upload_trivial_lifecycle(boto_client("s3"), "s3://sagemaker-other/scripts", "gpu.sh")
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


# HyperPodSubmitJobOperator (the job agent's side is simulated here by writing its state objects; the agent
# itself runs in tests/aws/test_hyperpod_submission.py)


@pytest.fixture
def cluster(context, unique, advance_clock, timing) -> str:
    """An InService cluster (its controller node Running); returns its name."""
    name = unique("hp")
    ensure(name, wait_for_completion=False).execute(context)
    advance_clock(timing["hyperpod"]["cluster_creating"])
    return name


@pytest.fixture
def jobs(boto_client, bucket):
    """The jobs bucket: ``jobs.spec(key)``, ``jobs.state(key, ...)`` write or read what the agent would."""
    s3 = boto_client("s3")

    class Jobs:
        uri = f"s3://{bucket}/hyperpod"

        def spec(self, job_key: str) -> dict:
            return json.loads(s3.get_object(Bucket=bucket, Key=f"hyperpod/jobs/{job_key}.json")["Body"].read())

        def state(self, job_key: str, state: str, **fields) -> None:
            record = {"job_key": job_key, "state": state, "slurm_job_id": "7", "exit_code": None, "reason": None,
                      "log_tail": [], "updated": "2026-01-01T00:00:00Z", **fields}  # fmt: skip
            s3.put_object(Bucket=bucket, Key=f"hyperpod/state/{job_key}.json", Body=json.dumps(record).encode())

        def cancelled(self, job_key: str) -> bool:
            listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"hyperpod/cancel/{job_key}")
            return listing.get("KeyCount", 0) == 1

    return Jobs()


def submit(cluster: str, job_key: str, jobs_uri: str = "s3://b/hyperpod", **overrides) -> HyperPodSubmitJobOperator:
    arguments = {
        "task_id": "submit",
        "cluster_name": cluster,
        "job_key": job_key,
        "jobs_uri": jobs_uri,
        "bundle_uri": "s3://code-bucket/code/abc123/training.zip",
        "controller_group": "controller",
        "entrypoint": "train.py",
        "entrypoint_args": ["--dataset-version", "v3"],
        "wait_for_completion": False,
        **FAST,
    }
    return HyperPodSubmitJobOperator(**{**arguments, **overrides})


def test_submit_writes_the_spec_once(cluster, context, unique, jobs):
    job_key = unique("ftp-train")
    operator = submit(cluster, job_key, jobs.uri, nodes=2, env={"SEED": 1}, sbatch_args=["--gpus-per-node=8"],
                      time_limit_minutes=90, installed_modules=["boto3", "numpy"])  # fmt: skip
    assert operator.execute(context) == {"job_key": job_key, "state": None}
    assert jobs.spec(job_key) == {
        "job_key": job_key,
        "bundle_uri": "s3://code-bucket/code/abc123/training.zip",
        "command": ["python3", "train.py", "--dataset-version", "v3"],
        "env": {"SEED": "1"},
        "nodes": 2,
        "time_limit_minutes": 90,
        "sbatch_args": ["--gpus-per-node=8"],
        "installed_modules": ["boto3", "numpy"],
    }
    again = submit(cluster, job_key, jobs.uri, nodes=2, env={"SEED": 1}, sbatch_args=["--gpus-per-node=8"],
                   time_limit_minutes=90, installed_modules=["boto3", "numpy"])  # fmt: skip
    assert again.execute(context) == {"job_key": job_key, "state": None}  # the retry: 412, the same spec


def test_another_spec_under_the_same_key_fails_without_retry(cluster, context, unique, jobs):
    job_key = unique("ftp-train")
    submit(cluster, job_key, jobs.uri).execute(context)
    with pytest.raises(AirflowFailException, match=f"holds another spec for job {job_key}"):
        submit(cluster, job_key, jobs.uri, entrypoint_args=["--dataset-version", "v4"]).execute(context)
    assert jobs.spec(job_key)["command"][-1] == "v3"  # the first spec stands


@pytest.mark.parametrize("mode", ["error", "drop"])
def test_a_lost_answer_to_the_put_is_the_operators_own_spec(cluster, context, unique, jobs, faults, mode):
    """botocore sends the PUT again; S3 answers 412 for the operator's own first write: that is success."""
    job_key = unique("ftp-train")
    faults({"service": "s3", "operation": "PutObject", "kind": "lost_response", "mode": mode, "limit": 1})
    assert submit(cluster, job_key, jobs.uri).execute(context)["job_key"] == job_key
    assert jobs.spec(job_key)["job_key"] == job_key


def test_a_conditional_write_conflict_is_tried_again(cluster, context, unique, jobs, monkeypatch):
    operator = submit(cluster, unique("ftp-train"), jobs.uri)
    real, calls = operator.s3_hook.put_object, []

    def conflict_once(*args, **kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise ClientError({"Error": {"Code": "ConditionalRequestConflict", "Message": "409"}}, "PutObject")
        return real(*args, **kwargs)

    monkeypatch.setattr(operator.s3_hook, "put_object", conflict_once)
    monkeypatch.setattr("finetune_pipeline.aws.operators.sagemaker_hyperpod.time.sleep", lambda _: None)
    operator.execute(context)
    assert len(calls) == 2 and all(call["if_none_match"] for call in calls)


def test_submit_defers_until_the_job_ends(cluster, context, unique, jobs, run_trigger):
    job_key = unique("ftp-train")
    operator = submit(cluster, job_key, jobs.uri, wait_for_completion=True, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, HyperPodJobCompleteTrigger)
    classpath, kwargs = trigger.serialize()
    assert kwargs["aws_conn_id"] == "aws_default" and kwargs["jobs_uri"] == jobs.uri
    rebuilt = HyperPodJobCompleteTrigger(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    event = run_trigger(rebuilt, during=lambda: jobs.state(job_key, "COMPLETED", exit_code=0))
    assert operator.execute_complete(context, event)["state"] == "COMPLETED"


def test_submit_waits_in_the_worker(cluster, context, unique, jobs):
    job_key = unique("ftp-train")
    operator = submit(cluster, job_key, jobs.uri, wait_for_completion=True, deferrable=False, waiter_max_attempts=3)
    jobs.state(job_key, "RUNNING")
    with pytest.raises(AirflowException, match=f"HyperPod job {job_key} did not end within 3 polls.*RUNNING"):
        operator.execute(context)
    jobs.state(job_key, "COMPLETED", exit_code=0)
    assert operator.execute(context)["state"] == "COMPLETED"  # an ended job is returned without waiting


def test_a_failed_job_fails_the_task_with_its_log_tail(cluster, context, unique, jobs):
    job_key = unique("ftp-train")
    jobs.state(job_key, "FAILED", exit_code=1, reason="the job exited 1", log_tail=["step 3", "ValueError: nan"])
    with pytest.raises(AirflowFailException, match="ended FAILED .*exit code 1.*the job exited 1") as failed:
        submit(cluster, job_key, jobs.uri).execute(context)
    assert str(failed.value).endswith("Last lines of its log:\nstep 3\nValueError: nan")


def test_on_kill_asks_the_agent_to_cancel(cluster, context, unique, jobs):
    job_key = unique("ftp-train")
    operator = submit(cluster, job_key, jobs.uri)
    operator.on_kill()  # nothing submitted yet: nothing to cancel
    assert not jobs.cancelled(job_key)
    operator.execute(context)
    operator.on_kill()
    assert jobs.cancelled(job_key)


def test_on_kill_never_raises(cluster, context, unique, jobs, monkeypatch):
    operator = submit(cluster, unique("ftp-train"), jobs.uri)
    operator.execute(context)

    def broken(*args, **kwargs):
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "PutObject")

    monkeypatch.setattr(operator.s3_hook, "put_object", broken)
    operator.on_kill()  # logged, not raised: the kill's own reason stays the task's


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"job_key": "bad key!"}, "job_key 'bad key!' must be"),
        ({"jobs_uri": None}, "jobs_uri '' is not an s3://bucket/prefix URI"),
        ({"bundle_uri": "/fsx/training.zip"}, "bundle_uri '/fsx/training.zip' is not an s3://"),
        ({"nodes": 0}, "needs nodes >= 1"),
        ({"time_limit_minutes": 0}, "time_limit_minutes >= 1"),
        ({"entrypoint": "/fsx/finetune/train.py"}, "must be a path inside the bundle"),
        ({"entrypoint": "../train.py"}, "must be a path inside the bundle"),
    ],
)
def test_submit_rejects_bad_input(context, overrides, message):
    with pytest.raises(AirflowFailException, match=message):
        submit("hp", overrides.pop("job_key", "ftp-x"), **overrides).execute(context)


def test_submit_execute_complete(context):
    operator = submit("hp", "ftp-x")
    record = {"job_key": "ftp-x", "state": "COMPLETED", "slurm_job_id": "3", "exit_code": 0}
    assert operator.execute_complete(context, {"status": "success", "state": record}) == record
    cancelled = {**record, "state": "CANCELLED", "exit_code": None, "reason": "cancelled (scancel)"}
    with pytest.raises(AirflowFailException, match="ended CANCELLED"):
        operator.execute_complete(context, {"status": "error", "state": cancelled})
    with pytest.raises(AirflowException, match="Waiting for HyperPod job ftp-x failed: .*cluster hp is Failed"):
        operator.execute_complete(context, {"status": "error", "state": None,
                                            "message": "HyperPod cluster hp is Failed"})  # fmt: skip


def test_task_arguments_keep_their_base_operator_meaning():
    """``execution_timeout`` belongs to BaseOperator; the job's own limit is named otherwise."""
    with DAG("hyperpod_args", schedule=None, default_args={"execution_timeout": timedelta(hours=2)}):
        operator = submit("hp", "ftp-x", time_limit_minutes=600)
    assert operator.execution_timeout == timedelta(hours=2)
    assert operator.time_limit_minutes == 600
    assert submit("hp", "ftp-z").execution_timeout is None
