"""Fine-tuning on SageMaker HyperPod: ensure the Slurm cluster, then submit a job to it over SSM."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils import validate_execute_complete_event
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.sdk import Context, conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from botocore.exceptions import ClientError

from finetune_pipeline.aws.hooks.sagemaker_hyperpod import HyperPodHook
from finetune_pipeline.aws.hooks.ssm import SsmCommandHook
from finetune_pipeline.aws.triggers.sagemaker_hyperpod import HyperPodClusterInServiceTrigger
from finetune_pipeline.aws.triggers.ssm import SsmCommandInvocationSucceededTrigger
from finetune_pipeline.aws.utils.retries import create_once
from finetune_pipeline.aws.utils.waits import defer_or_wait, trigger_arguments

# The execution role's managed policy (AmazonSageMakerClusterInstanceRolePolicy) only reads buckets
# named sagemaker-*, and the CreateCluster docs require lifecycle scripts to live there.
LIFECYCLE_URI_PREFIX = "s3://sagemaker-"
JOB_COMMENT_PREFIX = "finetune-job:"
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
    :param tags: Tags of a new cluster.
    :param create_cluster_kwargs: Further ``CreateCluster`` arguments.
    :param wait_for_completion: Wait until the cluster is ``InService``.
    :param deferrable: Wait in the triggerer. Defaults to ``[operators] default_deferrable``.
    :param waiter_delay: Seconds between status checks.
    :param waiter_max_attempts: Status checks before giving up.
    """

    aws_hook_class = HyperPodHook
    template_fields: Sequence[str] = aws_template_fields(
        "cluster_name", "instance_groups", "execution_role_arn", "lifecycle_s3_uri", "vpc_config"
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


def build_submit_script(
    *,
    job_key: str,
    entrypoint: str,
    entrypoint_args: Sequence[str] = (),
    interpreter: str = "python3",
    nodes: int = 1,
    sbatch_args: Sequence[str] = (),
    working_directory: str | None = None,
    slurm_user: str | None = None,
) -> str:
    """
    The shell script run on the Slurm controller: submit ``entrypoint`` with ``sbatch`` under the job name
    ``job_key``, unless a job of that name is already queued or running (then print its ID and stop).
    """
    srun = shlex.join(["srun", interpreter, entrypoint, *entrypoint_args])
    sbatch = ["sbatch", "--parsable", "--job-name", job_key, "--nodes", str(int(nodes))]
    if working_directory:
        sbatch += ["--chdir", working_directory]
    sbatch += [*sbatch_args, "--wrap", srun]
    name = shlex.quote(job_key)
    script = "\n".join(
        [
            "set -eu",
            f'existing="$(squeue --noheader --name {name} --format %i)"',
            f'if [ -n "$existing" ]; then echo "Slurm job {name} already queued: $existing"; exit 0; fi',
            shlex.join(sbatch),
        ]
    )
    if slurm_user:
        return shlex.join(["sudo", "-u", slurm_user, "-i", "bash", "-c", script])
    return script


class HyperPodSubmitJobOperator(AwsBaseOperator[HyperPodHook]):
    """
    Submit a training job to a HyperPod cluster's Slurm controller over SSM Run Command; return the command.

    The controller is found with ``ListClusterNodes``; the command targets the SSM ID
    ``sagemaker-cluster:<cluster-id>_<controller_group>-<instance-id>`` and runs ``sbatch`` (see
    ``build_submit_script``). Idempotent twice over: an SSM command of this job key (in its ``Comment``)
    that did not fail is reused instead of sending another, and the script itself skips ``sbatch`` if a
    Slurm job with this name is queued or running. The wait ends when ``sbatch`` has queued the job.

    ``SendCommand`` takes no client token, so it is sent once, without botocore's retries, and after any
    error the command is looked for by its comment before another is sent. If tries that ran at once sent
    two, the oldest is kept and the others are cancelled while they have not finished (the script's own
    ``squeue`` check covers one that already ran).

    :param cluster_name: The HyperPod cluster.
    :param job_key: Identifies the job across retries; also the Slurm job name ([A-Za-z0-9._-], <= 80).
    :param entrypoint: Path of the training entrypoint on the cluster's shared file system.
    :param entrypoint_args: Arguments of the entrypoint (templated).
    :param interpreter: Program that runs the entrypoint under ``srun``.
    :param nodes: Slurm nodes for the job.
    :param sbatch_args: Further ``sbatch`` options, e.g. ``["--gpus-per-node", "8"]``.
    :param controller_group: Instance group of the Slurm controller.
    :param working_directory: ``sbatch --chdir``.
    :param slurm_user: Submit as this Linux user on the controller (SSM runs commands as root).
    :param command_timeout_seconds: Seconds the SSM command may run (``executionTimeout`` of
        ``AWS-RunShellScript``). Not the task's ``execution_timeout``, which stays BaseOperator's.
    :param wait_for_completion: Wait until the command has finished.
    :param deferrable: Wait in the triggerer. Defaults to ``[operators] default_deferrable``.
    :param waiter_delay: Seconds between status checks.
    :param waiter_max_attempts: Status checks before giving up.
    """

    aws_hook_class = HyperPodHook
    template_fields: Sequence[str] = aws_template_fields(
        "cluster_name", "job_key", "entrypoint", "entrypoint_args", "sbatch_args", "nodes"
    )

    def __init__(
        self,
        *,
        cluster_name: str,
        job_key: str,
        entrypoint: str,
        entrypoint_args: Sequence[str] | None = None,
        interpreter: str = "python3",
        nodes: int = 1,
        sbatch_args: Sequence[str] | None = None,
        controller_group: str = "controller-machine",
        working_directory: str | None = None,
        slurm_user: str | None = None,
        command_timeout_seconds: int = 3600,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        waiter_delay: float = 15,
        waiter_max_attempts: int = 240,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cluster_name = cluster_name
        self.job_key = job_key
        self.entrypoint = entrypoint
        self.entrypoint_args = entrypoint_args or []
        self.interpreter = interpreter
        self.nodes = nodes
        self.sbatch_args = sbatch_args or []
        self.controller_group = controller_group
        self.working_directory = working_directory
        self.slurm_user = slurm_user
        self.command_timeout_seconds = command_timeout_seconds
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.waiter_delay = waiter_delay
        self.waiter_max_attempts = waiter_max_attempts

    @cached_property
    def ssm_hook(self) -> SsmCommandHook:
        return SsmCommandHook(**self._hook_parameters)

    def controller_target(self) -> str:
        """The SSM target ID of the cluster's (first running) Slurm controller node."""
        cluster_arn = self.hook.describe_cluster(self.cluster_name)["ClusterArn"]
        # All nodes, not just the group's: if the group is wrong, the error can name the groups there are.
        nodes = self.hook.list_cluster_nodes(self.cluster_name)
        running = sorted(
            node["InstanceId"]
            for node in nodes
            if node["InstanceGroupName"] == self.controller_group
            and node.get("InstanceStatus", {}).get("Status") == "Running"
        )
        if not running:
            seen = sorted(
                {f"{n['InstanceGroupName']}:{n.get('InstanceStatus', {}).get('Status')}" for n in nodes}
            )
            raise RuntimeError(
                f"HyperPod cluster {self.cluster_name} has no running node in instance group "
                f"{self.controller_group!r} (nodes seen: {seen or 'none'}). Check controller_group."
            )
        return (
            f"sagemaker-cluster:{HyperPodHook.cluster_id(cluster_arn)}_{self.controller_group}-{running[0]}"
        )

    def _previous_command(self, target: str, comment: str) -> dict[str, Any] | None:
        """The oldest command of this job that did not fail; later duplicates are cancelled if unfinished."""
        commands = [c for c in self.ssm_hook.list_commands(instance_id=target) if c.get("Comment") == comment]
        live = sorted(
            (c for c in commands if c["Status"] not in SsmCommandHook.FAILED_STATES),
            key=lambda c: (c["RequestedDateTime"], c["CommandId"]),
        )
        for failed in (c for c in commands if c["Status"] in SsmCommandHook.FAILED_STATES):
            self.log.info(
                "Earlier SSM command %s for job %s ended %s.",
                failed["CommandId"],
                self.job_key,
                failed["Status"],
            )
        if not live:
            return None
        keep = live[0]
        for duplicate in live[1:]:
            if duplicate["Status"] not in SsmCommandHook.UNFINISHED_STATES:
                self.log.warning(
                    "SSM command %s duplicated %s (job %s) and already ran; the submit script skips sbatch "
                    "for a job already queued.",
                    duplicate["CommandId"],
                    keep["CommandId"],
                    self.job_key,
                )
                continue
            try:
                self.ssm_hook.cancel_command(duplicate["CommandId"])
            except ClientError:
                # Best-effort: it may have just finished, and the script's squeue check still holds.
                self.log.exception("Could not cancel SSM command %s, a duplicate.", duplicate["CommandId"])
                continue
            self.log.warning(
                "Cancelled SSM command %s: a duplicate of %s (job %s).",
                duplicate["CommandId"],
                keep["CommandId"],
                self.job_key,
            )
        return keep

    def execute(self, context: Context) -> str:
        if not JOB_KEY_PATTERN.match(self.job_key):
            raise AirflowFailException(
                f"job_key {self.job_key!r} must be 1-80 characters of letters, digits, '.', '_' or '-' "
                "(it is the Slurm job name and part of the SSM command comment)."
            )
        target = self.controller_target()
        comment = f"{JOB_COMMENT_PREFIX}{self.job_key}"
        command = self._previous_command(target, comment)
        if command:
            self.log.info(
                "Reusing SSM command %s (%s) for job %s.",
                command["CommandId"],
                command["Status"],
                self.job_key,
            )
        else:
            script = build_submit_script(
                job_key=self.job_key,
                entrypoint=self.entrypoint,
                entrypoint_args=[str(arg) for arg in self.entrypoint_args],
                interpreter=self.interpreter,
                nodes=self.nodes,
                sbatch_args=[str(arg) for arg in self.sbatch_args],
                working_directory=self.working_directory,
                slurm_user=self.slurm_user,
            )
            command = create_once(
                lambda: self.ssm_hook.send_command(
                    InstanceIds=[target],
                    DocumentName="AWS-RunShellScript",
                    Comment=comment,
                    Parameters={
                        "commands": [script],
                        "executionTimeout": [str(int(self.command_timeout_seconds))],
                    },
                ),
                lambda: self._previous_command(target, comment),
                what=f"the SSM command that submits job {self.job_key}",
                log=self.log,
            )
            # Another try may have sent one at the same moment: settle on the oldest.
            command = self._previous_command(target, comment) or command
            self.log.info(
                "Sent SSM command %s to %s: submit job %s.", command["CommandId"], target, self.job_key
            )
        command_id = command["CommandId"]
        if command["Status"] == SsmCommandHook.SUCCESS_STATE or not self.wait_for_completion:
            return command_id
        trigger = SsmCommandInvocationSucceededTrigger(
            command_id=command_id, instance_id=target, **trigger_arguments(self)
        )
        return defer_or_wait(self, context, trigger, hook=self.ssm_hook)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> str:
        event = validate_execute_complete_event(event)
        if event.get("status") != "success":
            # An "error" event: the invocation ended Failed, Cancelled or TimedOut, or the attempts ran out.
            raise AirflowException(f"Submitting HyperPod job {self.job_key} failed: {event.get('message')}")
        return event["command_id"]
