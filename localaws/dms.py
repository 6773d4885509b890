"""DMS on moto, with the statuses moving on the virtual clock as the real service's do.

moto's DMS leaves a replication task ``creating`` forever (so botocore's ``replication_task_ready`` waiter,
which the Amazon provider uses, never returns), starts and stops tasks instantly, reports endpoints as
``creating``, ignores CDC start positions and has no DescribeTableStatistics. Rather than patching
site-packages, every DMS request (``X-Amz-Target: AmazonDMSv20160101.*``) passes through :class:`DmsLifecycle`,
which first moves moto's objects along (``creating -> ready``, ``starting -> running``, ``stopping ->
stopped``, a ``full-load`` task stopping by itself, instances ``creating -> available``, endpoints
``active``), answers Start/Stop/ModifyReplicationTask itself, adds the CDC fields to the task descriptions moto
returns, and answers DescribeTableStatistics.

A task from a PostgreSQL source to an S3 target really replicates: StartReplicationTask checks the start as DMS
does (:mod:`localaws.dms_start`) and runs the task's data plane on a thread (:mod:`localaws.dms_replication`),
which writes the files, counts what it wrote (:mod:`localaws.dms_statistics`) and keeps the RecoveryCheckpoint.
Other sources (MySQL) only move through their statuses.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import sys
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from moto.dms.models import DatabaseMigrationServiceBackend, FakeReplicationTask, dms_backends
from moto.moto_api import state_manager

from localaws import dms_statistics
from localaws.clock import VirtualClock
from localaws.dms_postgres import POSTGRES_ENGINES
from localaws.dms_replication import Replication, ReplicationPlan, TaskProgress
from localaws.dms_start import (
    INVALID_COMBINATION,
    INVALID_STATE,
    DmsError,
    check_start_position,
    plan_start,
    replicates,
)
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
FATAL_ERROR = "Stop Reason FATAL_ERROR"
# Members of the engine settings shapes that botocore marks sensitive, which AWS never returns.
PASSWORD_MEMBERS = ("Password", "AsmPassword", "SecurityDbEncryption", "SaslPassword", "SslClientKeyPassword",
                    "AuthPassword")
WORKER_JOIN_SECONDS = 30
# ModifyEndpoint's members and the attribute of moto's Endpoint each sets.
ENDPOINT_MEMBERS = {
    "EndpointType": "endpoint_type",
    "EngineName": "engine_name",
    "Username": "username",
    "Password": "password",
    "ServerName": "server_name",
    "Port": "port",
    "DatabaseName": "database_name",
    "ExtraConnectionAttributes": "extra_connection_attributes",
    "CertificateArn": "certificate_arn",
    "SslMode": "ssl_mode",
    "ServiceAccessRoleArn": "service_access_role_arn",
    "S3Settings": "s3_settings",
    "PostgreSQLSettings": "postgre_sql_settings",
    "MySQLSettings": "my_sql_settings",
}
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
    last_failure: str | None = None
    progress: TaskProgress = field(default_factory=TaskProgress)
    plan: ReplicationPlan | None = None  # what the data plane of a PostgreSQL -> S3 task does
    worker: Replication | None = None  # its thread, while it runs

    def __getstate__(self) -> dict:
        # A state snapshot (localaws.persistence) keeps the plan and the progress, not the thread: a restored
        # server starts the data plane again from the task's checkpoint (resume_replications).
        return {**self.__dict__, "worker": None}


class DmsLifecycle:
    """Moves moto's DMS resources through their real statuses on the virtual clock."""

    def __init__(self, clock: VirtualClock, timing: DmsTiming):
        self.clock = clock
        self.timing = timing
        self._lock = threading.RLock()
        self._tasks: dict[str, _TaskTrack] = {}
        self._instances: dict[str, datetime] = {}
        # moto makes a replication instance "available" the moment it is read; let the clock decide instead.
        state_manager.set_transition(
            "dms::replicationinstance", {"progression": "manual", "times": sys.maxsize}
        )

    def reset(self) -> None:
        self.shutdown()
        with self._lock:
            self._tasks.clear()
            self._instances.clear()

    def shutdown(self) -> None:
        """Stop every task's data plane (the server is stopping, or moto forgets everything)."""
        with self._lock:
            workers = [track.worker for track in self._tasks.values() if track.worker is not None]
        for worker in workers:
            worker.stop(graceful=False)
        for worker in workers:
            worker.join(WORKER_JOIN_SECONDS)

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
            "ModifyEndpoint": self._modify_endpoint,
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
                if operation == "CreateEndpoint":
                    _check_credentials(params)
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
        """StartReplicationTask: ``starting``, then ``running`` after ``task_starting`` seconds.

        A PostgreSQL -> S3 task is checked as DMS checks it (:func:`localaws.dms_start.plan_start`) and its data
        plane starts on a thread, which replicates once the task is running.
        """
        task, track = self._task(backend, params.get("ReplicationTaskArn"))
        if params.get("CdcStartTime") is not None and params.get("CdcStartPosition"):
            raise DmsError(INVALID_COMBINATION, "Specify either CdcStartTime or CdcStartPosition, not both.")
        if task.status not in STARTABLE:
            raise DmsError(
                INVALID_STATE,
                f"Replication task {task.id} is {task.status}; it can only be started when "
                f"{', '.join(STARTABLE)}.",
            )
        source, target = self._endpoint(backend, task.source_endpoint_arn), self._endpoint(
            backend, task.target_endpoint_arn
        )
        start_type = params.get("StartReplicationTaskType") or "start-replication"
        worker = None
        if source is not None and source.engine_name in POSTGRES_ENGINES:
            check_start_position(params, track.cdc_start_position)
        if replicates(source, target):
            progress = track.progress
            if start_type != "resume-processing":
                # A start or a reload begins again: new counters, but the task's own slot is known (to recreate it).
                progress = TaskProgress(own_slot=progress.own_slot, ever_ran=progress.ever_ran)
            plan = plan_start(
                task=task,
                source_endpoint=source,
                target_endpoint=target,
                params=params,
                stored_position=track.cdc_start_position,
                progress=progress,
                now=now,
                running_at=now + _seconds(self.timing.task_starting),
                account_id=backend.account_id,
                region=backend.region_name,
                secret_value=_secret_reader(backend.account_id, backend.region_name),
                slot_in_use_by=self._slot_in_use_by,
            )
            track.progress = progress
            worker = self._worker(task, track, plan)
        self._record_cdc(track, params)
        self._set_status(task, track, "starting", now)
        track.start_date, track.stop_date, track.stop_reason, track.last_failure = now, None, None, None
        track.plan, track.worker = (worker.plan if worker else None), worker
        if worker is not None:
            worker.start()
        log.info("DMS task %s starting (%s)", task.id, start_type)
        return {"ReplicationTask": self._task_view(task.to_dict(), track, now)}

    def _stop_task(self, backend: DatabaseMigrationServiceBackend, params: dict, now: datetime) -> dict:
        """StopReplicationTask: ``stopping``, then ``stopped`` after ``task_stopping`` seconds and once the data
        plane has written what it buffered."""
        task, track = self._task(backend, params.get("ReplicationTaskArn"))
        if task.status != "running":
            raise DmsError(
                INVALID_STATE,
                f"Replication task {task.id} is {task.status}; only a running task can be stopped.",
            )
        self._set_status(task, track, "stopping", now)
        if track.worker is not None:
            track.worker.stop(graceful=True)
        return {"ReplicationTask": self._task_view(task.to_dict(), track, now)}

    def _worker(self, task: FakeReplicationTask, track: _TaskTrack, plan: ReplicationPlan) -> Replication:
        worker: Replication | None = None

        def failed(message: str) -> None:
            self._task_failed(task, track, worker, message)

        def finished() -> None:
            self._full_load_finished(task, track, worker)

        worker = Replication(plan, self.clock, track.progress, on_failed=failed, on_finished=finished)
        return worker

    def resume_replications(self) -> None:
        """After a restored state snapshot: start again the data plane of every task that was starting or running,
        from its checkpoint (what it acknowledged last; DMS also resumes from its checkpoint after a restart)."""
        with self._lock:
            for _account, _region, backend in list(dms_backends.iter_backends()):
                for task in backend.replication_tasks.values():
                    track = self._tasks.get(task.arn)
                    if track is None or track.plan is None or task.status not in ("starting", "running"):
                        continue
                    start = track.progress.checkpoint_lsn or track.plan.start_lsn
                    plan = dataclasses.replace(track.plan, start_lsn=start, new_own_slot=False,
                                               full_load=track.plan.full_load and not track.progress.checkpoint_lsn)
                    track.plan, track.worker = plan, self._worker(task, track, plan)
                    track.worker.start()
                    log.info("DMS task %s: replication resumed after the restart", task.id)

    # Reports from a task's data plane

    def _task_failed(self, task: FakeReplicationTask, track: _TaskTrack, worker, message: str) -> None:
        with self._lock:
            if track.worker is not worker or task.status not in ("starting", "running", "stopping"):
                return
            now = self.clock.now()
            self._advance(now)
            log.warning("DMS task %s failed: %s", task.id, message)
            self._set_status(task, track, "failed", now)
            track.stop_date, track.stop_reason, track.last_failure = now, FATAL_ERROR, message

    def _full_load_finished(self, task: FakeReplicationTask, track: _TaskTrack, worker) -> None:
        with self._lock:
            if track.worker is not worker or task.status != "running":
                return
            now = self.clock.now()
            self._set_status(task, track, "stopped", now)
            track.stop_date, track.stop_reason = now, FULL_LOAD_FINISHED

    def _slot_in_use_by(self, slot: tuple, task_arn: str) -> str | None:
        """The id of another running task reading the same slot of the same database, if any."""
        for arn, track in self._tasks.items():
            worker = track.worker
            running = arn != task_arn and worker is not None and worker.is_alive()
            if running and worker.plan.slot is not None and (*worker.plan.source.address, worker.plan.slot) == slot:
                return worker.plan.task_id
        return None

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

    def _modify_endpoint(self, backend: DatabaseMigrationServiceBackend, params: dict, now: datetime) -> dict:
        """ModifyEndpoint (moto lacks it). Settings given replace the stored ones of the same name and add new
        ones; with ExactSettings they replace all of them (API_ModifyEndpoint, ExactSettings)."""
        endpoint = self._endpoint(backend, params.get("EndpointArn", ""))
        if endpoint is None:
            raise DmsError("ResourceNotFoundFault", "Endpoint could not be found.")
        merged = {**_credentials_of(endpoint), **params}
        _check_credentials(merged)
        for member, attribute in ENDPOINT_MEMBERS.items():
            if member not in params:
                continue
            value = params[member]
            if member.endswith("Settings") and not params.get("ExactSettings"):
                value = {**(getattr(endpoint, attribute) or {}), **value}
            setattr(endpoint, attribute, value)
        payload = {"Endpoint": endpoint.to_dict()}
        return json.loads(self._after_moto("ModifyEndpoint", {}, Response(200, json.dumps(payload).encode())).body)

    def _describe_table_statistics(
        self, backend: DatabaseMigrationServiceBackend, params: dict, now: datetime
    ) -> dict:
        """DescribeTableStatistics (moto lacks it): what the task's data plane counted as it wrote each file."""
        task, track = self._task(backend, params.get("ReplicationTaskArn"))
        limit = _statistics_max_records(params.get("MaxRecords"))
        wanted = _statistics_filters(params.get("Filters") or [])
        after = _statistics_marker_table(params.get("Marker"))
        full_load = task.migration_type in ("full-load", "full-load-and-cdc")
        progress = track.progress if track.start_date is not None else None
        tables = [
            table
            for table in dms_statistics.describe(progress, full_load, now)
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
                INVALID_STATE,
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
            if operation == "DeleteReplicationTask" and track is not None and track.worker is not None:
                track.worker.stop(graceful=False)
            payload["ReplicationTask"] = self._task_view(payload["ReplicationTask"], track, now)
        for endpoint in [payload.get("Endpoint"), *payload.get("Endpoints", [])]:
            if endpoint and endpoint.get("Status") == "creating":
                endpoint["Status"] = "active"
            for settings in (endpoint or {}).values():
                # DMS never returns a password (moto echoes the ones given in the engine settings).
                if isinstance(settings, dict):
                    for secret in PASSWORD_MEMBERS:
                        settings.pop(secret, None)
        return response.with_body(json.dumps(_without_nulls(payload)).encode())

    def _task_view(self, task: dict, track: _TaskTrack | None, now: datetime) -> dict:
        """moto's task dict with virtual dates and the CDC fields of the ``ReplicationTask`` shape."""
        view = {key: value for key, value in task.items() if value is not None}
        if track is None:
            return view
        stats = dict(view.get("ReplicationTaskStats") or {})
        load_start, load_finish = track.start_date, track.stop_date
        if track.worker is not None:
            stats.update(self._load_progress(track, view.get("MigrationType")))
            load_start, load_finish = self._load_dates(track)
        for name, value in (
            ("StartDate", track.start_date),
            ("FreshStartDate", track.start_date),
            ("FullLoadStartDate", load_start),
            ("StopDate", track.stop_date),
            ("FullLoadFinishDate", load_finish),
        ):
            stats[name] = value.timestamp() if value else None
        view["ReplicationTaskStats"] = {key: value for key, value in stats.items() if value is not None}
        extra = {
            "ReplicationTaskCreationDate": track.created_at.timestamp(),
            "ReplicationTaskStartDate": track.start_date.timestamp() if track.start_date else None,
            "StopReason": track.stop_reason,
            "LastFailureMessage": track.last_failure,
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
                    if step[1] == "running":
                        track.progress.ever_ran = True  # resume-processing is now allowed
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
        if task.status == "running" and task.migration_type == "full-load" and track.worker is None:
            return _seconds(timing.full_load_running), "stopped", FULL_LOAD_FINISHED
        if task.status == "stopping":
            if track.worker is not None and track.worker.is_alive():
                return None  # stopped once the data plane has written what it buffered
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
    def _load_progress(track: _TaskTrack, migration_type: str | None) -> dict:
        """ReplicationTaskStats' table counts from the data plane's progress."""
        if migration_type == "cdc":
            return {"FullLoadProgressPercent": 100, "TablesLoaded": 0, "TablesLoading": 0, "TablesQueued": 0}
        with track.progress.lock:
            states = [counters.state for counters in track.progress.counters.values()]
        loaded = states.count("Table completed")
        return {
            "FullLoadProgressPercent": int(100 * loaded / len(states)) if states else 0,
            "TablesLoaded": loaded,
            "TablesLoading": states.count("Full load"),
            "TablesQueued": states.count("Before load"),
            "TablesErrored": 0,
        }

    @staticmethod
    def _load_dates(track: _TaskTrack) -> tuple[datetime | None, datetime | None]:
        with track.progress.lock:
            counters = list(track.progress.counters.values())
        starts = [c.full_load_start for c in counters if c.full_load_start]
        ends = [c.full_load_end for c in counters if c.full_load_end]
        done = starts and len(ends) == len(starts)
        return (min(starts) if starts else None), (max(ends) if done else None)

    @staticmethod
    def _endpoint(backend: DatabaseMigrationServiceBackend, arn: str):
        # moto keys endpoints by their identifier, not their ARN.
        return next((e for e in backend.endpoints.values() if e.endpoint_arn == arn), None)

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
        """A CDC task that has run has a checkpoint: with a data plane, the position it acknowledged last;
        otherwise the last moment it ran."""
        if track.worker is not None:
            return track.progress.checkpoint() if view.get("MigrationType") != "full-load" else None
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


def _secret_reader(account_id: str, region: str):
    """Reads a secret's SecretString from localaws's own Secrets Manager, as DMS reads SecretsManagerSecretId."""

    def read(secret_id: str) -> str:
        from moto.secretsmanager.models import secretsmanager_backends

        from localaws.dms_postgres import SourceError

        try:
            value = secretsmanager_backends[account_id][region].get_secret_value(secret_id, None, None)
        except Exception as error:  # noqa: BLE001 - moto's not-found and access errors alike
            raise SourceError(f"Cannot read secret {secret_id}: {error}") from None
        return value.get("SecretString") or ""

    return read


def _credentials_of(endpoint) -> dict:
    """An endpoint's stored connection members, as CreateEndpoint would have taken them."""
    stored = {"Username": endpoint.username, "Password": endpoint.password, "ServerName": endpoint.server_name,
              "Port": endpoint.port, "PostgreSQLSettings": endpoint.postgre_sql_settings,
              "MySQLSettings": endpoint.my_sql_settings}  # fmt: skip
    return {key: value for key, value in stored.items() if value}


def _check_credentials(params: dict) -> None:
    """A database endpoint takes clear-text credentials or a secret, "one of the following sets of values, but not
    both", and a secret needs the role DMS reads it with (security_iam_secretsmanager)."""
    for settings in (params.get("PostgreSQLSettings"), params.get("MySQLSettings")):
        settings = settings or {}
        if not settings.get("SecretsManagerSecretId"):
            continue
        plain = [name for name in ("Username", "Password", "ServerName", "Port")
                 if params.get(name) or settings.get(name)]  # fmt: skip
        if plain:
            raise DmsError(
                INVALID_COMBINATION,
                f"SecretsManagerSecretId cannot be combined with {', '.join(plain)}: the secret holds the "
                "connection details.",
            )
        if not settings.get("SecretsManagerAccessRoleArn"):
            raise DmsError(
                "InvalidParameterValueException",
                "SecretsManagerSecretId needs SecretsManagerAccessRoleArn, the role DMS reads the secret with.",
            )
