"""StartReplicationTask for a PostgreSQL source and an S3 target: what DMS refuses, and what the task then does.

Refusals (errors as botocore's DMS model and the service name them; InvalidParameterValueException is the
service's common error for a bad parameter value, e.g. "Invalid CdcStartPosition format"):

- a time start: CdcStartTime, or a CdcStartPosition in date form. "PostgreSQL as a source doesn't support a custom
  CDC start time" (CHAP_Task.CDC, "Performing replication starting from a CDC start point");
- a CdcStartPosition that is neither an LSN (``4AF/B00000D0``) nor a checkpoint (``checkpoint:V1#1#000004AF/
  B00000D0#0#0#*#0#0``) (CHAP_Task.CDC, "Determining a CDC native start point");
- a CDC-only task on a SlotName without a start position, and a start position without a SlotName
  (PostgreSQLSettings.SlotName: "DMS verifies that the specified logical replication slot exists before
  starting the CDC load task. It also verifies that the task was created with a valid setting of
  CdcStartPosition ... DMS raises an error"; StartReplicationTask.CdcStartPosition: "a logical replication slot
  should already be created and associated with the source endpoint");
- a missing slot, a slot of another database, a slot made with a plugin DMS does not read (it reads
  ``test_decoding`` or ``pglogical``, PostgreSQLSettings.PluginName) or with another plugin than PluginName
  names, and a slot that has an active connection (CHAP_Source.PostgreSQL, "Using native CDC start points":
  "make sure that this slot doesn't have any active connections");
- resume-processing of a task that never ran ("resume-processing is only available for previously executed
  tasks", StartReplicationTask.StartReplicationTaskType).

A source that cannot be reached is not refused here: as on AWS, the task starts and then fails with the
connection error as its LastFailureMessage.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime

from localaws.dms_decoding import parse_lsn
from localaws.dms_mappings import ChangeSequenceColumns, SelectionRules
from localaws.dms_postgres import PLUGINS, POSTGRES_ENGINES, PostgresSource, SourceError, resolve_source, slot_state
from localaws.dms_replication import ReplicationPlan, TaskProgress
from localaws.dms_s3_target import S3TargetSettings

INVALID_STATE = "InvalidResourceStateFault"
INVALID_VALUE = "InvalidParameterValueException"
INVALID_COMBINATION = "InvalidParameterCombinationException"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$")
READABLE_PLUGINS = ("test_decoding", "pglogical")


class DmsError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def replicates(source_endpoint, target_endpoint) -> bool:
    """Whether localaws runs a data plane for these endpoints: a PostgreSQL source and an S3 target."""
    return (
        source_endpoint is not None
        and target_endpoint is not None
        and source_endpoint.engine_name in POSTGRES_ENGINES
        and target_endpoint.engine_name == "s3"
        and S3TargetSettings.from_settings(target_endpoint.s3_settings) is not None
    )


def start_position(text: str) -> int:
    """A PostgreSQL CdcStartPosition (an LSN, or a checkpoint holding one) as an LSN; DmsError otherwise."""
    value = text.strip()
    if _DATE.match(value):
        raise DmsError(
            INVALID_VALUE,
            f"CdcStartPosition {value!r} is a time. PostgreSQL as a source doesn't support a custom CDC start time: "
            "give the LSN where CDC starts (e.g. the slot's consistent point, '0/1AF7CB8') or a checkpoint.",
        )
    if value.startswith("checkpoint:"):
        parts = value.split("#")
        try:
            return parse_lsn(parts[2])
        except (IndexError, ValueError):
            raise DmsError(INVALID_VALUE, f"Invalid CdcStartPosition format: {value!r} is not a checkpoint.") from None
    try:
        return parse_lsn(value)
    except ValueError:
        raise DmsError(
            INVALID_VALUE,
            f"Invalid CdcStartPosition format: {value!r} is not a PostgreSQL LSN (like '4AF/B00000D0') or a "
            "checkpoint.",
        ) from None


def check_start_position(params: dict, stored_position: str | None) -> int | None:
    """The refusals that need no connection, for any task on a PostgreSQL source: a time start, and a position
    that is not an LSN or a checkpoint. Returns the position given (or stored on the task) as an LSN."""
    if params.get("CdcStartTime") is not None:
        raise DmsError(
            INVALID_VALUE,
            "CdcStartTime is not supported for a PostgreSQL source: \"PostgreSQL as a source doesn't support a "
            "custom CDC start time\". Give CdcStartPosition as an LSN.",
        )
    resume = params.get("StartReplicationTaskType") == "resume-processing"
    given = params.get("CdcStartPosition") or (stored_position if not resume else None)
    return start_position(given) if given else None


def plan_start(
    *,
    task,
    source_endpoint,
    target_endpoint,
    params: dict,
    stored_position: str | None,
    progress: TaskProgress,
    now: datetime,
    running_at: datetime,
    account_id: str,
    region: str,
    secret_value: Callable[[str], str],
    slot_in_use_by: Callable[[tuple, str], str | None],
) -> ReplicationPlan:
    """Check a start of a PostgreSQL -> S3 task as DMS does and return what its thread does; DmsError if refused."""
    start_type = params.get("StartReplicationTaskType") or "start-replication"
    migration = task.migration_type
    full_load = migration in ("full-load", "full-load-and-cdc")
    cdc = migration in ("cdc", "full-load-and-cdc")
    if start_type == "resume-processing" and not progress.ever_ran:
        raise DmsError(
            INVALID_STATE,
            f"Replication task {task.id} has never run: resume-processing is only available for previously "
            "executed tasks. Start it with start-replication.",
        )
    lsn = check_start_position(params, stored_position)
    try:
        source = resolve_source(source_endpoint, secret_value)
    except SourceError as error:
        raise DmsError(INVALID_STATE, f"Source endpoint {source_endpoint.endpoint_identifier}: {error}") from None
    if source.plugin_name is not None and source.plugin_name not in PLUGINS:
        raise DmsError(INVALID_VALUE, f"PluginName {source.plugin_name!r} is not one of {sorted(PLUGINS)}.")

    if start_type == "resume-processing" and lsn is None:
        # Resume from the last checkpoint; a task stopped before it acknowledged anything resumes where it began.
        lsn = progress.checkpoint_lsn
        if lsn is None and stored_position:
            lsn = start_position(stored_position)
    if cdc and lsn is not None and source.slot_name is None and start_type != "resume-processing":
        raise DmsError(
            INVALID_VALUE,
            "A CdcStartPosition on a PostgreSQL source needs a logical replication slot created beforehand: set "
            "PostgreSQLSettings.SlotName on the source endpoint.",
        )
    if migration == "cdc" and source.slot_name and lsn is None:
        raise DmsError(
            INVALID_VALUE,
            f"The source endpoint names slot {source.slot_name}, but the task has no CdcStartPosition: give the LSN "
            "where CDC starts.",
        )
    if source.slot_name and cdc:
        _check_slot(source, task.arn, slot_in_use_by)
    target = S3TargetSettings.from_settings(target_endpoint.s3_settings)
    return ReplicationPlan(
        task_arn=task.arn,
        task_id=task.id,
        account_id=account_id,
        region=region,
        full_load=full_load,
        cdc=cdc,
        source=source,
        target=target,
        selection=SelectionRules.parse(task.table_mappings),
        sequences=ChangeSequenceColumns.parse(task.table_mappings),
        running_at=running_at,
        task_start=now,
        slot=source.slot_name,
        new_own_slot=start_type != "resume-processing",
        start_lsn=lsn if cdc else None,
    )


def _check_slot(source: PostgresSource, task_arn: str, slot_in_use_by: Callable[[tuple, str], str | None]) -> None:
    slot = source.slot_name
    try:
        conn = source.connect()
    except SourceError:
        return  # unreachable: the task starts and fails on its connection, as on AWS
    with conn:
        state = slot_state(conn, slot)
        wal_level = conn.execute("SHOW wal_level").fetchone()[0]
    where = f"in database {source.database} at {source.host}:{source.port}"
    if state is None:
        hint = (
            " (wal_level is not logical, so the server cannot decode at all)"
            if wal_level != "logical"
            else f"; create it beforehand, e.g. SELECT pg_create_logical_replication_slot('{slot}', 'test_decoding')"
        )
        raise DmsError(INVALID_STATE, f"Replication slot {slot} does not exist {where}{hint}.")
    if state.slot_type != "logical" or state.database != source.database:
        raise DmsError(
            INVALID_STATE,
            f"Replication slot {slot} is a {state.slot_type} slot of database {state.database}, not a logical slot "
            f"of {source.database}.",
        )
    if state.plugin not in READABLE_PLUGINS:
        raise DmsError(
            INVALID_STATE,
            f"Replication slot {slot} was created with plugin {state.plugin}; DMS reads only slots made with "
            "test_decoding or pglogical. Create the slot with test_decoding.",
        )
    wanted = PLUGINS.get(source.plugin_name or "")
    if wanted and state.plugin != wanted:
        raise DmsError(
            INVALID_STATE,
            f"Replication slot {slot} was created with plugin {state.plugin}, but the endpoint's PluginName is "
            f"{source.plugin_name}.",
        )
    if state.plugin != "test_decoding":
        raise DmsError(INVALID_STATE, f"Replication slot {slot} uses {state.plugin}; localaws decodes test_decoding.")
    if state.active:
        raise DmsError(
            INVALID_STATE,
            f"Replication slot {slot} is active (PID {state.active_pid}): another consumer is reading it. Close that "
            "connection before starting the task.",
        )
    other = slot_in_use_by((*source.address, slot), task_arn)
    if other is not None:
        raise DmsError(INVALID_STATE, f"Replication slot {slot} is in use by running replication task {other}.")
