"""SSM Run Command on moto, with command and invocation statuses moving on the virtual clock.

moto reports a command ``Success`` the moment it is sent, has no ``ListCommandInvocations``, and sends a
command given only ``InstanceIds`` to every EC2 instance of the account as well (it reads the empty
``Targets`` as "match all"). The Run Command requests in ``OPERATIONS`` (``X-Amz-Target: AmazonSSM.*``) pass
through :class:`SsmCommandLifecycle`: every invocation is ``Pending`` (not yet on the node) for
``command_pending`` virtual seconds, ``InProgress`` for ``command_in_progress``, then ``Success``, and the
command's status, counts and dates follow its invocations. Nothing runs: the script always exits 0, silently.
``CancelCommand`` (moto has none) ends a command that has not finished yet as ``Cancelled``.

Known gap: ``CancelCommand`` cancels the whole command; naming only some of its instances is refused.

Instance IDs are checked against the service model's ``InstanceId`` pattern (``i-`` + 8 or 17 word
characters, or ``mi-`` + 17), in ``SendCommand``'s ``InstanceIds`` and the ``InstanceId`` of
``GetCommandInvocation``, ``ListCommands`` and ``ListCommandInvocations``, and anything else is refused with
the ``ValidationException`` SSM sends (aws/aws-cli#7048 shows its wording). So the ``sagemaker-cluster:...``
targets of HyperPod nodes, which only Session Manager's ``StartSession`` accepts, are refused here too.

Known gap: an ID that fits the pattern is accepted even when no such instance runs the SSM agent (SSM
answers ``InvalidInstanceId`` then).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from localaws.clock import VirtualClock
from localaws.timing import SsmTiming
from localaws.wsgi import (
    Response,
    WsgiApp,
    call_app,
    json_error,
    json_response,
    read_body,
    request_account,
    request_region,
)

log = logging.getLogger(__name__)

TARGET_PREFIX = "AmazonSSM."
OPERATIONS = frozenset(
    {"SendCommand", "ListCommands", "GetCommandInvocation", "ListCommandInvocations", "CancelCommand"}
)
CONTENT_TYPE = "application/x-amz-json-1.1"
# botocore/data/ssm/2014-11-06/service-2.json, shape InstanceId.
INSTANCE_ID_PATTERN = r"(^i-(\w{8}|\w{17})$)|(^mi-\w{17}$)"
PAGE_SIZE = 50  # ListCommandInvocations' default and largest MaxResults
# What SSM answers for a command sent without notifications or CloudWatch output (empty, not absent).
NO_NOTIFICATION = {"NotificationArn": "", "NotificationEvents": [], "NotificationType": ""}
NO_CLOUDWATCH = {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": False}


class SsmError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _CommandTrack:
    """What moto does not keep about a command: when it was sent on the virtual clock."""

    sent_at: datetime
    has_notification: bool  # moto invents a NotificationConfig when the request had none
    cancelled_at: datetime | None = None


@dataclass(frozen=True)
class _Progress:
    status: str
    started: datetime | None
    finished: datetime | None


class SsmCommandLifecycle:
    """Moves Run Command invocations through ``Pending``, ``InProgress`` and ``Success`` on the clock."""

    def __init__(self, clock: VirtualClock, timing: SsmTiming):
        self.clock = clock
        self.timing = timing
        self._lock = threading.RLock()
        self._commands: dict[str, _CommandTrack] = {}

    def reset(self) -> None:
        with self._lock:
            self._commands.clear()

    @staticmethod
    def handles(target: str) -> bool:
        """Whether ``X-Amz-Target`` names a Run Command operation (the rest of SSM goes to moto as it is)."""
        return target.startswith(TARGET_PREFIX) and target[len(TARGET_PREFIX) :] in OPERATIONS

    def handle(self, environ: dict, moto_app: WsgiApp) -> Response:
        # Imported here: moto's SSM models pull in its EC2 models, a second of startup most runs never need.
        from moto.ssm.models import ssm_backends

        operation = environ["HTTP_X_AMZ_TARGET"][len(TARGET_PREFIX) :]
        try:
            params = json.loads(read_body(environ) or b"{}")
        except ValueError:
            params = {}
        backend = ssm_backends[request_account(environ)][request_region(environ)]
        with self._lock:
            now = self.clock.now()
            try:
                _check_instance_ids(operation, params)
                if operation == "ListCommandInvocations":
                    return json_response(
                        self._list_invocations(backend, params, now), content_type=CONTENT_TYPE
                    )
                if operation == "CancelCommand":
                    return json_response(self._cancel(backend, params, now), content_type=CONTENT_TYPE)
                response = call_app(moto_app, environ)
                if response.status != 200:
                    return response
                payload = json.loads(response.body or b"{}")
                if operation == "SendCommand":
                    command = self._only_requested_instances(backend, payload["Command"], params)
                    self._commands[command["CommandId"]] = _CommandTrack(now, "NotificationConfig" in params)
                    log.info("SSM command %s sent to %s", command["CommandId"], command.get("InstanceIds"))
                    payload["Command"] = self._command_view(command, now)
                elif operation == "ListCommands":
                    payload["Commands"] = [
                        self._command_view(command, now) for command in payload["Commands"]
                    ]
                else:
                    payload = self._invocation_view(payload, now)
                return response.with_body(json.dumps(payload).encode())
            except SsmError as error:
                log.info("SSM %s refused: %s %s", operation, error.code, error.message)
                return json_error(error.code, error.message, CONTENT_TYPE)

    @staticmethod
    def _only_requested_instances(backend, command: dict, params: dict) -> dict:
        """Send a command given by ``InstanceIds`` alone to exactly those instances, in the order given."""
        if params.get("Targets"):
            return command
        model = backend.get_command_by_id(command["CommandId"])
        model.instance_ids = list(dict.fromkeys(params.get("InstanceIds", [])))
        model.invocations = [model.invocation_response(i, "aws:runShellScript") for i in model.instance_ids]
        model.target_count = model.completed_count = len(model.instance_ids)
        return {**command, "InstanceIds": model.instance_ids, "TargetCount": model.target_count}

    def _cancel(self, backend, params: dict, now: datetime) -> dict:
        """CancelCommand: a command that has not finished ends ``Cancelled`` now; a finished one stays."""
        wanted = params.get("CommandId")
        command = next((c for c in backend.list_commands(None, None) if c.command_id == wanted), None)
        if command is None or command.command_id not in self._commands:
            raise SsmError("InvalidCommandId", "Invalid command id.")
        if set(params.get("InstanceIds") or command.instance_ids) != set(command.instance_ids):
            raise SsmError("InvalidInstanceId", "localaws cancels a command on all of its instances only.")
        track = self._commands[command.command_id]
        if track.cancelled_at is None and self._progress(track, now).finished is None:
            track.cancelled_at = now
            log.info("SSM command %s cancelled", command.command_id)
        return {}

    # The clock

    def _progress(self, track: _CommandTrack, now: datetime) -> _Progress:
        started = track.sent_at + timedelta(seconds=self.timing.command_pending)
        finished = started + timedelta(seconds=self.timing.command_in_progress)
        if track.cancelled_at is not None:
            ran = track.cancelled_at >= started
            return _Progress("Cancelled", started if ran else None, track.cancelled_at)
        if now < started:
            return _Progress("Pending", None, None)
        if now < finished:
            return _Progress("InProgress", started, None)
        return _Progress("Success", started, finished)

    # Answers

    def _command_view(self, command: dict, now: datetime) -> dict:
        """moto's ``Command`` with the status, counts and virtual dates of its invocations."""
        track = self._commands.get(command["CommandId"])
        if track is None:
            return command
        progress = self._progress(track, now)
        view = {
            **command,
            "Status": progress.status,
            "StatusDetails": progress.status,
            "CompletedCount": command["TargetCount"] if progress.finished else 0,
            "RequestedDateTime": track.sent_at.timestamp(),
            "ExpiresAfter": (track.sent_at + timedelta(seconds=command["TimeoutSeconds"])).timestamp(),
        }
        if not track.has_notification:
            view["NotificationConfig"] = NO_NOTIFICATION
        view.setdefault("CloudWatchOutputConfig", NO_CLOUDWATCH)
        if not view.get("OutputS3Region"):
            view.pop("OutputS3Region", None)
        return view

    def _invocation_view(self, invocation: dict, now: datetime) -> dict:
        """moto's ``GetCommandInvocation`` answer, with the invocation where the clock has it."""
        track = self._commands.get(invocation["CommandId"])
        if track is None:
            return invocation
        progress = self._progress(track, now)
        view = {
            key: value
            for key, value in invocation.items()
            if key not in ("ExecutionStartDateTime", "ExecutionElapsedTime", "ExecutionEndDateTime")
        }
        view.update(Status=progress.status, StatusDetails=progress.status, ResponseCode=-1)
        if progress.started:
            elapsed = (progress.finished or now) - progress.started
            view["ExecutionStartDateTime"] = _iso(progress.started)
            view["ExecutionElapsedTime"] = f"PT{elapsed.total_seconds():.3f}S"
        if progress.finished:
            view["ExecutionEndDateTime"] = _iso(progress.finished)
            view["ResponseCode"] = 0 if progress.status == "Success" else -1
        return view

    def _list_invocations(self, backend, params: dict, now: datetime) -> dict:
        """ListCommandInvocations (moto has none): one invocation per command and instance, newest first."""
        if params.get("Filters"):
            raise SsmError("InvalidFilterKey", "localaws does not support Filters on ListCommandInvocations.")
        commands = backend.list_commands(None, None)
        if params.get("CommandId"):
            commands = [c for c in commands if c.command_id == params["CommandId"]]
            if not commands:
                raise SsmError("InvalidCommandId", "Invalid command id.")
        invocations = [
            self._listed_invocation(command, instance_id, now, bool(params.get("Details")))
            for command in reversed(commands)
            for instance_id in command.instance_ids
            if instance_id == params.get("InstanceId", instance_id)
        ]
        try:
            start = int(params.get("NextToken") or 0)
        except ValueError:
            raise SsmError("InvalidNextToken", "The specified token isn't valid.") from None
        size = min(int(params.get("MaxResults") or PAGE_SIZE), PAGE_SIZE)
        page: dict = {"CommandInvocations": invocations[start : start + size]}
        if start + size < len(invocations):
            page["NextToken"] = str(start + size)
        return page

    def _listed_invocation(self, command, instance_id: str, now: datetime, details: bool) -> dict:
        # A command sent before localaws tracked it (none, over HTTP) keeps moto's time: naive UTC.
        track = self._commands.get(command.command_id) or _CommandTrack(
            command.requested_date_time.replace(tzinfo=UTC), False
        )
        progress = self._progress(track, now)
        invocation = {
            "CommandId": command.command_id,
            "InstanceId": instance_id,
            "Comment": command.comment,
            "DocumentName": command.document_name,
            "RequestedDateTime": track.sent_at.timestamp(),
            "Status": progress.status,
            "StatusDetails": progress.status,
            "TraceOutput": "",
            "StandardOutputUrl": "",
            "StandardErrorUrl": "",
            "ServiceRole": command.service_role_arn,
            "NotificationConfig": command.notification_config if track.has_notification else NO_NOTIFICATION,
            "CloudWatchOutputConfig": NO_CLOUDWATCH,
        }
        if details:
            plugin = {
                "Name": "aws:runShellScript",
                "Status": progress.status,
                "StatusDetails": progress.status,
                "ResponseCode": 0 if progress.status == "Success" else -1,
                "Output": "",
                "StandardOutputUrl": "",
                "StandardErrorUrl": "",
            }
            if progress.started:
                plugin["ResponseStartDateTime"] = progress.started.timestamp()
            if progress.finished:
                plugin["ResponseFinishDateTime"] = progress.finished.timestamp()
            invocation["CommandPlugins"] = [plugin]
        return invocation


def _check_instance_ids(operation: str, params: dict) -> None:
    """Refuse IDs outside the model's pattern, as SSM's request validation does (before anything else)."""
    if operation == "SendCommand":
        ids = params.get("InstanceIds") or []
        if isinstance(ids, list) and not all(isinstance(i, str) and re.search(INSTANCE_ID_PATTERN, i) for i in ids):
            raise SsmError(
                "ValidationException",
                f"1 validation error detected: Value '[{', '.join(map(str, ids))}]' at 'instanceIds' failed to "
                "satisfy constraint: Member must satisfy constraint: [Member must satisfy regular expression "
                f"pattern: {INSTANCE_ID_PATTERN}]",
            )
        return
    instance_id = params.get("InstanceId")
    if instance_id is not None and not (isinstance(instance_id, str) and re.search(INSTANCE_ID_PATTERN, instance_id)):
        raise SsmError(
            "ValidationException",
            f"1 validation error detected: Value '{instance_id}' at 'instanceId' failed to satisfy constraint: "
            f"Member must satisfy regular expression pattern: {INSTANCE_ID_PATTERN}",
        )


def _iso(moment: datetime) -> str:
    """The ``StringDateTime`` form SSM sends in GetCommandInvocation, e.g. ``2026-01-31T12:00:00.123Z``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
