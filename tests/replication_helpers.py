"""Helpers for the tests of localaws's DMS data plane: a fresh source database, a task between it and a fresh
bucket, and the landed files read back with the product's own reader (finetune_pipeline.datasets.dms_format),
so that what localaws writes and what the pipeline reads are tested together."""

from __future__ import annotations

import json
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
from source_db_helpers import SourceDb, wait_for

from finetune_pipeline.datasets.contracts import TableContract
from finetune_pipeline.datasets.dms_format import CsvSettings, FileKind, classify, event_schema, read_events
from localaws import control

ROLE_ARN = "arn:aws:iam::123456789012:role/dms-s3"
FOLDER = "landing"


def change_seq_mappings(*tables: str, sequence: str = "_dms_seq") -> dict:
    """The pipeline's mappings shape: include each table and add the $AR_H_CHANGE_SEQ column."""
    rules = []
    for table in tables:
        schema, name = table.split(".")
        locator = {"schema-name": schema, "table-name": name}
        rules.append({"rule-type": "selection", "rule-name": f"i-{table}", "object-locator": locator,
                      "rule-action": "include"})
        rules.append({"rule-type": "transformation", "rule-name": f"s-{table}", "rule-target": "column",
                      "object-locator": locator, "rule-action": "add-column", "value": sequence,
                      "expression": "$AR_H_CHANGE_SEQ", "data-type": {"type": "string", "length": 50}})
    for number, rule in enumerate(rules, start=1):
        rule["rule-id"] = str(number)
    return {"rules": rules}


PIPELINE_S3 = {
    "DataFormat": "parquet",
    "TimestampColumnName": "_dms_ts",
    "IncludeOpForFullLoad": True,
    "ParquetTimestampInMillisecond": False,
    "CdcMaxBatchInterval": 60,
}


@dataclass
class Task:
    """A replication task from a SourceDb to a fresh bucket, driven over real boto3 clients."""

    dms: object
    s3: object
    endpoint_url: str
    arn: str
    bucket: str
    timing: dict
    s3_settings: dict = field(default_factory=dict)
    start_lsn: str | None = None
    source: SourceDb | None = None

    def advance(self, seconds: float) -> None:
        control.advance_clock(self.endpoint_url, seconds)

    def describe(self) -> dict:
        return self.dms.describe_replication_tasks(
            Filters=[{"Name": "replication-task-arn", "Values": [self.arn]}]
        )["ReplicationTasks"][0]

    def status(self) -> str:
        return self.describe()["Status"]

    def start(self, start_type: str = "start-replication", run: bool = True, **params) -> dict:
        started = self.dms.start_replication_task(
            ReplicationTaskArn=self.arn, StartReplicationTaskType=start_type, **params
        )["ReplicationTask"]
        if run:
            self.advance(self.timing["task_starting"])
            wait_for(lambda: self.status() == "running", what="the task to run")
        return started

    def stop(self) -> None:
        self.dms.stop_replication_task(ReplicationTaskArn=self.arn)
        self.advance(self.timing["task_stopping"])
        wait_for(lambda: self.status() == "stopped", what="the task to stop")

    def files(self, prefix: str = FOLDER) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def flush(self) -> None:
        """Once the task has decoded everything committed so far, move the clock past CdcMaxBatchInterval, so
        that every open CDC file is written (a file opens when its first change is decoded, as on DMS)."""
        self.caught_up()
        self.advance(float(self.s3_settings.get("CdcMaxBatchInterval", 60)) + 1)

    def caught_up(self) -> None:
        """Wait until the task has decoded everything committed in the source so far."""
        if self.source is not None:
            lsn = self.source.current_lsn()
            wait_for(lambda: self.source.decoded_up_to(lsn), what="the task to decode what was committed")

    def statistics(self) -> dict[str, dict]:
        tables = self.dms.describe_table_statistics(ReplicationTaskArn=self.arn)["TableStatistics"]
        return {f"{t['SchemaName']}.{t['TableName']}": t for t in tables}

    def events(self, contract: TableContract, csv: CsvSettings | None = None, kinds=(FileKind.CDC,)) -> pa.Table:
        """Every landed file of the contract's table, in key order, read as typed change events."""
        schema, table = contract.table.split(".")
        prefix = f"{FOLDER}/{schema}/{table}/"
        batches = []
        with tempfile.TemporaryDirectory() as tmp:
            for key in self.files(prefix):
                found = classify(key, prefix)
                assert found is not None, f"{key} is not a DMS file name"
                if found.kind not in kinds:
                    continue
                path = Path(tmp) / key.rsplit("/", 1)[-1]
                path.write_bytes(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
                batches.extend(read_events(path, found, contract, csv))
        return pa.Table.from_batches(batches, schema=event_schema(contract))


def make_task(dms, s3, localaws, dms_timing, source: SourceDb, *, migration_type: str = "cdc",
              tables: tuple[str, ...] = (), mappings: dict | None = None, s3_settings: dict | None = None,
              postgres: dict | None = None, source_endpoint: dict | None = None) -> Task:  # fmt: skip
    """A ready task from ``source`` (PostgreSQLSettings ``postgres``) to a fresh bucket (``s3_settings`` over
    the pipeline's), selecting ``tables`` with the change-sequence column (or ``mappings``)."""
    suffix = uuid.uuid4().hex[:10]
    bucket = f"dms-{suffix}"
    s3.create_bucket(Bucket=bucket)
    instance = dms.create_replication_instance(
        ReplicationInstanceIdentifier=f"ri-{suffix}", ReplicationInstanceClass="dms.t3.medium"
    )["ReplicationInstance"]["ReplicationInstanceArn"]
    src = dms.create_endpoint(
        EndpointIdentifier=f"src-{suffix}", EndpointType="source",
        **(source_endpoint or source.endpoint(**(postgres or {}))),
    )["Endpoint"]["EndpointArn"]  # fmt: skip
    settings = {**PIPELINE_S3, **(s3_settings or {})}
    tgt = dms.create_endpoint(
        EndpointIdentifier=f"tgt-{suffix}", EndpointType="target", EngineName="s3",
        S3Settings={"BucketName": bucket, "BucketFolder": FOLDER, "ServiceAccessRoleArn": ROLE_ARN, **settings},
    )["Endpoint"]["EndpointArn"]  # fmt: skip
    arn = dms.create_replication_task(
        ReplicationTaskIdentifier=f"task-{suffix}", SourceEndpointArn=src, TargetEndpointArn=tgt,
        ReplicationInstanceArn=instance, MigrationType=migration_type,
        TableMappings=json.dumps(mappings or change_seq_mappings(*tables)),
    )["ReplicationTask"]["ReplicationTaskArn"]  # fmt: skip
    control.advance_clock(localaws.endpoint_url, dms_timing["task_creating"])
    task = Task(dms, s3, localaws.endpoint_url, arn, bucket, dms_timing, settings, source=source)
    wait_for(lambda: task.status() == "ready", what="the task to be ready")
    return task


def utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)
