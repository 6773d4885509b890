"""Launch EC2 instances that run one fine-tuning job from their user data, exactly once per task run."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.providers.amazon.aws.hooks.ec2 import EC2Hook
from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils import validate_execute_complete_event
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.sdk import Context, conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from botocore.exceptions import ClientError

from finetune_pipeline.aws.triggers.ec2 import Ec2InstancesRunningTrigger
from finetune_pipeline.aws.utils.retries import create_once
from finetune_pipeline.aws.utils.waits import defer_or_wait, trigger_arguments

# Tag carrying the launch token, so a retry finds what the first try launched (DescribeInstances by tag).
LAUNCH_TOKEN_TAG = "finetune-pipeline:launch-token"
# Set on instances before this operator terminates them (on_kill, failed wait). Our user data terminates an
# instance when training ends, so a terminated instance without this tag means the job finished.
ABORTED_TAG = "finetune-pipeline:aborted"
GONE_STATES = frozenset({"shutting-down", "terminated"})
PLACEHOLDER = re.compile(r"\{\{([A-Z][A-Z0-9_]*)\}\}")
# A task run may relaunch after everything it launched was terminated; each relaunch takes the next token.
MAX_GENERATIONS = 100


def launch_token_base(dag_id: str, task_id: str, run_id: str, map_index: int) -> str:
    """Deterministic per task run (not per try), so every try of the run derives the same tokens."""
    return hashlib.sha256(f"{dag_id}|{task_id}|{run_id}|{map_index}".encode()).hexdigest()[:56]


def render_user_data(text: str, variables: dict[str, Any]) -> str:
    """Replace ``{{NAME}}`` placeholders; every placeholder must get a value."""
    missing = sorted(set(PLACEHOLDER.findall(text)) - set(variables))
    if missing:
        raise ValueError(
            f"User data placeholders without a value in user_data_variables: {', '.join(missing)}."
        )
    return PLACEHOLDER.sub(lambda match: str(variables[match.group(1)]), text)


class Ec2LaunchTrainingInstancesOperator(AwsBaseOperator[EC2Hook]):
    """
    Launch training instances (``RunInstances``) once per task run and return their IDs; wait until running.

    A retry never launches twice: the instances carry a launch token derived from the task run (as the
    ``ClientToken`` and as a tag), and a retry first looks them up by that tag and reuses any that are not
    terminated. Within a try, botocore may send ``RunInstances`` again after a lost answer: with the same
    ``ClientToken`` EC2 returns the first reservation instead of launching again. ``on_kill`` and a failed
    wait tag what this operator launched as aborted, then terminate it (best-effort; the original error is
    kept). Only a set that is all gone and was aborted makes a retry
    launch again, with the next token. The user data terminates an instance when training ends, so a set
    that is gone without the aborted tag has finished: it is returned and nothing is launched, and a wait
    that sees such instances terminated succeeds.

    :param image_id: AMI ID.
    :param instance_type: e.g. ``g5.2xlarge``.
    :param user_data_path: Script run at boot (templated path); ``{{NAME}}`` placeholders in it are filled
        from ``user_data_variables``.
    :param user_data_variables: Values of the user data placeholders (templated).
    :param instance_profile: IAM instance profile name or ARN.
    :param subnet_id: Subnet to launch into.
    :param security_group_ids: Security groups.
    :param key_name: SSH key pair name.
    :param tags: Tags for the instances (the launch token tag is added).
    :param min_count: Minimum number of instances.
    :param max_count: Maximum number of instances.
    :param shutdown_behavior: ``InstanceInitiatedShutdownBehavior``; ``terminate`` so a finished job frees it.
    :param run_instances_kwargs: Further ``RunInstances`` arguments.
    :param terminate_on_failure: Terminate the launched instances if they fail to reach ``running``.
    :param wait_for_completion: Wait until every instance is ``running``.
    :param deferrable: Wait in the triggerer. Defaults to ``[operators] default_deferrable``.
    :param waiter_delay: Seconds between status checks.
    :param waiter_max_attempts: Status checks before giving up.
    """

    aws_hook_class = EC2Hook
    template_fields: Sequence[str] = aws_template_fields(
        "image_id", "instance_type", "user_data_path", "user_data_variables", "instance_profile", "tags"
    )

    def __init__(
        self,
        *,
        image_id: str,
        instance_type: str,
        user_data_path: str | None = None,
        user_data_variables: dict[str, Any] | None = None,
        instance_profile: str | None = None,
        subnet_id: str | None = None,
        security_group_ids: list[str] | None = None,
        key_name: str | None = None,
        tags: dict[str, str] | None = None,
        min_count: int = 1,
        max_count: int = 1,
        shutdown_behavior: str = "terminate",
        run_instances_kwargs: dict[str, Any] | None = None,
        terminate_on_failure: bool = True,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        waiter_delay: float = 15,
        waiter_max_attempts: int = 40,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.image_id = image_id
        self.instance_type = instance_type
        self.user_data_path = user_data_path
        self.user_data_variables = user_data_variables or {}
        self.instance_profile = instance_profile
        self.subnet_id = subnet_id
        self.security_group_ids = security_group_ids
        self.key_name = key_name
        self.tags = tags or {}
        self.min_count = min_count
        self.max_count = max_count
        self.shutdown_behavior = shutdown_behavior
        self.run_instances_kwargs = run_instances_kwargs or {}
        self.terminate_on_failure = terminate_on_failure
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.waiter_delay = waiter_delay
        self.waiter_max_attempts = waiter_max_attempts
        self._launched_instance_ids: list[str] = []

    @property
    def _hook_parameters(self) -> dict[str, Any]:
        return {**super()._hook_parameters, "api_type": "client_type"}

    def _run_instances_arguments(self, token: str) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "ImageId": self.image_id,
            "InstanceType": self.instance_type,
            "MinCount": int(self.min_count),
            "MaxCount": int(self.max_count),
            "ClientToken": token,
            "InstanceInitiatedShutdownBehavior": self.shutdown_behavior,
            "TagSpecifications": [
                {
                    "ResourceType": "instance",
                    "Tags": [
                        {"Key": k, "Value": str(v)} for k, v in {**self.tags, LAUNCH_TOKEN_TAG: token}.items()
                    ],
                }
            ],
        }
        if self.user_data_path:
            path = Path(self.user_data_path)
            if not path.is_file():
                raise FileNotFoundError(f"User data script {path} does not exist.")
            arguments["UserData"] = render_user_data(path.read_text(), self.user_data_variables)
        if self.instance_profile:
            key = "Arn" if self.instance_profile.startswith("arn:") else "Name"
            arguments["IamInstanceProfile"] = {key: self.instance_profile}
        if self.subnet_id:
            arguments["SubnetId"] = self.subnet_id
        if self.security_group_ids:
            arguments["SecurityGroupIds"] = self.security_group_ids
        if self.key_name:
            arguments["KeyName"] = self.key_name
        return {**arguments, **self.run_instances_kwargs}

    def _launch(self, token: str) -> list[dict[str, Any]]:
        """``RunInstances`` with ``token`` as its ``ClientToken``; botocore may retry it (the token dedups)."""
        try:
            return self.hook.conn.run_instances(**self._run_instances_arguments(token))["Instances"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "IdempotentParameterMismatch":
                raise
            raise AirflowFailException(
                f"EC2 refused launch token {token}: an earlier try of this task run launched with other "
                "RunInstances parameters (image, instance type, user data, tags, ...), which changed since. "
                "Terminate that try's instances (tag finetune-pipeline:aborted=true marks them as aborted) or "
                "start a new DAG run."
            ) from error

    def _with_token(self, token: str) -> list[dict[str, Any]]:
        return self.hook.get_instances(filters=[{"Name": f"tag:{LAUNCH_TOKEN_TAG}", "Values": [token]}])

    def _find_or_launch(self, base: str) -> tuple[list[str], bool]:
        """Return the instance IDs of this task run and whether its training already finished."""
        for generation in range(MAX_GENERATIONS):
            token = f"{base}-{generation}"
            found = self._with_token(token)
            live = sorted(i["InstanceId"] for i in found if i["State"]["Name"] not in GONE_STATES)
            if live:
                self.log.info("Reusing EC2 instances %s launched by an earlier try (token %s).", live, token)
                return live, False
            if any(_aborted(i) for i in found):
                self.log.info(
                    "Instances of token %s were terminated by this operator; launching with the next token.",
                    token,
                )
                continue
            if found:
                ended = sorted(i["InstanceId"] for i in found)
                self.log.info(
                    "EC2 instances %s (token %s) ended on their own: their training job already finished. "
                    "Launching nothing.",
                    ended,
                    token,
                )
                return ended, True
            instances = create_once(
                functools.partial(self._launch, token),
                lambda token=token: self._with_token(token) or None,
                what=f"EC2 instances with launch token {token}",
                log=self.log,
            )
            launched = sorted(instance["InstanceId"] for instance in instances)
            self.log.info("Launched EC2 instances %s (%s, token %s).", launched, self.instance_type, token)
            return launched, False
        raise AirflowFailException(
            f"This task run already launched and aborted {MAX_GENERATIONS} sets of instances; giving up."
        )

    def _finished_after_failed_wait(self, instance_ids: list[str]) -> bool:
        """
        Whether a failed ``instance_running`` wait only saw the job end (``DescribeInstances``).

        The waiter fails on any terminated instance, but one our user data terminated got past ``running``
        and trained; every instance must be ``running`` or gone without the aborted tag.
        """
        if not instance_ids:  # DescribeInstances without IDs would describe every instance
            return False
        instances = self.hook.get_instances(instance_ids=instance_ids)
        states = {i["InstanceId"]: i["State"]["Name"] for i in instances}
        seen = set(states.values())
        if any(_aborted(i) for i in instances) or seen - GONE_STATES - {"running"} or not seen & GONE_STATES:
            return False
        self.log.info(
            "EC2 instances ended on their own while waiting for them to run (%s): training finished.", states
        )
        return True

    def _terminate_launched(self, reason: str) -> None:
        """
        Tag the instances as aborted (``CreateTags``), then terminate them (``TerminateInstances``).

        Best-effort: log and swallow any error, so the caller's original error is raised. Without the tag a
        retry would take the terminated set for a finished job, so untagged instances are left running.
        """
        if not self._launched_instance_ids:
            return
        ids = self._launched_instance_ids
        self.log.info("%s: terminating EC2 instances %s.", reason, ids)
        try:
            self.hook.conn.create_tags(Resources=ids, Tags=[{"Key": ABORTED_TAG, "Value": "true"}])
        except Exception:
            self.log.exception(
                "Could not tag EC2 instances %s as aborted, so they are not terminated (a retry would "
                "take them for a finished job); terminate them by hand.",
                ids,
            )
            return
        try:
            self.hook.terminate_instances(instance_ids=ids)
        except Exception:
            self.log.exception("Could not terminate EC2 instances %s; terminate them by hand.", ids)

    def execute(self, context: Context) -> list[str]:
        ti = context["ti"]
        base = launch_token_base(ti.dag_id, ti.task_id, ti.run_id, ti.map_index)
        instance_ids, finished = self._find_or_launch(base)
        if finished:
            return instance_ids
        self._launched_instance_ids = instance_ids
        if not self.wait_for_completion:
            return instance_ids
        trigger = Ec2InstancesRunningTrigger(instance_ids=instance_ids, **trigger_arguments(self))
        return defer_or_wait(self, context, trigger)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> list[str]:
        event = validate_execute_complete_event(event)
        if event.get("status") != "success":
            # A deferred wait resumes on a new operator instance: take the IDs from the event.
            self._launched_instance_ids = list(event.get("instance_ids") or [])
            if self._finished_after_failed_wait(self._launched_instance_ids):
                return self._launched_instance_ids
            if self.terminate_on_failure:
                self._terminate_launched("Instances did not reach running")
            raise AirflowException(f"Waiting for EC2 training instances failed: {event.get('message')}")
        return event["instance_ids"]

    def on_kill(self) -> None:
        self._terminate_launched("Task killed")
        super().on_kill()


def _aborted(instance: dict[str, Any]) -> bool:
    return any(tag["Key"] == ABORTED_TAG for tag in instance.get("Tags", []))
