"""DMS on moto, with the statuses moving on the virtual clock as the real service's do.

moto's DMS leaves a replication task ``creating`` forever (so botocore's ``replication_task_ready`` waiter,
which the Amazon provider uses, never returns), starts and stops tasks instantly, reports endpoints as
``creating``, ignores CDC start positions and has no DescribeTableStatistics. Rather than patching
site-packages, every DMS request (``X-Amz-Target: AmazonDMSv20160101.*``) passes through :class:`DmsLifecycle`,
which first moves moto's objects along (``creating -> ready``, ``starting -> running``, ``stopping ->
stopped``, a ``full-load`` task stopping by itself, instances ``creating -> available``, endpoints
``active``), answers Start/Stop/ModifyReplicationTask itself, adds the CDC fields to the task descriptions moto
returns, and answers DescribeTableStatistics from what the task's S3 target holds
(:mod:`localaws.dms_statistics`).
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from moto.dms.models import DatabaseMigrationServiceBackend, FakeReplicationTask, dms_backends
from moto.moto_api import state_manager

from localaws.clock import VirtualClock
from localaws.dms_statistics import DmsTableStatistics, S3Target, SelectionRules, StatisticsTask
from localaws.timing import DmsTiming
from localaws.wsgi import (
    Response,
    WsgiApp,
    call_app,
    json_response,
    read_body,
    request_account,
    request_region,
)

log = logging.getLogger(__name__)

TARGET_PREFIX = "AmazonDMSv20160101."
CONTENT_TYPE = "application/x-amz-json-1.1"
STARTABLE = ("ready", "stopped", "failed")
MODIFIABLE = ("ready", "stopped", "failed")  # AWS: "The task must be stopped before you can modify it."
UNDELETABLE = ("starting", "running", "stopping", "modifying")
FULL_LOAD_FINISHED = "Stop Reason FULL_LOAD_ONLY_FINISHED"
# Describe calls whose filters matching nothing is an error on AWS (botocore's "deleted" waiters rely on it).
DESCRIBE_LISTS = {
    "DescribeReplicationTasks": "ReplicationTasks",
    "DescribeEndpoints": "Endpoints",
    "DescribeReplicationInstances": "ReplicationInstances",
}
# DescribeTableStatistics: its filter names, each with the TableStatistics member it matches, and MaxRecords.
STATISTICS_FILTERS = {"schema-name": "SchemaName", "table-name": "TableName", "table-state": "TableState"}
STATISTICS_MAX_RECORDS = (20, 500)
STATISTICS_DEFAULT_MAX_RECORDS = 100


class DmsError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _TaskTrack:
    """What moto does not keep about a task: virtual timestamps and the CDC settings."""

    created_at: datetime
    since: datetime  # when the current status began
    previous_status: str | None = None  # where ``modifying`` returns to
    start_date: datetime | None = None
    stop_date: datetime | None = None
    stop_reason: str | None = None
    cdc_start_position: str | None = None
    cdc_stop_position: str | None = None
    recovery_checkpoint: str | None = None


class DmsLifecycle:
    """Moves moto's DMS resources through their real statuses on the virtual clock."""

    def __init__(self, clock: VirtualClock, timing: DmsTiming):
        self.clock = clock
        self.timing = timing
        self._lock = threading.RLock()
        self._tasks: dict[str, _TaskTrack] = {}
        self._instances: dict[str, datetime] = {}
        self._statistics = DmsTableStatistics()
        # moto makes a replication instance "available" the moment it is read; let the clock decide instead.
        state_manager.set_transition(
            "dms::replicationinstance", {"progression": "manual", "times": sys.maxsize}
        )

    def reset(self) -> None:
        with self._lock:
            self._tasks.clear()
            self._instances.clear()
            self._statistics.reset()

    def handle(self, environ: dict, moto_app: WsgiApp) -> Response:
        operation = environ.get("HTTP_X_AMZ_TARGET", "")[len(TARGET_PREFIX) :]
        try:
            params = json.loads(read_body(environ) or b"{}")
        except ValueError:
            params = {}
        backend = dms_backends[request_account(environ)][request_region(environ)]
        own = {
            "StartReplicationTask": self._start_task,
            "StopReplicationTask": self._stop_task,
            "ModifyReplicationTask": self._modify_task,
            "DescribeTableStatistics": self._describe_table_statistics,
        }.get(operation)
        with self._lock:
            now = self.clock.now()
            self._advance(now)
            try:
                if own is not None:
                    return json_response(own(backend, params, now), content_type=CONTENT_TYPE)
                if operation == "DeleteReplicationTask":
                    self._check_deletable(backend, params)
                response = call_app(moto_app, environ)
                self._advance(now)  # start the clock on whatever this request created
                if response.status == 200:
                    return self._after_moto(operation, params, response)
                return response
            except DmsError as error:
                log.info("DMS %s refused: %s %s", operation, error.code, error.message)
                return json_response({"__type": error.code, "message": error.message}, 400, CONTENT_TYPE)

    # Requests answered here

    def _start_task(self, backend: DatabaseMigrationServiceBackend, params: dict, now: datetime) -> dict:
        """StartReplicationTask: ``starting``, then ``running`` after ``task_starting`` seconds."""
        task, track = self._task(backend, params.get("ReplicationTaskArn"))
        if params.get("CdcStartTime") is not None and params.get("CdcStartPosition"):
            raise DmsError(
                "InvalidParameterCombinationException",
                "Specify either CdcStartTime or CdcStartPosition, not both.",
            )
        if task.status not in STARTABLE:
            raise DmsError(
                "InvalidResourceStateFault",
                f"Replication task {task.id} is {task.status}; it can only be started when "
                f"{', '.join(STARTABLE)}.",
            )
        self._record_cdc(track, params)
        self._set_status(task, track, "starting", now)
        track.start_date, track.stop_date, track.stop_reason = now, None, None
        log.info("DMS task %s starting (%s)", task.id, params.get("StartReplicationTaskType"))
        return {"ReplicationTask": self._task_view(task.to_dict(), track, now)}

    def _stop_task(self, backend: DatabaseMigrationServiceBackend, params: dict, now: datetime) -> dict:
        """StopReplicationTask: ``stopping``, then ``stopped`` after ``task_stopping`` seconds."""
        task, track = self._task(backend, params.get("ReplicationTaskArn"))
        if task.status != "running":
            raise DmsError(
                "InvalidResourceStateFault",
                f"Replication task {task.id} is {task.status}; only a running task can be stopped.",
            )
        self._set_status(task, track, "stopping", now)
        return {"ReplicationTask": self._task_view(task.to_dict(), track, now)}

    def _modify_task(self, backend: DatabaseMigrationServiceBackend, params: dict, now: datetime) -> dict:
        """ModifyReplicationTask (moto lacks it): ``modifying``, then back to the status it had."""
        task, track = self._task(backend, params.get("ReplicationTaskArn"))
        if task.status not in MODIFIABLE:
            raise DmsError(
                "InvalidResourceStateFault",
                f"Replication task {task.id} is {task.status}; stop it before modifying it.",
            )
        if params.get("CdcStartTime") is not None and params.get("CdcStartPosition"):
            raise DmsError(
                "InvalidParameterCombinationException",
                "Specify either CdcStartTime or CdcStartPosition, not both.",
            )
        for member, attribute in (
            ("MigrationType", "migration_type"),
            ("TableMappings", "table_mappings"),
            ("ReplicationTaskSettings", "replication_task_settings"),
        ):
            if params.get(member) is not None:
                setattr(task, attribute, params[member])
        self._record_cdc(track, params)
        track.previous_status = task.status
        self._set_status(task, track, "modifying", now)
        return {"ReplicationTask": self._task_view(task.to_dict(), track, now)}

    def _describe_table_statistics(
        self, backend: DatabaseMigrationServiceBackend, params: dict, now: datetime
    ) -> dict:
        """DescribeTableStatistics (moto lacks it): each selected table's counts in the task's S3 target."""
        task, track = self._task(backend, params.get("ReplicationTaskArn"))
        limit = _statistics_max_records(params.get("MaxRecords"))
        wanted = _statistics_filters(params.get("Filters") or [])
        after = _statistics_marker_table(params.get("Marker"))
        source = self._statistics_task(backend, task, track)
        tables = [
            table
            for table in (self._statistics.describe(source, now) if source else [])
            if all(table[member] in values for member, values in wanted)
            and (after is None or (table["SchemaName"], table["TableName"]) > after)
        ]
        payload = {"ReplicationTaskArn": task.arn, "TableStatistics": tables[:limit]}
        if len(tables) > limit:
            last = tables[limit - 1]
            payload["Marker"] = _statistics_marker(last["SchemaName"], last["TableName"])
        return payload

    def _check_deletable(self, backend: DatabaseMigrationServiceBackend, params: dict) -> None:
        task = backend.replication_tasks.get(params.get("ReplicationTaskArn", ""))
        if task is not None and task.status in UNDELETABLE:
            raise DmsError(
                "InvalidResourceStateFault",
                f"Replication task {task.id} is {task.status}; stop it before deleting it.",
            )

    # moto's answers, completed

    def _after_moto(self, operation: str, params: dict, response: Response) -> Response:
        payload = json.loads(response.body or b"{}")
        list_key = DESCRIBE_LISTS.get(operation)
        if list_key and params.get("Filters") and not payload.get(list_key):
            raise DmsError("ResourceNotFoundFault", f"No {list_key} found matching the provided filters.")
        if operation == "CreateReplicationTask":
            track = self._tasks.get(payload["ReplicationTask"]["ReplicationTaskArn"])
            if track is not None:
                self._record_cdc(track, params)
        now = self.clock.now()
        if "ReplicationTasks" in payload:
            payload["ReplicationTasks"] = [
                self._task_view(task, self._tasks.get(task["ReplicationTaskArn"]), now)
                for task in payload["ReplicationTasks"]
            ]
        if "ReplicationTask" in payload:
            arn = payload["ReplicationTask"]["ReplicationTaskArn"]
            track = (
                self._tasks.pop(arn, None) if operation == "DeleteReplicationTask" else self._tasks.get(arn)
            )
            payload["ReplicationTask"] = self._task_view(payload["ReplicationTask"], track, now)
        for endpoint in [payload.get("Endpoint"), *payload.get("Endpoints", [])]:
            if endpoint and endpoint.get("Status") == "creating":
                endpoint["Status"] = "active"
        return response.with_body(json.dumps(_without_nulls(payload)).encode())

    def _task_view(self, task: dict, track: _TaskTrack | None, now: datetime) -> dict:
        """moto's task dict with virtual dates and the CDC fields of the ``ReplicationTask`` shape."""
        view = {key: value for key, value in task.items() if value is not None}
        if track is None:
            return view
        stats = dict(view.get("ReplicationTaskStats") or {})
        for name, value in (
            ("StartDate", track.start_date),
            ("FreshStartDate", track.start_date),
            ("FullLoadStartDate", track.start_date),
            ("StopDate", track.stop_date),
            ("FullLoadFinishDate", track.stop_date),
        ):
            stats[name] = value.timestamp() if value else None
        view["ReplicationTaskStats"] = {key: value for key, value in stats.items() if value is not None}
        extra = {
            "ReplicationTaskCreationDate": track.created_at.timestamp(),
            "ReplicationTaskStartDate": track.start_date.timestamp() if track.start_date else None,
            "StopReason": track.stop_reason,
            "CdcStartPosition": track.cdc_start_position,
            "CdcStopPosition": track.cdc_stop_position,
            "RecoveryCheckpoint": self._checkpoint(view, track, now),
        }
        view.update({key: value for key, value in extra.items() if value is not None})
        return view

    # The clock

    def _advance(self, now: datetime) -> None:
        """Apply every status change that is due by ``now``, in order, at the time it was due."""
        for _account, _region, backend in list(dms_backends.iter_backends()):
            for endpoint in list(backend.endpoints.values()):
                if endpoint.status == "creating":
                    endpoint.status = "active"  # AWS endpoints are usable as soon as they are created
            for instance in list(backend.replication_instances.values()):
                since = self._instances.setdefault(instance.arn, now)
                if instance.status == "creating" and now >= since + _seconds(self.timing.instance_creating):
                    instance.status = "available"
            for task in list(backend.replication_tasks.values()):
                track = self._tasks.setdefault(task.arn, _TaskTrack(created_at=now, since=now))
                while (step := self._next_step(task, track)) is not None and now >= track.since + step[0]:
                    due = track.since + step[0]
                    self._set_status(task, track, step[1], due)
                    if step[1] == "stopped":
                        track.stop_date, track.stop_reason = due, step[2]

    def _next_step(
        self, task: FakeReplicationTask, track: _TaskTrack
    ) -> tuple[timedelta, str, str | None] | None:
        """(delay, next status, stop reason) from the task's current status, or None if it stays put."""
        timing = self.timing
        if task.status == "creating":
            return _seconds(timing.task_creating), "ready", None
        if task.status == "starting":
            return _seconds(timing.task_starting), "running", None
        if task.status == "running" and task.migration_type == "full-load":
            return _seconds(timing.full_load_running), "stopped", FULL_LOAD_FINISHED
        if task.status == "stopping":
            return _seconds(timing.task_stopping), "stopped", "Stop Reason NORMAL"
        if task.status == "modifying":
            return _seconds(timing.task_modifying), track.previous_status or "ready", None
        return None

    # Helpers

    def _task(
        self, backend: DatabaseMigrationServiceBackend, arn: str | None
    ) -> tuple[FakeReplicationTask, _TaskTrack]:
        task = backend.replication_tasks.get(arn or "")
        if task is None:
            raise DmsError("ResourceNotFoundFault", "Replication task could not be found.")
        return task, self._tasks[task.arn]

    @staticmethod
    def _statistics_task(
        backend: DatabaseMigrationServiceBackend, task: FakeReplicationTask, track: _TaskTrack
    ) -> StatisticsTask | None:
        """What the statistics count for a task: nothing before its first start, or without an S3 target."""
        # moto keys endpoints by their identifier, not their ARN.
        endpoint = next((e for e in backend.endpoints.values() if e.endpoint_arn == task.target_endpoint_arn), None)
        target = S3Target.from_settings(endpoint.s3_settings) if endpoint is not None else None
        if track.start_date is None or target is None:
            return None
        return StatisticsTask(
            arn=task.arn,
            account_id=backend.account_id,
            region=backend.region_name,
            target=target,
            selection=SelectionRules.parse(task.table_mappings),
            full_load=task.migration_type in ("full-load", "full-load-and-cdc"),
            full_load_start=track.start_date,
            full_load_end=track.stop_date if track.stop_reason == FULL_LOAD_FINISHED else None,
        )

    @staticmethod
    def _set_status(task: FakeReplicationTask, track: _TaskTrack, status: str, at: datetime) -> None:
        task.status, track.since = status, at

    @staticmethod
    def _record_cdc(track: _TaskTrack, params: dict) -> None:
        if params.get("CdcStartTime") is not None:
            track.cdc_start_position = _position_from_time(params["CdcStartTime"])
        elif params.get("CdcStartPosition"):
            track.cdc_start_position = params["CdcStartPosition"]
        if params.get("CdcStopPosition"):
            track.cdc_stop_position = params["CdcStopPosition"]

    @staticmethod
    def _checkpoint(view: dict, track: _TaskTrack, now: datetime) -> str | None:
        """A CDC task that has run has a checkpoint: the last moment it applied changes."""
        if view.get("MigrationType") == "full-load" or track.start_date is None:
            return track.recovery_checkpoint
        running = view.get("Status") in ("running", "stopping")
        last = now if running else track.stop_date or track.start_date
        track.recovery_checkpoint = f"checkpoint:V1#localaws#{last.strftime('%Y-%m-%dT%H:%M:%S')}"
        return track.recovery_checkpoint


def _without_nulls(value):
    """AWS leaves absent members out; moto writes them as null."""
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def _statistics_max_records(value: int | None) -> int:
    if value is None:
        return STATISTICS_DEFAULT_MAX_RECORDS
    low, high = STATISTICS_MAX_RECORDS
    if not low <= value <= high:
        raise DmsError(
            "InvalidParameterValueException", f"MaxRecords must be between {low} and {high}, got {value}."
        )
    return value


def _statistics_filters(filters: list[dict]) -> list[tuple[str, list[str]]]:
    """(TableStatistics member, accepted values) for each filter; the filters combine as AND."""
    unknown = sorted({f.get("Name") for f in filters} - set(STATISTICS_FILTERS), key=str)
    if unknown:
        raise DmsError(
            "InvalidParameterValueException",
            f"Invalid filter name(s) {unknown}; valid names: {', '.join(STATISTICS_FILTERS)}.",
        )
    return [(STATISTICS_FILTERS[f["Name"]], list(f.get("Values") or [])) for f in filters]


def _statistics_marker(schema: str, table: str) -> str:
    """An opaque Marker naming the last table of a page; the next page starts after it."""
    return base64.urlsafe_b64encode(json.dumps([schema, table]).encode()).decode()


def _statistics_marker_table(marker: str | None) -> tuple[str, str] | None:
    if not marker:
        return None
    try:
        schema, table = json.loads(base64.urlsafe_b64decode(marker.encode()))
    except (ValueError, TypeError):  # bad base64 or JSON, or not a pair
        raise DmsError("InvalidParameterValueException", "Invalid Marker.") from None
    return str(schema), str(table)


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def _position_from_time(value: float | str) -> str:
    """CdcStartTime (epoch seconds on the wire) in the date form CdcStartPosition accepts."""
    if isinstance(value, (int, float)):
        moment = datetime.fromtimestamp(value, UTC)
    else:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment.strftime("%Y-%m-%dT%H:%M:%S")
