"""Launch EC2 instances that run one job from their user data, exactly once per task run; wait for the job;
terminate whatever a run launched."""

from __future__ import annotations

import functools
import hashlib
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils import validate_execute_complete_event
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.sdk import Context, conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from botocore.exceptions import ClientError

from finetune_pipeline.aws.hooks.ec2 import DLAMI_PARAMETER, Ec2InstancesHook
from finetune_pipeline.aws.triggers.ec2 import (
    ABORTED_TAG,
    INSTANCE_INITIATED_SHUTDOWN,
    Ec2InstancesRunningTrigger,
    Ec2JobCompleteTrigger,
    marker_written,
)
from finetune_pipeline.aws.utils.retries import create_once
from finetune_pipeline.aws.utils.waits import defer_or_wait, trigger_arguments

# Tag carrying the launch token, so a retry finds what the first try launched (DescribeInstances by tag).
LAUNCH_TOKEN_TAG = "finetune-pipeline:launch-token"
# Tag carrying the token's base (every generation of one task run), so a teardown finds all of them
# without XCom: the launching task may have been killed while deferred, having pushed nothing.
LAUNCH_TOKEN_BASE_TAG = "finetune-pipeline:launch-token-base"
GONE_STATES = Ec2InstancesHook.GONE_STATES
ENDED_STATES = Ec2InstancesHook.ENDED_STATES
PLACEHOLDER = re.compile(r"\{\{([A-Z][A-Z0-9_]*)\}\}")
# A task run may relaunch after everything it launched ended without finishing; each relaunch takes the
# next token.
MAX_GENERATIONS = 100
# "User data is limited to 16 KB, in raw form, before it is base64-encoded"
# (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/user-data.html).
MAX_USER_DATA_BYTES = 16 * 1024
CONSOLE_TAIL_LINES = 40


def launch_token_base(dag_id: str, task_id: str, run_id: str, map_index: int) -> str:
    """Deterministic per task run (not per try), so every try of the run derives the same tokens."""
    return hashlib.sha256(f"{dag_id}|{task_id}|{run_id}|{map_index}".encode()).hexdigest()[:56]


def render_user_data(text: str, variables: dict[str, Any]) -> str:
    """
    Replace each ``{{NAME}}`` placeholder with its value, shell-quoted (write ``NAME={{NAME}}``, bare).

    Every placeholder must get a value and every value must have a placeholder, so a misspelt name on
    either side is an error, not an empty string or a silently unused setting.
    """
    used = set(PLACEHOLDER.findall(text))
    missing = sorted(used - set(variables))
    if missing:
        raise ValueError(f"User data placeholders without a value in user_data_variables: {', '.join(missing)}.")
    unknown = sorted(set(variables) - used)
    if unknown:
        raise ValueError(f"user_data_variables that the user data has no placeholder for: {', '.join(unknown)}.")
    return PLACEHOLDER.sub(lambda match: shlex.quote(str(variables[match.group(1)])), text)


class Ec2LaunchTrainingInstancesOperator(AwsBaseOperator[Ec2InstancesHook]):
    """
    Launch instances that run one job from their user data (``RunInstances``), once per task run; wait for
    the job to end; return the instance IDs.

    A retry never launches twice: the instances carry a launch token derived from the task run (as the
    ``ClientToken`` and as a tag), and a retry first looks them up by that tag and reuses any that still
    run. Within a try, botocore may send ``RunInstances`` again after a lost answer: with the same
    ``ClientToken`` EC2 returns the first reservation instead of launching again. A set that has ended is
    finished if its job wrote ``success_marker_uri`` after it was launched (then nothing is launched);
    otherwise (it failed, or was ended by AWS or by this operator) a retry launches the next generation,
    with the next token.

    The launch: ``InstanceInitiatedShutdownBehavior=terminate`` (the job's ``shutdown`` frees the instance),
    the instance profile, user data rendered from a template file, an optional placement group (created if
    absent, ``Placement.GroupName``), optional EFA interfaces, an optional capacity reservation or Capacity
    Block, and the Deep Learning AMI from its public SSM parameter unless ``image_id`` is given.

    The wait (deferred, or here): with ``success_marker_uri`` until the job ends (:class:`Ec2JobCompleteTrigger`:
    the marker written is success; an instance that AWS ended, capacity or Spot, is a failure with its
    ``StateReason``; all ended without the marker is a failure); without it, until every instance runs.
    On failure (and ``on_kill``) the instances are tagged as aborted and terminated, best-effort, and the
    error carries the tail of the first instance's console output.

    :param instance_type: e.g. ``g5.2xlarge``.
    :param success_marker_uri: ``s3://bucket/key`` the job writes when it succeeded (templated).
    :param image_id: AMI ID; by default the AMI that ``image_ssm_parameter`` names.
    :param image_ssm_parameter: SSM parameter holding the AMI ID (the Deep Learning Base GPU AMI's).
    :param user_data_path: Template of the script run at boot (templated path); ``{{NAME}}`` placeholders
        are filled, shell-quoted, from ``user_data_variables``.
    :param user_data_variables: Values of the user data placeholders (templated); each must be used.
    :param instance_profile: IAM instance profile name or ARN.
    :param subnet_id: Subnet to launch into (needed with EFA).
    :param security_group_ids: Security groups (needed with EFA: one that allows all traffic within itself).
    :param key_name: SSH key pair name.
    :param tags: Tags for the instances (the launch token tags are added).
    :param min_count: Minimum number of instances.
    :param max_count: Maximum number of instances.
    :param placement_group: Name of the placement group to launch into, created if absent.
    :param placement_strategy: Its strategy when created: ``cluster`` packs instances close together.
    :param efa_interfaces: Number of EFA interfaces per instance (0: none); one per network card.
    :param capacity_reservation_id: Launch into this capacity reservation (``cr-...``).
    :param capacity_block: The reservation is a Capacity Block (``MarketType='capacity-block'``).
    :param shutdown_behavior: ``InstanceInitiatedShutdownBehavior``; ``terminate`` so a finished job frees it.
    :param run_instances_kwargs: Further ``RunInstances`` arguments.
    :param terminate_on_failure: Terminate the instances when the wait fails.
    :param wait_for_completion: Wait for the job (or for the instances to run, without a marker).
    :param deferrable: Wait in the triggerer. Defaults to ``[operators] default_deferrable``.
    :param waiter_delay: Seconds between status checks.
    :param waiter_max_attempts: Status checks before giving up (the job's time limit is their product).
    """

    aws_hook_class = Ec2InstancesHook
    template_fields: Sequence[str] = aws_template_fields(
        "image_id",
        "instance_type",
        "user_data_path",
        "user_data_variables",
        "instance_profile",
        "tags",
        "success_marker_uri",
        "placement_group",
        "capacity_reservation_id",
    )

    def __init__(
        self,
        *,
        instance_type: str,
        success_marker_uri: str | None = None,
        image_id: str | None = None,
        image_ssm_parameter: str = DLAMI_PARAMETER,
        user_data_path: str | None = None,
        user_data_variables: dict[str, Any] | None = None,
        instance_profile: str | None = None,
        subnet_id: str | None = None,
        security_group_ids: list[str] | None = None,
        key_name: str | None = None,
        tags: dict[str, str] | None = None,
        min_count: int = 1,
        max_count: int = 1,
        placement_group: str | None = None,
        placement_strategy: str = "cluster",
        efa_interfaces: int = 0,
        capacity_reservation_id: str | None = None,
        capacity_block: bool = False,
        shutdown_behavior: str = "terminate",
        run_instances_kwargs: dict[str, Any] | None = None,
        terminate_on_failure: bool = True,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        waiter_delay: float = 30,
        waiter_max_attempts: int = 2880,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.instance_type = instance_type
        self.success_marker_uri = success_marker_uri
        self.image_id = image_id
        self.image_ssm_parameter = image_ssm_parameter
        self.user_data_path = user_data_path
        self.user_data_variables = user_data_variables or {}
        self.instance_profile = instance_profile
        self.subnet_id = subnet_id
        self.security_group_ids = security_group_ids
        self.key_name = key_name
        self.tags = tags or {}
        self.min_count = min_count
        self.max_count = max_count
        self.placement_group = placement_group
        self.placement_strategy = placement_strategy
        self.efa_interfaces = efa_interfaces
        self.capacity_reservation_id = capacity_reservation_id
        self.capacity_block = capacity_block
        self.shutdown_behavior = shutdown_behavior
        self.run_instances_kwargs = run_instances_kwargs or {}
        self.terminate_on_failure = terminate_on_failure
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.waiter_delay = waiter_delay
        self.waiter_max_attempts = waiter_max_attempts
        self._launched_instance_ids: list[str] = []

    # The launch

    def _user_data(self) -> str | None:
        if not self.user_data_path:
            return None
        path = Path(self.user_data_path)
        if not path.is_file():
            raise FileNotFoundError(f"User data script {path} does not exist.")
        text = render_user_data(path.read_text(), self.user_data_variables)
        if len(text.encode()) > MAX_USER_DATA_BYTES:
            raise ValueError(
                f"User data is {len(text.encode())} bytes; EC2 takes at most {MAX_USER_DATA_BYTES} before base64."
            )
        return text

    def _run_instances_arguments(self, token: str, token_base: str, image_id: str) -> dict[str, Any]:
        if self.capacity_block and not self.capacity_reservation_id:
            raise ValueError("capacity_block needs capacity_reservation_id: the Capacity Block's reservation ID.")
        tags = {**self.tags, LAUNCH_TOKEN_TAG: token, LAUNCH_TOKEN_BASE_TAG: token_base}
        arguments: dict[str, Any] = {
            "ImageId": image_id,
            "InstanceType": self.instance_type,
            "MinCount": int(self.min_count),
            "MaxCount": int(self.max_count),
            "ClientToken": token,
            "InstanceInitiatedShutdownBehavior": self.shutdown_behavior,
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": [{"Key": k, "Value": str(v)} for k, v in tags.items()]}
            ],
        }
        user_data = self._user_data()
        if user_data is not None:
            arguments["UserData"] = user_data  # boto3 base64-encodes it
        if self.instance_profile:
            key = "Arn" if self.instance_profile.startswith("arn:") else "Name"
            arguments["IamInstanceProfile"] = {key: self.instance_profile}
        if self.efa_interfaces:
            arguments["NetworkInterfaces"] = self._efa_interfaces()
        else:
            if self.subnet_id:
                arguments["SubnetId"] = self.subnet_id
            if self.security_group_ids:
                arguments["SecurityGroupIds"] = self.security_group_ids
        if self.key_name:
            arguments["KeyName"] = self.key_name
        if self.placement_group:
            arguments["Placement"] = {"GroupName": self.placement_group}
        if self.capacity_reservation_id:
            arguments["CapacityReservationSpecification"] = {
                "CapacityReservationTarget": {"CapacityReservationId": self.capacity_reservation_id}
            }
        if self.capacity_block:
            # https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/capacity-blocks-launch.html
            arguments["InstanceMarketOptions"] = {"MarketType": "capacity-block"}
        return {**arguments, **self.run_instances_kwargs}

    def _efa_interfaces(self) -> list[dict[str, Any]]:
        """
        One EFA per network card: card 0 at device index 0 (the primary interface), the others at 1.

        An EFA sits in the instance's subnet and in a security group that allows all traffic to and from
        itself; with interfaces given, the subnet and groups go on them, not on the instance
        (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa-start.html,
        https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa-acc-inst-types.html).
        """
        if not self.subnet_id or not self.security_group_ids:
            raise ValueError("EFA interfaces need subnet_id and security_group_ids.")
        return [
            {
                "NetworkCardIndex": card,
                "DeviceIndex": 0 if card == 0 else 1,
                "SubnetId": self.subnet_id,
                "Groups": list(self.security_group_ids),
                "InterfaceType": "efa",
                "DeleteOnTermination": True,
            }
            for card in range(int(self.efa_interfaces))
        ]

    def _launch(self, token: str, token_base: str) -> list[dict[str, Any]]:
        """``RunInstances`` with ``token`` as its ``ClientToken``; botocore may retry it (the token dedups)."""
        if not self.image_id:
            # Resolved once per try: a resend of this launch must carry the same image, or EC2 refuses its token.
            self.image_id = self.hook.resolve_image_id(self.image_ssm_parameter)
            self.log.info("Launching %s, the AMI that %s names.", self.image_id, self.image_ssm_parameter)
        image_id = self.image_id
        if self.placement_group:
            self.hook.ensure_placement_group(self.placement_group, self.placement_strategy)
        arguments = self._run_instances_arguments(token, token_base, image_id)
        try:
            return self.hook.run_instances(**arguments)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "IdempotentParameterMismatch":
                raise
            raise AirflowFailException(
                f"EC2 refused launch token {token}: an earlier try of this task run launched with other "
                "RunInstances parameters (image, instance type, user data, tags, ...), which changed since. "
                "Terminate that try's instances or start a new DAG run."
            ) from error

    def _with_token(self, token: str) -> list[dict[str, Any]]:
        return self.hook.instances_tagged(LAUNCH_TOKEN_TAG, [token])

    def _finished(self, instances: list[dict[str, Any]]) -> bool:
        """Whether an ended set finished its job: the marker written after their launch (or, without a
        marker to look at, every instance shut down by its own OS and none aborted)."""
        if self.success_marker_uri:
            launched = min(i["LaunchTime"] for i in instances)
            return marker_written(S3Hook(**self._connection()), self.success_marker_uri, launched)
        return all(
            i.get("StateReason", {}).get("Code") == INSTANCE_INITIATED_SHUTDOWN and not _aborted(i) for i in instances
        )

    def _find_or_launch(self, base: str) -> tuple[list[str], bool]:
        """
        Return the instance IDs of this task run and whether their job already finished.

        Generation ``n`` is launched only after generation ``n - 1`` ended, so only the last one found can
        still run, and only its marker check means anything.
        """
        generations: list[list[dict[str, Any]]] = []
        while len(generations) < MAX_GENERATIONS:
            found = self._with_token(f"{base}-{len(generations)}")
            if not found:
                break
            generations.append(found)
        if generations:
            last, token = generations[-1], f"{base}-{len(generations) - 1}"
            ids = sorted(i["InstanceId"] for i in last)
            if any(i["State"]["Name"] not in ENDED_STATES for i in last):
                self.log.info("Reusing EC2 instances %s launched by an earlier try (token %s).", ids, token)
                return ids, False
            if self._finished(last):
                self.log.info("EC2 instances %s (token %s) already finished their job; launching nothing.", ids, token)
                return ids, True
            reasons = {i["InstanceId"]: i.get("StateReason", {}).get("Code") for i in last}
            self.log.info("EC2 instances of token %s ended without finishing (%s); launching anew.", token, reasons)
            self._abort([i["InstanceId"] for i in last if i["State"]["Name"] != "terminated"], "Abandoned generation")
        if len(generations) >= MAX_GENERATIONS:
            raise AirflowFailException(
                f"This task run already launched {MAX_GENERATIONS} sets of instances; giving up."
            )
        token = f"{base}-{len(generations)}"
        instances = create_once(
            functools.partial(self._launch, token, base),
            lambda: self._with_token(token) or None,
            what=f"EC2 instances with launch token {token}",
            log=self.log,
        )
        launched = sorted(instance["InstanceId"] for instance in instances)
        self.log.info("Launched EC2 instances %s (%s, token %s).", launched, self.instance_type, token)
        return launched, False

    # The wait

    def _connection(self) -> dict[str, Any]:
        return {
            "aws_conn_id": self.aws_conn_id,
            "region_name": self.region_name,
            "verify": self.verify,
            "config": self.botocore_config,
        }

    def execute(self, context: Context) -> list[str]:
        ti = context["ti"]
        base = launch_token_base(ti.dag_id, ti.task_id, ti.run_id, ti.map_index)
        instance_ids, finished = self._find_or_launch(base)
        self._launched_instance_ids = instance_ids
        if finished or not self.wait_for_completion:
            return instance_ids
        if not self.success_marker_uri:
            trigger = Ec2InstancesRunningTrigger(instance_ids=instance_ids, **trigger_arguments(self))
            return defer_or_wait(self, context, trigger)
        launched = min(i["LaunchTime"] for i in self.hook.describe(instance_ids))
        trigger = Ec2JobCompleteTrigger(
            instance_ids=instance_ids,
            success_marker_uri=self.success_marker_uri,
            launched_at=launched.isoformat(),
            **trigger_arguments(self),
        )
        if self.deferrable:
            self.defer(trigger=trigger, method_name="execute_complete")
        return self.execute_complete(context, trigger.wait())

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> list[str]:
        event = validate_execute_complete_event(event)
        if event.get("status") == "success":
            self.log.info("%s", event.get("message") or "EC2 instances are running.")
            return event["instance_ids"]
        # A deferred wait resumes on a new operator instance: take the IDs from the event.
        self._launched_instance_ids = list(event.get("instance_ids") or [])
        if not self.success_marker_uri and self._finished_after_failed_wait(self._launched_instance_ids):
            return self._launched_instance_ids
        console = self._console_tail(self._launched_instance_ids)
        if self.terminate_on_failure:
            self._abort(self._launched_instance_ids, "The wait failed")
        raise AirflowException(f"EC2 training instances failed: {event.get('message')}{console}")

    def _finished_after_failed_wait(self, instance_ids: list[str]) -> bool:
        """
        Whether a failed ``instance_running`` wait only saw the job end: botocore's waiter fails on a
        terminated instance, but one whose own OS shut it down got past ``running`` and ran its job.
        """
        instances = self.hook.describe(instance_ids)
        if not instances or any(i["State"]["Name"] not in ENDED_STATES | {"running"} for i in instances):
            return False
        ended = [i for i in instances if i["State"]["Name"] in ENDED_STATES]
        if not ended or not self._finished(ended):
            return False
        self.log.info("EC2 instances ended on their own while waiting for them to run: their job finished.")
        return True

    def _console_tail(self, instance_ids: list[str]) -> str:
        """The last lines of rank 0's console output, for the error; ``""`` if none."""
        if not instance_ids:
            return ""
        try:
            # Rank 0 (the first of the launch), which trains and writes the marker.
            described = sorted(self.hook.describe(instance_ids), key=lambda i: i.get("AmiLaunchIndex", 0))
            instance_id = described[0]["InstanceId"] if described else sorted(instance_ids)[0]
            output = self.hook.console_output(instance_id)
        except Exception:
            self.log.warning("Could not read the console output of %s.", instance_ids, exc_info=True)
            return ""
        lines = output.rstrip().splitlines()[-CONSOLE_TAIL_LINES:]
        if not lines:
            return ""
        return f"\nLast {len(lines)} lines of the console output of {instance_id}:\n" + "\n".join(lines)

    def _abort(self, instance_ids: list[str], reason: str) -> None:
        """
        Tag the instances as aborted (``CreateTags``), then terminate them (``TerminateInstances``).

        Best-effort: log and swallow any error, so that the caller's original error is raised.
        """
        try:
            instance_ids = [
                i["InstanceId"] for i in self.hook.describe(instance_ids) if i["State"]["Name"] not in GONE_STATES
            ]
        except Exception:
            self.log.warning("Could not describe EC2 instances %s; terminating them all.", instance_ids, exc_info=True)
        if not instance_ids:
            return
        self.log.info("%s: terminating EC2 instances %s.", reason, instance_ids)
        terminate_aborted(self.hook, instance_ids, self.log)

    def on_kill(self) -> None:
        self._abort(self._launched_instance_ids, "Task killed")
        super().on_kill()


class Ec2TerminateTrainingInstancesOperator(AwsBaseOperator[Ec2InstancesHook]):
    """
    Terminate every instance that a launch task of this DAG run launched and that is not terminated yet
    (all generations, found by the launch token base tag, not by XCom); return their IDs.

    Meant as a teardown (``trigger_rule="all_done"``): it runs after success, failure, or a launch task
    killed while it was deferred (whose ``on_kill`` never ran). Idempotent: a second run finds them
    terminated and does nothing. The instances are tagged as aborted first.

    :param launch_task_id: Task ID of the :class:`Ec2LaunchTrainingInstancesOperator` (templated).
    :param launch_map_index: Its map index (``-1``: not mapped).
    """

    aws_hook_class = Ec2InstancesHook
    template_fields: Sequence[str] = aws_template_fields("launch_task_id")

    def __init__(self, *, launch_task_id: str, launch_map_index: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.launch_task_id = launch_task_id
        self.launch_map_index = launch_map_index

    def execute(self, context: Context) -> list[str]:
        ti = context["ti"]
        base = launch_token_base(ti.dag_id, self.launch_task_id, ti.run_id, self.launch_map_index)
        instances = self.hook.instances_tagged(LAUNCH_TOKEN_BASE_TAG, [base])
        states = {i["InstanceId"]: i["State"]["Name"] for i in instances}
        live = sorted(instance_id for instance_id, state in states.items() if state not in GONE_STATES)
        if not instances:
            self.log.info("Task %s of this run launched no EC2 instances: nothing to terminate.", self.launch_task_id)
            return []
        self.log.info("EC2 instances launched by %s in this run: %s.", self.launch_task_id, states)
        if not live:
            self.log.info("All of them are terminated or terminating: nothing to do.")
            return []
        self.log.info("Terminating %s.", live)
        terminate_aborted(self.hook, live, self.log, raise_on_terminate=True)
        return live


def terminate_aborted(hook: Ec2InstancesHook, instance_ids: list[str], log, raise_on_terminate: bool = False) -> None:
    """
    Tag ``instance_ids`` as aborted (best-effort: the tag only explains the termination), then terminate
    them; a failed termination is logged, or raised if asked.
    """
    try:
        hook.tag(instance_ids, {ABORTED_TAG: "true"})
    except Exception:
        log.exception("Could not tag EC2 instances %s as aborted; terminating them anyway.", instance_ids)
    try:
        hook.terminate_instances(instance_ids=instance_ids)
    except Exception:
        if raise_on_terminate:
            raise
        log.exception("Could not terminate EC2 instances %s; terminate them by hand.", instance_ids)


def _aborted(instance: dict[str, Any]) -> bool:
    return any(tag["Key"] == ABORTED_TAG for tag in instance.get("Tags", []))
