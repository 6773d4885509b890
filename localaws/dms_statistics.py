"""DescribeTableStatistics from what a task's data plane counted as it wrote each file to S3.

The counters (:class:`localaws.dms_replication.TableCounters`) grow when S3 has accepted a file: inserts,
updates and deletes of CDC files, rows of full-load files, as DMS counts the changes it applied. The members
follow the ``TableStatistics`` shape of botocore's DMS model.
"""

from __future__ import annotations

from datetime import datetime

from localaws.dms_replication import FULL_LOAD, TableCounters, TaskProgress

# Data validation compares a source with a relational target; the S3 target never has it.
VALIDATION_NOT_ENABLED = "Not enabled"


def describe(progress: TaskProgress | None, full_load: bool, now: datetime) -> list[dict]:
    """The ``TableStatistics`` members for a task's tables, sorted by schema and table."""
    if progress is None:
        return []
    with progress.lock:
        tables = sorted((key, _copy(counters)) for key, counters in progress.counters.items())
    return [_statistics(schema, table, counters, full_load, now) for (schema, table), counters in tables]


def _copy(counters: TableCounters) -> TableCounters:
    return TableCounters(**vars(counters))


def _statistics(schema: str, table: str, counters: TableCounters, full_load: bool, now: datetime) -> dict:
    loaded = full_load and counters.full_load_start is not None
    done = counters.full_load_end is not None
    updated = counters.last_update or now
    statistics = {
        "SchemaName": schema,
        "TableName": table,
        "Inserts": counters.inserts,
        "Deletes": counters.deletes,
        "Updates": counters.updates,
        "Ddls": 0,  # the emulated source captures no DDL (CaptureDdls needs DMS's event trigger)
        # An S3 target applies every change it captures, by writing it to a file.
        "AppliedInserts": counters.inserts,
        "AppliedDeletes": counters.deletes,
        "AppliedUpdates": counters.updates,
        "AppliedDdls": 0,
        "FullLoadRows": counters.full_load_rows,
        "FullLoadCondtnlChkFailedRows": 0,  # only DynamoDB targets check conditions
        "FullLoadErrorRows": 0,
        "FullLoadStartTime": counters.full_load_start.timestamp() if loaded else None,
        "FullLoadEndTime": counters.full_load_end.timestamp() if loaded and done else None,
        "FullLoadReloaded": False if loaded and done else None,
        # When DMS last updated the table's statistics record, not when the table changed.
        "LastUpdateTime": updated.timestamp(),
        # The documented states (Table does not exist | Before load | Full load | Table completed | Table cancelled |
        # Table error | Table is being reloaded) have none for ongoing replication, and the AWS documentation does
        # not say what a CDC-only task reports; with no load left to do, a table is "Table completed".
        "TableState": counters.state if full_load or counters.state != FULL_LOAD else "Table completed",
        "ValidationPendingRecords": 0,
        "ValidationFailedRecords": 0,
        "ValidationSuspendedRecords": 0,
        "ValidationState": VALIDATION_NOT_ENABLED,
    }
    return {member: value for member, value in statistics.items() if value is not None}
