"""DMS table statistics counted from what a replication task's S3 target holds.

The local DMS replicates no database, so DescribeTableStatistics (which moto lacks) counts the files in the
task's S3 target, as real DMS counts what it writes there. Under ``<BucketFolder>/<schema>/<table>/`` DMS puts
full-load files ``LOAD00000001.parquet|csv`` and CDC files named by time, ``20250101-120000123.parquet|csv``;
each CDC row carries its operation (I/U/D) in the ``Op`` column (Parquet) or the first field (CSV). Objects
are read in-process from moto's S3 backend, each once per ETag. Only tables that the task's selection rules
pick are listed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
from moto.s3.exceptions import MissingBucket
from moto.s3.models import FakeKey, s3_backends
from moto.utilities.utils import get_partition

log = logging.getLogger(__name__)

OP = "Op"
TABLE_COMPLETED = "Table completed"
# Data validation compares a source with a relational target; the S3 target never has it.
VALIDATION_NOT_ENABLED = "Not enabled"

_CDC_NAME = re.compile(r"^\d{8}-\d{9}\.(parquet|csv)$")
_LOAD_NAME = re.compile(r"^LOAD[0-9A-F]{8}\.(parquet|csv)$")


@dataclass(frozen=True)
class S3Target:
    """Where and how a target endpoint writes: its S3Settings ``BucketName``, ``BucketFolder``, CSV options."""

    bucket: str
    folder: str = ""
    csv_header: bool = False  # AddColumnName: the CSV files start with a row of column names
    csv_delimiter: str = ","

    @classmethod
    def from_settings(cls, settings: dict | None) -> S3Target | None:
        """The target described by an endpoint's S3Settings, or None when they name no bucket."""
        settings = settings or {}
        if not settings.get("BucketName"):
            return None
        return cls(
            bucket=settings["BucketName"],
            folder=(settings.get("BucketFolder") or "").strip("/"),
            csv_header=bool(settings.get("AddColumnName")),
            csv_delimiter=settings.get("CsvDelimiter") or ",",
        )


@dataclass(frozen=True)
class SelectionRules:
    """A task's TableMappings selection rules: a table is selected when an include or explicit rule matches it
    and no exclude rule does. Names match case-sensitively, with DMS's wildcards in include/exclude rules."""

    include: tuple[tuple[re.Pattern, re.Pattern], ...] = ()
    exclude: tuple[tuple[re.Pattern, re.Pattern], ...] = ()

    @classmethod
    def parse(cls, table_mappings: str | None) -> SelectionRules:
        try:
            rules = json.loads(table_mappings or "{}").get("rules") or []
        except (ValueError, AttributeError):
            rules = []  # AWS refuses such mappings at CreateReplicationTask; moto stores them as they come
        include, exclude = [], []
        for rule in rules:
            if not isinstance(rule, dict) or rule.get("rule-type") != "selection":
                continue
            action = rule.get("rule-action")
            locator = rule.get("object-locator") or {}
            wildcards = action != "explicit"  # an explicit rule names exactly one table
            names = (
                _name_pattern(str(locator.get("schema-name", "%")), wildcards),
                _name_pattern(str(locator.get("table-name", "%")), wildcards),
            )
            if action in ("include", "explicit"):
                include.append(names)
            elif action == "exclude":
                exclude.append(names)
        return cls(tuple(include), tuple(exclude))

    def selects(self, schema: str, table: str) -> bool:
        def matches(rules: tuple[tuple[re.Pattern, re.Pattern], ...]) -> bool:
            return any(s.fullmatch(schema) and t.fullmatch(table) for s, t in rules)

        return matches(self.include) and not matches(self.exclude)


@dataclass(frozen=True)
class StatisticsTask:
    """What the statistics need to know about a started replication task."""

    arn: str
    account_id: str
    region: str
    target: S3Target
    selection: SelectionRules
    full_load: bool  # MigrationType is full-load or full-load-and-cdc
    full_load_start: datetime | None = None
    full_load_end: datetime | None = None


@dataclass(frozen=True)
class _Counts:
    inserts: int = 0
    updates: int = 0
    deletes: int = 0
    full_load_rows: int = 0

    def __add__(self, other: _Counts) -> _Counts:
        return _Counts(
            self.inserts + other.inserts,
            self.updates + other.updates,
            self.deletes + other.deletes,
            self.full_load_rows + other.full_load_rows,
        )


class DmsTableStatistics:
    """Counts each selected table's changes in a task's S3 target, reading every object once per ETag."""

    def __init__(self) -> None:
        # (bucket, key) -> (etag, target, counts): replaced when the object changes, so it never outgrows S3.
        self._files: dict[tuple[str, str], tuple[str, S3Target, _Counts]] = {}
        # (task ARN, schema, table) -> (counts, when they last changed on the virtual clock)
        self._changed: dict[tuple[str, str, str], tuple[_Counts, datetime]] = {}

    def reset(self) -> None:
        self._files.clear()
        self._changed.clear()

    def describe(self, task: StatisticsTask, now: datetime) -> list[dict]:
        """The ``TableStatistics`` members of DescribeTableStatistics for ``task``, sorted by schema and table."""
        statistics = []
        for (schema, table), objects in sorted(self._table_files(task).items()):
            counts = sum((self._file_counts(task, key) for key in objects), _Counts())
            statistics.append(self._table_statistics(task, schema, table, counts, now))
        return statistics

    def _table_files(self, task: StatisticsTask) -> dict[tuple[str, str], list[FakeKey]]:
        """The DMS data files directly under ``<folder>/<schema>/<table>/`` of each selected table."""
        backend = s3_backends[task.account_id][get_partition(task.region)]
        try:
            bucket = backend.get_bucket(task.target.bucket)
        except MissingBucket:
            return {}
        prefix = f"{task.target.folder}/" if task.target.folder else ""
        tables: dict[tuple[str, str], list[FakeKey]] = {}
        for name, key in bucket.keys.items():
            parts = name[len(prefix) :].split("/") if name.startswith(prefix) else []
            if len(parts) != 3 or not isinstance(key, FakeKey):  # a FakeDeleteMarker is a deleted object
                continue
            schema, table, file_name = parts
            if (_CDC_NAME.match(file_name) or _LOAD_NAME.match(file_name)) and task.selection.selects(
                schema, table
            ):
                tables.setdefault((schema, table), []).append(key)
        return tables

    def _file_counts(self, task: StatisticsTask, key: FakeKey) -> _Counts:
        is_load = key.name.rsplit("/", 1)[-1].startswith("LOAD")
        if is_load and not task.full_load:
            return _Counts()  # a CDC-only task loads nothing, whatever else is in its folder
        cache_key = (task.target.bucket, key.name)
        cached = self._files.get(cache_key)
        if cached is not None and cached[:2] == (key.etag, task.target):
            return cached[2]
        try:
            counts = _read_counts(key.name, key.value, is_load, task.target)
        except (pa.ArrowException, ValueError, csv.Error) as error:
            # Real DMS never writes such a file; count nothing for it rather than fail the whole call.
            log.warning("DMS statistics: skipping unreadable s3://%s/%s: %s", task.target.bucket, key.name, error)
            counts = _Counts()
        self._files[cache_key] = (key.etag, task.target, counts)
        return counts

    def _table_statistics(
        self, task: StatisticsTask, schema: str, table: str, counts: _Counts, now: datetime
    ) -> dict:
        # LastUpdateTime is when DMS last updated the table's statistics record, not when the table changed.
        previous = self._changed.get((task.arn, schema, table))
        updated = previous[1] if previous is not None and previous[0] == counts else now
        self._changed[(task.arn, schema, table)] = (counts, updated)
        loaded = task.full_load and counts.full_load_rows > 0
        statistics = {
            "SchemaName": schema,
            "TableName": table,
            "Inserts": counts.inserts,
            "Deletes": counts.deletes,
            "Updates": counts.updates,
            "Ddls": 0,  # the S3 target writes no DDL
            # An S3 target applies every change it captures, by writing it to a file.
            "AppliedInserts": counts.inserts,
            "AppliedDeletes": counts.deletes,
            "AppliedUpdates": counts.updates,
            "AppliedDdls": 0,
            "FullLoadRows": counts.full_load_rows,
            "FullLoadCondtnlChkFailedRows": 0,  # only DynamoDB targets check conditions
            "FullLoadErrorRows": 0,
            "FullLoadStartTime": task.full_load_start.timestamp() if loaded and task.full_load_start else None,
            "FullLoadEndTime": task.full_load_end.timestamp() if loaded and task.full_load_end else None,
            "FullLoadReloaded": False if loaded else None,
            "LastUpdateTime": updated.timestamp(),
            # The documented states (Table does not exist | Before load | Full load | Table completed |
            # Table cancelled | Table error | Table is being reloaded) have none for ongoing replication, and the
            # AWS documentation does not say what a CDC-only task reports; with no load left to do, a table is
            # taken to be "Table completed" for CDC-only tasks too.
            "TableState": TABLE_COMPLETED,
            "ValidationPendingRecords": 0,
            "ValidationFailedRecords": 0,
            "ValidationSuspendedRecords": 0,
            "ValidationState": VALIDATION_NOT_ENABLED,
        }
        return {member: value for member, value in statistics.items() if value is not None}


def _read_counts(name: str, body: bytes, is_load: bool, target: S3Target) -> _Counts:
    """Rows of a full-load file, or the I/U/D rows of a CDC file (rows with any other Op are skipped)."""
    if name.endswith(".parquet"):
        if is_load:
            return _Counts(full_load_rows=pq.ParquetFile(io.BytesIO(body)).metadata.num_rows)
        ops = pq.read_table(io.BytesIO(body), columns=[OP]).column(OP).to_pylist()
    else:
        rows = [row for row in csv.reader(io.StringIO(body.decode("utf-8")), delimiter=target.csv_delimiter) if row]
        header = rows.pop(0) if target.csv_header and rows else None
        if is_load:
            return _Counts(full_load_rows=len(rows))
        column = header.index(OP) if header is not None else 0  # ValueError: no Op column
        ops = [row[column] for row in rows if len(row) > column]
    by_op = Counter(ops)
    return _Counts(inserts=by_op["I"], updates=by_op["U"], deletes=by_op["D"])


def _name_pattern(name: str, wildcards: bool) -> re.Pattern:
    """A table-mapping schema or table name as a regex: ``%`` any run, ``_`` one character, ``[ab]``/``[a-d]``
    a set or range (so ``[_]`` is a literal underscore)."""
    if not wildcards:
        return re.compile(re.escape(name))
    parts, i = [], 0
    while i < len(name):
        char = name[i]
        end = name.find("]", i + 2) if char == "[" else -1
        if char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        elif end > 0:
            parts.append("[" + "".join(c if c == "-" else re.escape(c) for c in name[i + 1 : end]) + "]")
            i = end
        else:
            parts.append(re.escape(char))
        i += 1
    return re.compile("".join(parts), re.DOTALL)
