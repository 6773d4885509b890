"""
Fine-tuning on SageMaker HyperPod: ensure the Slurm cluster, then submit a job to it and wait for its end.

The submission travels through S3, not SSM: ``SendCommand`` refuses HyperPod nodes (its model allows only
``i-``/``mi-`` instance IDs; the ``sagemaker-cluster:<id>_<group>-<instance>`` targets of HyperPod nodes work
only for Session Manager's interactive ``StartSession``, see
https://docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-hyperpod-run-jobs-slurm-access-nodes.html), and a
HyperPod Slurm cluster has no job API of its own. The lifecycle scripts install a job agent on the
controller (``include/scripts/hyperpod/job_agent.py``); Airflow writes the job spec to S3 once, with a
conditional PUT, the agent runs it with ``sbatch`` and writes the job's state back, and Airflow waits on
that state, deferred. The layout is in ``finetune_pipeline.aws.utils.hyperpod_jobs``.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils import validate_execute_complete_event
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.sdk import Context, conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from finetune_pipeline.aws.hooks.s3_objects import S3ObjectHook
from finetune_pipeline.aws.hooks.sagemaker_hyperpod import HyperPodHook
from finetune_pipeline.aws.triggers.sagemaker_hyperpod import (
    HyperPodClusterInServiceTrigger,
    HyperPodJobCompleteTrigger,
)
from finetune_pipeline.aws.utils.hyperpod_jobs import (
    FAILED_STATES,
    SUCCESS_STATE,
    HyperPodJobStore,
    decode_record,
    encode_spec,
)
from finetune_pipeline.aws.utils.retries import create_once
from finetune_pipeline.aws.utils.waits import defer_or_wait, trigger_arguments

# The execution role's managed policy (AmazonSageMakerClusterInstanceRolePolicy) only reads buckets
# named sagemaker-*, and the CreateCluster docs require lifecycle scripts to live there.
LIFECYCLE_URI_PREFIX = "s3://sagemaker-"
# Two conditional PUTs racing on one key: the loser may get 409 ConditionalRequestConflict; S3 says retry.
CONFLICT_ATTEMPTS = 5
# The job key names S3 objects and the Slurm job (sbatch --job-name), so it keeps to characters safe in both.
JOB_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


class HyperPodEnsureClusterOperator(AwsBaseOperator[HyperPodHook]):
    """
    Return a HyperPod (Slurm) cluster's ARN, creating it only if none has this name; wait until InService.

    Each instance group needs ``InstanceGroupName``, ``InstanceType`` and ``InstanceCount``; the operator
    fills in ``LifeCycleConfig`` (``lifecycle_s3_uri`` + ``lifecycle_on_create``), ``ExecutionRole`` and
    ``ThreadsPerCore`` (1) where a group does not set them. An existing cluster is reused as it is;
    a ``Failed`` one fails the task without retries, a ``Deleting`` one fails this try.

    The name is unique in the account and Region, so a ``CreateCluster`` that botocore sends again after
    its answer was lost cannot make a second cluster: AWS refuses it (``ResourceInUse``). That refusal, like
    any other error of the create, sends the operator to look for the cluster by name before failing.

    :param cluster_name: The cluster name (the idempotency key).
    :param instance_groups: ``ClusterInstanceGroupSpecification`` dicts, e.g. a controller and a worker group.
    :param execution_role_arn: IAM role of the cluster's instances.
    :param lifecycle_s3_uri: S3 folder with the lifecycle scripts; must start with ``s3://sagemaker-``.
    :param lifecycle_on_create: The script in that folder run when a node is created.
    :param vpc_config: Optional ``VpcConfig`` (security groups, subnets).
    :param tags: Tags of a new cluster (templated). Creating with tags needs ``sagemaker:AddTags`` too.
    :param create_cluster_kwargs: Further ``CreateCluster`` arguments.
    :param wait_for_completion: Wait until the cluster is ``InService``.
    :param deferrable: Wait in the triggerer. Defaults to ``[operators] default_deferrable``.
    :param waiter_delay: Seconds between status checks.
    :param waiter_max_attempts: Status checks before giving up.
    """

    aws_hook_class = HyperPodHook
    template_fields: Sequence[str] = aws_template_fields(
        "cluster_name", "instance_groups", "execution_role_arn", "lifecycle_s3_uri", "vpc_config", "tags"
    )
    template_fields_renderers = {"instance_groups": "json", "vpc_config": "json"}

    def __init__(
        self,
        *,
        cluster_name: str,
        instance_groups: list[dict[str, Any]],
        execution_role_arn: str,
        lifecycle_s3_uri: str,
        lifecycle_on_create: str = "on_create.sh",
        vpc_config: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        create_cluster_kwargs: dict[str, Any] | None = None,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        waiter_delay: float = 60,
        waiter_max_attempts: int = 120,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cluster_name = cluster_name
        self.instance_groups = instance_groups
        self.execution_role_arn = execution_role_arn
        self.lifecycle_s3_uri = lifecycle_s3_uri
        self.lifecycle_on_create = lifecycle_on_create
        self.vpc_config = vpc_config
        self.tags = tags
        self.create_cluster_kwargs = create_cluster_kwargs or {}
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.waiter_delay = waiter_delay
        self.waiter_max_attempts = waiter_max_attempts

    def _instance_groups(self) -> list[dict[str, Any]]:
        if not self.lifecycle_s3_uri.startswith(LIFECYCLE_URI_PREFIX):
            raise AirflowFailException(
                f"lifecycle_s3_uri {self.lifecycle_s3_uri!r} must start with {LIFECYCLE_URI_PREFIX!r}: "
                "HyperPod "
                "instances can only read lifecycle scripts from buckets named sagemaker-*. Upload them there."
            )
        if not self.instance_groups:
            raise AirflowFailException(
                f"HyperPod cluster {self.cluster_name} needs at least one instance group."
            )
        groups, names = [], set()
        for group in self.instance_groups:
            missing = [
                key for key in ("InstanceGroupName", "InstanceType", "InstanceCount") if not group.get(key)
            ]
            if missing:
                raise AirflowFailException(f"Instance group {group!r} lacks {', '.join(missing)}.")
            if group["InstanceGroupName"] in names:
                raise AirflowFailException(
                    f"Instance group name {group['InstanceGroupName']!r} is used twice."
                )
            names.add(group["InstanceGroupName"])
            lifecycle = {"SourceS3Uri": self.lifecycle_s3_uri, "OnCreate": self.lifecycle_on_create}
            groups.append(
                {
                    "LifeCycleConfig": lifecycle,
                    "ExecutionRole": self.execution_role_arn,
                    # 1 is valid for every instance type; a group sets 2 to turn on multithreading.
                    "ThreadsPerCore": 1,
                    **group,
                    "InstanceCount": int(group["InstanceCount"]),
                }
            )
        return groups

    def execute(self, context: Context) -> str:
        cluster = self.hook.find_cluster(self.cluster_name)
        if cluster is None:
            groups = self._instance_groups()
            # botocore's retries stay on: the unique name makes a repeated create a refusal, not a twin.
            arn = create_once(
                lambda: self.hook.create_cluster(
                    self.cluster_name,
                    groups,
                    vpc_config=self.vpc_config,
                    tags=[{"Key": k, "Value": v} for k, v in (self.tags or {}).items()],
                    **self.create_cluster_kwargs,
                ),
                lambda: (self.hook.find_cluster(self.cluster_name) or {}).get("ClusterArn"),
                what=f"the HyperPod cluster {self.cluster_name}",
                log=self.log,
            )
            self.log.info("Creating HyperPod cluster %s (%s).", self.cluster_name, arn)
            cluster = self.hook.describe_cluster(self.cluster_name)
        arn, status = cluster["ClusterArn"], cluster["ClusterStatus"]
        self.log.info("HyperPod cluster %s (%s) is %s.", self.cluster_name, arn, status)
        reason = f": {cluster['FailureMessage']}" if cluster.get("FailureMessage") else ""
        if status in HyperPodHook.FAILED_STATES:
            # A Failed cluster stays Failed: retrying only finds it again.
            raise AirflowFailException(
                f"HyperPod cluster {self.cluster_name} is {status}{reason}. "
                "Delete it, then retry to create it again."
            )
        if status in HyperPodHook.GONE_STATES:
            raise RuntimeError(
                f"HyperPod cluster {self.cluster_name} is {status}{reason}. "
                "Wait until it is deleted, then retry to create it again."
            )
        if status == HyperPodHook.IN_SERVICE_STATE or not self.wait_for_completion:
            return arn
        trigger = HyperPodClusterInServiceTrigger(cluster_name=self.cluster_name, **trigger_arguments(self))
        return defer_or_wait(self, context, trigger, kwargs={"cluster_arn": arn})

    def execute_complete(
        self, context: Context, event: dict[str, Any] | None = None, cluster_arn: str | None = None
    ) -> str:
        event = validate_execute_complete_event(event)
        if event.get("status") != "success":
            raise AirflowException(
                f"Waiting for HyperPod cluster {self.cluster_name} failed: {event.get('message')}"
            )
        return cluster_arn or self.hook.describe_cluster(self.cluster_name)["ClusterArn"]


class HyperPodDeleteClusterOperator(AwsBaseOperator[HyperPodHook]):
    """
    Delete a HyperPod cluster, only if it carries every tag of ``only_if_tags``; return its ARN if it did.

    Made for a teardown task: with the tag that the ensuring task gave the cluster it created (e.g. the run's
    id), a cluster that existed before the run, or that another run created, is never deleted. A cluster
    that is gone or already ``Deleting`` is left as it is, so a retry after a lost answer sends nothing
    twice. ``DeleteCluster`` is asynchronous: the cluster is ``Deleting`` when this returns, and SageMaker
    terminates its instances.

    :param cluster_name: The cluster name (templated).
    :param only_if_tags: Tags the cluster must carry to be deleted (templated); empty: delete it regardless.
    """

    aws_hook_class = HyperPodHook
    template_fields: Sequence[str] = aws_template_fields("cluster_name", "only_if_tags")

    def __init__(self, *, cluster_name: str, only_if_tags: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cluster_name = cluster_name
        self.only_if_tags = only_if_tags or {}

    def execute(self, context: Context) -> str | None:
        cluster = self.hook.find_cluster(self.cluster_name)
        if cluster is None:
            self.log.info("HyperPod cluster %s does not exist: nothing to delete.", self.cluster_name)
            return None
        arn, status = cluster["ClusterArn"], cluster["ClusterStatus"]
        if status in HyperPodHook.GONE_STATES:
            self.log.info("HyperPod cluster %s (%s) is already %s.", self.cluster_name, arn, status)
            return arn
        tags = self.hook.list_tags(arn) if self.only_if_tags else {}
        differing = sorted(key for key, value in self.only_if_tags.items() if tags.get(key) != value)
        if differing:
            self.log.info(
                "HyperPod cluster %s (%s) is kept: its tags %s are not %s.",
                self.cluster_name, arn, {key: tags.get(key) for key in differing},
                {key: self.only_if_tags[key] for key in differing},
            )  # fmt: skip
            return None
        self.hook.delete_cluster(self.cluster_name)
        self.log.info("Deleting HyperPod cluster %s (%s); SageMaker terminates its instances.", self.cluster_name, arn)
        return arn


class HyperPodSubmitJobOperator(AwsBaseOperator[HyperPodHook]):
    """
    Run a job on a HyperPod (Slurm) cluster through its job agent, and wait until it has ended.

    Writes the job spec to ``<jobs_uri>/jobs/<job_key>.json`` with ``PutObject(IfNoneMatch="*")`` (S3
    conditional writes: https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html). The
    job agent on the controller (installed by the lifecycle scripts) downloads the code bundle to shared
    storage and submits ``sbatch`` running ``srun --auto-resume=1 <command>`` on ``nodes`` nodes, then
    keeps ``<jobs_uri>/state/<job_key>.json`` up to date. The operator waits on that state, deferred or in
    the worker, and returns the state record once the job is ``COMPLETED``; ``FAILED`` or ``CANCELLED`` fail
    the task with the tail of the job's log.

    Exactly one job per key. S3 answers a second write of the key with 412 PreconditionFailed: a retry of
    this task, another try running at once, or botocore sending the PUT again after its answer was lost
    (then the 412 answers the operator's own first write). Each reads the spec that is there: the same spec
    is this job, already submitted; a different one under this key fails the task without retries. The
    agent, for its part, submits each spec once (see its docstring). A job that ended stays ended: running
    it again takes a new key.

    ``on_kill`` writes ``<jobs_uri>/cancel/<job_key>``; the agent then cancels the Slurm job (``scancel``).

    :param cluster_name: The HyperPod cluster (its status and node counts are logged while the job waits).
    :param job_key: Identifies the job across retries: the spec's name and the Slurm job name
        ([A-Za-z0-9._-], at most 80).
    :param entrypoint: The program in the bundle, relative to its root, e.g. ``train.py``.
    :param jobs_uri: ``s3://bucket/prefix`` the cluster's job agent polls (its ``job_agent.json``). Required
        (checked when the task runs).
    :param bundle_uri: ``s3://`` URI of the code bundle (a zip) the job runs from. Required (checked when the
        task runs).
    :param entrypoint_args: Its arguments (templated). ``{job_dir}`` stands for the job's folder on the
        cluster's shared storage (also ``$JOB_DIR``), e.g. ``["--checkpoint-dir", "{job_dir}/checkpoints"]``:
        checkpoints there survive the node replacement after which ``--auto-resume`` re-runs the step.
    :param interpreter: What runs the entrypoint under ``srun``; ``None`` runs the entrypoint itself.
    :param env: Environment variables of the job.
    :param nodes: Slurm nodes for the job (``srun`` starts one task on each).
    :param time_limit_minutes: The job's Slurm time limit (``sbatch --time``).
    :param sbatch_args: Further ``sbatch`` options, e.g. ``["--gpus-per-node=8"]``.
    :param installed_modules: Python modules whose import means the node already has what the bundle's
        ``requirements.txt`` lists; without them, the job installs it first.
    :param controller_group: Instance group of the Slurm controller, where the job agent runs (the
        ``controller_group`` of its ``job_agent.json``); a cluster without this group fails the wait.
    :param wait_for_completion: Wait until the job has ended; otherwise return once the spec is written.
    :param deferrable: Wait in the triggerer. Defaults to ``[operators] default_deferrable``.
    :param waiter_delay: Seconds between state polls.
    :param waiter_max_attempts: State polls before giving up.
    """

    aws_hook_class = HyperPodHook
    template_fields: Sequence[str] = aws_template_fields(
        "cluster_name",
        "job_key",
        "jobs_uri",
        "bundle_uri",
        "entrypoint",
        "entrypoint_args",
        "env",
        "nodes",
        "time_limit_minutes",
        "sbatch_args",
    )
    template_fields_renderers = {"env": "json"}

    def __init__(
        self,
        *,
        cluster_name: str,
        job_key: str,
        entrypoint: str,
        jobs_uri: str | None = None,
        bundle_uri: str | None = None,
        entrypoint_args: Sequence[str] | None = None,
        interpreter: str | None = "python3",
        env: dict[str, str] | None = None,
        nodes: int = 1,
        time_limit_minutes: int = 24 * 60,
        sbatch_args: Sequence[str] | None = None,
        installed_modules: Sequence[str] | None = None,
        controller_group: str = "controller-machine",
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        waiter_delay: float = 30,
        waiter_max_attempts: int = 2880,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cluster_name = cluster_name
        self.job_key = job_key
        self.jobs_uri = jobs_uri
        self.bundle_uri = bundle_uri
        self.entrypoint = entrypoint
        self.entrypoint_args = entrypoint_args or []
        self.interpreter = interpreter
        self.env = env or {}
        self.nodes = nodes
        self.time_limit_minutes = time_limit_minutes
        self.sbatch_args = sbatch_args or []
        self.installed_modules = installed_modules or []
        self.controller_group = controller_group
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.waiter_delay = waiter_delay
        self.waiter_max_attempts = waiter_max_attempts
        self.submitted = False  # the spec is in S3: on_kill has a job to cancel

    @cached_property
    def s3_hook(self) -> S3ObjectHook:
        return S3ObjectHook(**self._hook_parameters)

    @property
    def store(self) -> HyperPodJobStore:
        return HyperPodJobStore(self.jobs_uri)

    def job_spec(self) -> dict[str, Any]:
        """The spec the agent runs (``finetune_pipeline.aws.utils.hyperpod_jobs``); checked here, once."""
        if not JOB_KEY_PATTERN.match(self.job_key):
            raise AirflowFailException(
                f"job_key {self.job_key!r} must be 1-80 characters of letters, digits, '.', '_' or '-' "
                "(it names the job's S3 objects and its Slurm job)."
            )
        for name in ("jobs_uri", "bundle_uri"):
            try:
                HyperPodJobStore(getattr(self, name) or "").bucket  # noqa: B018 - parses the URI
            except ValueError as error:
                raise AirflowFailException(f"HyperPod job {self.job_key}: {name} {error}.") from None
        nodes, minutes = int(self.nodes), int(self.time_limit_minutes)
        if nodes < 1 or minutes < 1:
            raise AirflowFailException(
                f"HyperPod job {self.job_key} needs nodes >= 1 and time_limit_minutes >= 1 "
                f"(got {nodes} and {minutes})."
            )
        if not self.entrypoint or self.entrypoint.startswith("/") or ".." in self.entrypoint.split("/"):
            raise AirflowFailException(
                f"entrypoint {self.entrypoint!r} must be a path inside the bundle, e.g. 'train.py'."
            )
        command = [self.interpreter] if self.interpreter else []
        command += [self.entrypoint, *(str(arg) for arg in self.entrypoint_args)]
        return {
            "job_key": self.job_key,
            "bundle_uri": self.bundle_uri,
            "command": command,
            "env": {str(k): str(v) for k, v in self.env.items()},
            "nodes": nodes,
            "time_limit_minutes": minutes,
            "sbatch_args": [str(arg) for arg in self.sbatch_args],
            "installed_modules": [str(name) for name in self.installed_modules],
        }

    def submit(self, spec: dict[str, Any]) -> bool:
        """
        Write the spec once; return whether this call wrote it (``False``: it was there, the same spec).

        412 PreconditionFailed: a spec exists under this key. It is read and compared: the same spec is this
        job (written by an earlier try, or by this very call before botocore sent it again); another is an
        error no retry fixes. 409 ConditionalRequestConflict (a concurrent write of the key) is retried.
        """
        body, key = encode_spec(spec), self.store.spec_key(self.job_key)
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                self.s3_hook.put_object(
                    self.store.bucket, key, body, if_none_match=True, ContentType="application/json"
                )
                return True
            except Exception as error:
                code = S3ObjectHook.error_code(error)
                if code == S3ObjectHook.CONDITIONAL_CONFLICT and attempt < CONFLICT_ATTEMPTS:
                    time.sleep(random.uniform(0, 2 ** (attempt - 1)))
                    continue
                if code != S3ObjectHook.PRECONDITION_FAILED:
                    raise
            existing = decode_record(self.s3_hook.get_object_body(self.store.bucket, key))
            if existing == spec:
                return False
            raise AirflowFailException(
                f"s3://{self.store.bucket}/{key} holds another spec for job {self.job_key}: "
                f"{existing!r} is there, this task would run {spec!r}. Give this job another job_key, "
                "or delete that spec (and its state) if no job ran from it."
            )
        raise AssertionError("unreachable")  # the loop returns or raises

    def read_state(self) -> dict[str, Any] | None:
        body = self.s3_hook.get_object_body(self.store.bucket, self.store.state_key(self.job_key))
        return decode_record(body)

    def execute(self, context: Context) -> dict[str, Any]:
        spec = self.job_spec()
        wrote = self.submit(spec)
        self.submitted = True
        self.log.info(
            "%s job %s: s3://%s/%s (bundle %s, %d node(s)); the job agent on cluster %s runs it with sbatch.",
            "Submitted" if wrote else "Already submitted",
            self.job_key,
            self.store.bucket,
            self.store.spec_key(self.job_key),
            self.bundle_uri,
            spec["nodes"],
            self.cluster_name,
        )
        state = self.read_state()
        if state and state.get("state") in FAILED_STATES | {SUCCESS_STATE}:
            self.log.info("Job %s has already ended: %s.", self.job_key, state.get("state"))
            return self.execute_complete(context, {"status": "success", "job_key": self.job_key, "state": state})
        if not self.wait_for_completion:
            return state or {"job_key": self.job_key, "state": None}
        trigger = HyperPodJobCompleteTrigger(
            cluster_name=self.cluster_name,
            job_key=self.job_key,
            jobs_uri=self.jobs_uri,
            controller_group=self.controller_group,
            **trigger_arguments(self),
        )
        return defer_or_wait(self, context, trigger)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        event = validate_execute_complete_event(event)
        state = event.get("state") or {}
        if state.get("state") == SUCCESS_STATE:
            self.log.info("HyperPod job %s COMPLETED (Slurm job %s).", self.job_key, state.get("slurm_job_id"))
            return state
        if state.get("state") in FAILED_STATES:
            tail = "\n".join(state.get("log_tail") or []) or "(the job wrote no output)"
            self.log.error("Last lines of HyperPod job %s's log:\n%s", self.job_key, tail)
            # A job that ended stays ended under its key: a retry would only read this state again.
            raise AirflowFailException(
                f"HyperPod job {self.job_key} ended {state['state']} (Slurm job {state.get('slurm_job_id')}, "
                f"exit code {state.get('exit_code')}): {state.get('reason') or 'no reason given'}.\n"
                f"Last lines of its log:\n{tail}"
            )
        raise AirflowException(f"Waiting for HyperPod job {self.job_key} failed: {event.get('message')}")

    def on_kill(self) -> None:
        """Ask the agent to cancel the job (``cancel/<job_key>``); best effort, never raises."""
        if not self.submitted:
            return
        try:
            self.s3_hook.put_object(self.store.bucket, self.store.cancel_key(self.job_key), b"")
            self.log.info("Asked the job agent to cancel HyperPod job %s.", self.job_key)
        except Exception:
            self.log.exception("Could not ask the job agent to cancel HyperPod job %s.", self.job_key)
