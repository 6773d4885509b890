"""Synthetic landed files for the sync operator's tests: an export folder with its manifest, and change
files written straight into the landing prefix in DMS's exact S3 format (tests/change_files.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import boto3
import pyarrow as pa
from change_files import as_load, seed_changes, seed_tables
from manifest_helpers import make_export_of

from finetune_pipeline.datasets.dms_format import OP, cdc_file_name, cdc_name_time, load_file_name, write_dms_file
from finetune_pipeline.datasets.store import LocalStore, S3Store, join_key
from finetune_pipeline.pipeline.config import PipelineConfig


def seed_demo(config: PipelineConfig, endpoint_url: str, report: Callable[[str], None] = print,
              now: datetime | None = None) -> dict:
    """Write the seed export and seed CDC files; returns the snapshot position and the keys written."""
    now = now or datetime.now(UTC)
    # Recent enough that the contracts' freshness checks see live data.
    snapshot_position = (now - timedelta(minutes=30)).replace(microsecond=0)
    tables = seed_tables(n_customers=50, n_tickets=200, seed=7)

    directory = config.snowball.export_dir
    shutil.rmtree(directory, ignore_errors=True)
    export_store = LocalStore(directory)
    for name, table in tables.items():
        schema_name, table_name = name.split(".", 1)
        write_dms_file(export_store, join_key(schema_name, table_name, load_file_name(1)),
                       as_load(table, snapshot_position))
    manifest = make_export_of(directory, snapshot_position.isoformat())
    report(f"synthetic export of {len(manifest.files)} files at {directory}")

    s3 = localaws_s3(config, endpoint_url)
    bucket, landing = config.storage.bucket, config.storage.landing_prefix
    if config.storage.region == "us-east-1":
        s3.create_bucket(Bucket=bucket)
    else:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": config.storage.region})
    cdc_keys, tables = write_change_batch(config, s3, tables, snapshot_position, seed=7)
    report(f"{len(cdc_keys)} synthetic CDC files in s3://{bucket}/{landing}/")
    return {"snapshot_position": manifest.snapshot_position, "cdc_keys": cdc_keys, "tables": tables}


def localaws_s3(config: PipelineConfig, endpoint_url: str):
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=config.storage.region,
                        aws_access_key_id="localaws", aws_secret_access_key="localaws")


def write_change_batch(
    config: PipelineConfig, s3, tables: dict[str, pa.Table], start: datetime, seed: int, time_scale: float = 1.0
) -> tuple[list[str], dict[str, pa.Table]]:
    """Write one batch of seed CDC files after ``start``; return their keys and the tables as they now are.

    The next batch starts from the returned tables, so its inserts are new keys and its updates and
    deletes touch rows that exist: the stream stays consistent, as a real source's would.
    """
    landing = config.storage.landing_prefix
    landing_store = S3Store(s3, config.storage.bucket)
    keys = []
    changes = seed_changes(tables, start, n_files=3, changes_per_file=20, seed=seed, time_scale=time_scale)
    for name, files in changes.items():
        schema_name, table_name = name.split(".", 1)
        for file_time, events in files:
            key = join_key(landing, schema_name, table_name, cdc_file_name(file_time))
            write_dms_file(landing_store, key, events)
            keys.append(key)
    keys_by_table = {table.qualified_name: table.primary_key for table in config.source.tables}
    return keys, {name: _apply(table, changes.get(name, []), keys_by_table[name]) for name, table in tables.items()}


def _apply(table: pa.Table, files: list, primary_key: list[str]) -> pa.Table:
    """Replay change events onto a table: the state a source would have after them."""
    rows = {tuple(row[k] for k in primary_key): row for row in table.to_pylist()}
    for _, events in files:
        for event in events.to_pylist():
            key = tuple(event[k] for k in primary_key)
            if event[OP] == "D":
                rows.pop(key, None)
            else:
                rows[key] = {name: event[name] for name in table.column_names}
    return pa.Table.from_pylist(list(rows.values()), schema=table.schema)


def write_live_batch(
    config: PipelineConfig, s3, tables: dict[str, pa.Table], after: datetime, seed: int
) -> tuple[list[str], dict[str, pa.Table], datetime]:
    """A batch whose commits lie in the minute before now and after ``after`` (the previous batch's last),
    as a live source's do: a later batch carrying older commits than an earlier one would lose to them in
    the merge. Returns the keys, the tables as they now are, and this batch's last commit time."""
    start = max(datetime.now(UTC) - timedelta(seconds=65), after)
    keys, tables = write_change_batch(config, s3, tables, start, seed=seed, time_scale=1 / 30)
    return keys, tables, last_commit(keys)


def last_commit(keys: list[str]) -> datetime:
    """The newest CDC file time among ``keys`` (a file is named after its last commit)."""
    return max(cdc_name_time(key) for key in keys)
