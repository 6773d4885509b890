"""A dataset table as an Apache Iceberg table: its schema, its pending commit, and its retention.

Each table is identity-partitioned by ``_bucket`` (see :mod:`.partition`), so replacing a bucket is replacing
one partition's files. A version of a table is one snapshot, committed in one transaction with everything
that belongs to it: the data files added and removed (only the buckets the delta touched), any columns the
contract added, the snapshot summary (version, counts, files applied, validation result and the sync
position) and the version's tag. The catalog commits that transaction only if the table's ``main`` branch
still points where the sync read it from (``AssertRefSnapshotId``): a concurrent sync gets
``CommitFailedException`` instead of overwriting.

pyiceberg's own commit retry is turned off on our tables (``commit.retry.num-retries = 0``): a retry rebases
the data onto the other writer's snapshot, which our merge was not computed against, and drops the tag. The
sync retries from the top instead (:func:`.sync.run_sync`).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from finetune_pipeline.datasets.catalog import CatalogSpec
from finetune_pipeline.datasets.contracts import TableContract
from finetune_pipeline.datasets.deletes import row_delta
from finetune_pipeline.datasets.dms_target import SEQUENCE_COLUMN, TIMESTAMP_COLUMN
from finetune_pipeline.datasets.partition import Bucketing
from finetune_pipeline.datasets.store import ObjectStore

log = logging.getLogger(__name__)

BUCKET_COLUMN = "_bucket"
SUMMARY_PREFIX = "finetune."
BUCKETING_PROPERTY = "finetune.bucketing"
# The contract (schema.table) a table holds, so a reader can list a dataset's tables.
TABLE_PROPERTY = "finetune.table"
MAIN = "main"
TABLE_PROPERTIES = {
    # Never let pyiceberg rebase a failed commit: see the module docstring.
    "commit.retry.num-retries": "0",
    "write.parquet.compression-codec": "zstd",
    "write.parquet.compression-level": "1",
    # Old metadata.json files are removed by the commit itself; data files by retention.
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "50",
}


class SchemaMismatchError(ValueError):
    """The table in the catalog does not fit the contract; the message names each column."""


class ConcurrentCommitError(Exception):
    """Another writer committed to the table after this sync read it; nothing of this sync was committed."""


# ------------------------------------------------------------------------------------------------ schema


def iceberg_type(t: pa.DataType):
    """The Iceberg type a contract column is stored as (int8 and int16 widen to int)."""
    from pyiceberg import types as it

    if pa.types.is_boolean(t):
        return it.BooleanType()
    if pa.types.is_integer(t):
        return it.LongType() if t.bit_width > 32 or pa.types.is_uint32(t) else it.IntegerType()
    if pa.types.is_float32(t):
        return it.FloatType()
    if pa.types.is_floating(t):
        return it.DoubleType()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return it.StringType()
    if pa.types.is_date(t):
        return it.DateType()
    if pa.types.is_timestamp(t):
        return it.TimestamptzType() if t.tz else it.TimestampType()
    raise TypeError(f"no Iceberg type for {t}")


def _columns(contract: TableContract) -> list[tuple[str, Any]]:
    from pyiceberg import types as it

    return [
        *((c.name, iceberg_type(c.arrow_type)) for c in contract.columns),
        (TIMESTAMP_COLUMN, it.TimestamptzType()),
        (SEQUENCE_COLUMN, it.StringType()),
        (BUCKET_COLUMN, it.IntegerType()),
    ]


def table_schema(contract: TableContract):
    """A new table's schema: the contract's columns, the change's commit time and sequence, the bucket.

    Every column is optional in Iceberg: nullability is a contract check, which reports instead of refusing.
    """
    from pyiceberg.schema import Schema
    from pyiceberg.types import NestedField

    return Schema(
        *(NestedField(i, name, t, required=False) for i, (name, t) in enumerate(_columns(contract), start=1))
    )


def partition_spec(schema):
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.transforms import IdentityTransform

    source = schema.find_field(BUCKET_COLUMN).field_id
    return PartitionSpec(
        PartitionField(source_id=source, field_id=1000, transform=IdentityTransform(), name=BUCKET_COLUMN)
    )


def check_schema(schema, spec, contract: TableContract, where: str) -> list[tuple[str, Any]]:
    """The columns to add to an existing table for this contract; anything else that differs fails.

    A nullable column the contract gained is added (older snapshots keep their own schema). A column whose
    type changed, one the contract dropped, or a table not partitioned by ``_bucket`` is refused, naming
    the columns: a silent cast or drop would change what older versions mean.
    """
    from pyiceberg.transforms import IdentityTransform

    wanted = dict(_columns(contract))
    have = {f.name: f.field_type for f in schema.fields}
    problems = []
    for name, t in wanted.items():
        if name in have and have[name] != t:
            problems.append(f"{name}: the table has {have[name]}, the contract needs {t}")
    dropped = sorted(set(have) - set(wanted))
    if dropped:
        problems.append(f"{', '.join(dropped)}: in the table but not in the contract")
    fields = list(spec.fields)
    bucket = schema.find_field(BUCKET_COLUMN).field_id if BUCKET_COLUMN in have else None
    if not (len(fields) == 1 and fields[0].source_id == bucket and isinstance(fields[0].transform, IdentityTransform)):
        problems.append(f"{BUCKET_COLUMN}: the table must be partitioned by identity({BUCKET_COLUMN}), it is {spec}")
    if problems:
        raise SchemaMismatchError(f"{where} does not fit contract {contract.table}: " + "; ".join(problems))
    return [(name, t) for name, t in wanted.items() if name not in have]


def arrow_schema(schema) -> pa.Schema:
    """The Arrow schema data files are written with: Iceberg's types, with field ids."""
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    return schema_to_pyarrow(schema, include_field_ids=True)


# ------------------------------------------------------------------------------------------------ heads


def summary_of(snapshot) -> dict[str, str]:
    if snapshot is None:
        return {}
    return {k: v for k, v in snapshot.summary.additional_properties.items()}


@dataclass
class TableHead:
    """One table as the catalog has it now: its ``main`` snapshot and what that snapshot's summary says."""

    name: str
    identifier: tuple[str, str]
    table: Any | None
    snapshot: Any | None

    @property
    def summary(self) -> dict[str, str]:
        return summary_of(self.snapshot)

    @property
    def version(self) -> str | None:
        return self.summary.get(SUMMARY_PREFIX + "version")

    @property
    def snapshot_id(self) -> int | None:
        return self.snapshot.snapshot_id if self.snapshot is not None else None

    @property
    def bucketing(self) -> Bucketing | None:
        if self.table is None or BUCKETING_PROPERTY not in self.table.properties:
            return None
        return Bucketing.from_json(self.table.properties[BUCKETING_PROPERTY])

    def tags(self) -> dict[str, int]:
        if self.table is None:
            return {}
        return {
            name: ref.snapshot_id
            for name, ref in self.table.refs().items()
            if ref.snapshot_ref_type.value == "tag"
        }


def load_head(catalog, spec: CatalogSpec, name: str) -> TableHead:
    """The table of contract ``name`` (``schema.table``), or a head with no table before the first sync."""
    from pyiceberg.exceptions import NoSuchTableError

    identifier = spec.identifier(name)
    try:
        table = catalog.load_table(identifier)
    except NoSuchTableError:
        return TableHead(name, identifier, None, None)
    return TableHead(name, identifier, table, table.current_snapshot())


# ------------------------------------------------------------------------------------------------ writes


# A data file's row groups: at most ROW_GROUP_ROWS rows, and at least MIN_ROW_GROUP_ROWS but for the last.
ROW_GROUP_ROWS = 1_048_576
MIN_ROW_GROUP_ROWS = 131_072


class DataFileWriter:
    """Writes one bucket's rows as Parquet data files of about ``target_bytes`` each, straight through the
    table's FileIO, and describes each as an Iceberg ``DataFile`` (with column statistics)."""

    def __init__(self, write: TableWrite, bucket: int, target_bytes: int) -> None:
        self.write = write
        self.bucket = bucket
        self.target_bytes = target_bytes
        self.files: list[Any] = []
        self._writer: pq.ParquetWriter | None = None
        self._stream = None
        self._path: str | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._pending.append(table.cast(self.write.file_schema))
        self._pending_rows += table.num_rows
        if self._pending_rows >= MIN_ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        """Write what :meth:`add` gathered: the pieces of a bucket merged apart come in small tables, and
        every row group costs a reader a read and its statistics, so they are written together."""
        if not self._pending:
            return
        if self._writer is None:
            self._open()
        self._writer.write_table(pa.concat_tables(self._pending), row_group_size=ROW_GROUP_ROWS)
        self._pending, self._pending_rows = [], 0
        if self._stream.tell() >= self.target_bytes:
            self._finish()

    def _open(self) -> None:
        w = self.write
        self._path = f"{w.location}/data/{BUCKET_COLUMN}={self.bucket}/{w.token}-{len(self.files):05d}.parquet"
        self._stream = w.io.new_output(self._path).create(overwrite=True)
        schema = w.file_schema
        self._writer = pq.ParquetWriter(
            self._stream,
            schema=schema,
            compression=w.properties.get("write.parquet.compression-codec", "zstd"),
            compression_level=int(w.properties.get("write.parquet.compression-level", "1")),
            use_dictionary=[n for n in schema.names if n not in w.key_columns] if w.key_columns else True,
            column_encoding={n: "DELTA_BINARY_PACKED" for n in w.key_columns} or None,
        )

    def _finish(self) -> None:
        from pyiceberg.io.pyarrow import (
            compute_statistics_plan,
            data_file_statistics_from_parquet_metadata,
            parquet_path_to_id_mapping,
        )
        from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
        from pyiceberg.typedef import Record

        w = self.write
        self._writer.close()
        size = self._stream.tell()
        self._stream.close()
        stats = data_file_statistics_from_parquet_metadata(
            parquet_metadata=self._writer.writer.metadata,
            stats_columns=compute_statistics_plan(w.schema, w.properties),
            parquet_column_mapping=parquet_path_to_id_mapping(w.schema),
        )
        self.files.append(
            DataFile.from_args(
                content=DataFileContent.DATA,
                file_path=self._path,
                file_format=FileFormat.PARQUET,
                partition=Record(self.bucket),
                file_size_in_bytes=size,
                sort_order_id=None,
                spec_id=w.spec_id,
                equality_ids=None,
                key_metadata=None,
                **stats.to_serialized_dict(),
            )
        )
        self._writer = self._stream = self._path = None

    def close(self) -> list[Any]:
        self._flush()
        if self._writer is not None:
            self._finish()
        return self.files

    def abort(self) -> None:
        self._pending, self._pending_rows = [], 0
        if self._writer is not None:
            self._writer.close()
            self._stream.close()
            self._writer = self._stream = None


def _delta_encoded(contract: TableContract) -> list[str]:
    """The integer key columns. A merge on read reads them from every data file of a bucket it touches;
    written in key order, DELTA_BINARY_PACKED stores them in a fraction of the bytes of a dictionary and
    decodes them several times faster, for every Parquet reader (a standard encoding)."""
    return [c.name for c in contract.columns if c.name in contract.primary_key and pa.types.is_integer(c.arrow_type)]


@dataclass
class TableWrite:
    """One table's pending commit: a transaction on the table (or one that creates it) and its new files.

    Opened before any data is written, so files are written with the schema the commit gives the table.
    """

    head: TableHead
    transaction: Any
    bucketing: Bucketing
    added_columns: list[str] = field(default_factory=list)
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    # Integer key columns, written DELTA_BINARY_PACKED (see _delta_encoded).
    key_columns: list[str] = field(default_factory=list)

    @classmethod
    def open(
        cls, catalog, spec: CatalogSpec, head: TableHead, contract: TableContract, bucketing: Bucketing
    ) -> TableWrite:
        """Begin the commit: check (or create) the table and stage any column the contract added.

        :raises SchemaMismatchError: the existing table does not fit the contract.
        """
        if head.table is None:
            schema = table_schema(contract)
            tx = catalog.create_table_transaction(
                head.identifier,
                schema=schema,
                location=spec.table_location(head.name),
                partition_spec=partition_spec(schema),
                properties={
                    **TABLE_PROPERTIES,
                    BUCKETING_PROPERTY: bucketing.to_json(),
                    TABLE_PROPERTY: contract.table,
                    "format-version": "2",
                },
            )
            return cls(head, tx, bucketing, key_columns=_delta_encoded(contract))
        table = head.table
        where = f"table {'.'.join(head.identifier)}"
        new = check_schema(table.schema(), table.spec(), contract, where)
        if table.properties.get("commit.retry.num-retries") != "0":
            # A table created elsewhere: turn pyiceberg's rebasing retry off first (see module docstring).
            table.transaction().set_properties(TABLE_PROPERTIES).commit_transaction()
            head.table = table = table.refresh()
            head.snapshot = table.current_snapshot()
        tx = table.transaction()
        if new:
            with tx.update_schema() as update:
                for name, t in new:
                    update.add_column(name, t)
            log.info("%s: adding column(s) %s", where, [n for n, _ in new])
        return cls(head, tx, bucketing, added_columns=[n for n, _ in new], key_columns=_delta_encoded(contract))

    @property
    def metadata(self):
        return self.transaction.table_metadata

    # Cached: a transaction rebuilds its metadata from its updates on every access, and every file written
    # asks for these; nothing changes them between open() and the commit.
    @cached_property
    def schema(self):
        return self.metadata.schema()

    @cached_property
    def file_schema(self) -> pa.Schema:
        return arrow_schema(self.schema)

    @cached_property
    def properties(self) -> dict[str, str]:
        return self.metadata.properties

    @cached_property
    def location(self) -> str:
        return self.metadata.location.rstrip("/")

    @cached_property
    def spec_id(self) -> int:
        return self.metadata.default_spec_id

    @property
    def io(self):
        return self.transaction._table.io

    def base_files(self) -> dict[int, list[Any]]:
        """The data files of each bucket in the snapshot this sync read (none for a new table)."""
        if self.head.snapshot is None:
            return {}
        out: dict[int, list[Any]] = {}
        for task in self.head.table.scan(snapshot_id=self.head.snapshot_id).plan_files():
            out.setdefault(int(task.file.partition[0]), []).append(task)
        return out

    def read(self, tasks: Iterable[Any]) -> Iterator[pa.RecordBatch]:
        """The rows of some of the base snapshot's files, in the table's schema as the sync read it."""
        from pyiceberg.expressions import AlwaysTrue
        from pyiceberg.io.pyarrow import ArrowScan

        table = self.head.table
        scan = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue())
        yield from scan.to_record_batches(list(tasks))

    def writer(self, bucket: int, target_bytes: int) -> DataFileWriter:
        return DataFileWriter(self, bucket, target_bytes)

    def commit(self, *, deleted: list[Any], added: list[Any], summary: dict[str, str], tag: str,
               added_deletes: list[Any] = (), removed_deletes: list[Any] = ()) -> int:
        """One commit: replace ``deleted`` by ``added`` (or none: a snapshot that only records the version),
        add the position delete files ``added_deletes`` and drop ``removed_deletes`` (see :mod:`.deletes`),
        with ``summary`` on the snapshot and ``tag`` on it. Returns the snapshot id.

        :raises ConcurrentCommitError: another writer moved ``main`` (or created the table) first.
        """
        from pyiceberg.exceptions import CommitFailedException, TableAlreadyExistsError
        from pyiceberg.table.update.snapshot import ManageSnapshots

        tx = self.transaction
        if tag in self.metadata.refs:
            raise ConcurrentCommitError(f"table {'.'.join(self.head.identifier)} already has tag {tag}")
        if added_deletes or removed_deletes:
            producer = row_delta(tx, summary)
        else:
            update = tx.update_snapshot(snapshot_properties=summary)
            producer = update.overwrite() if deleted else update.fast_append()
        with producer as files:
            for f in deleted:
                files.delete_data_file(f)
            for f in added:
                files.append_data_file(f)
            for f in added_deletes:
                files.append_delete_file(f)
            for f in removed_deletes:
                files.remove_delete_file(f)
            snapshot_id = files.snapshot_id
        # The producer asserts main is still the snapshot this sync read; pyiceberg keeps one ref assertion
        # per transaction, and a version always moves main, so that one fences the tag too.
        ManageSnapshots(tx).create_tag(snapshot_id, tag).commit()
        try:
            tx.commit_transaction()
        except (CommitFailedException, TableAlreadyExistsError) as error:
            raise ConcurrentCommitError(
                f"table {'.'.join(self.head.identifier)} changed while this sync ran ({error}); nothing of it "
                "was committed"
            ) from None
        return snapshot_id


# ------------------------------------------------------------------------------------------------ retention


def expire_versions(catalog, identifier: tuple[str, str], keep: set[str], is_version) -> list[str]:
    """Remove the version tags not in ``keep`` and expire every snapshot no remaining ref points to.

    One commit; it needs no assertion on ``main``: ``main``'s snapshot is always kept, and a concurrent
    commit's new snapshot is not among those named here.
    """
    from pyiceberg.table.update.snapshot import ExpireSnapshots, ManageSnapshots

    table = catalog.load_table(identifier)
    refs = table.refs()
    drop = sorted(n for n, r in refs.items() if r.snapshot_ref_type.value == "tag" and is_version(n) and n not in keep)
    kept = {r.snapshot_id for n, r in refs.items() if n not in drop}
    expire = [s.snapshot_id for s in table.snapshots() if s.snapshot_id not in kept]
    if not drop and not expire:
        return []
    tx = table.transaction()
    if drop:
        manage = ManageSnapshots(tx)
        for name in drop:
            manage.remove_tag(name)
        manage.commit()
    if expire:
        ExpireSnapshots(tx).by_ids(expire).commit()
    tx.commit_transaction()
    log.info("%s: removed tags %s, expired %d snapshot(s)", ".".join(identifier), drop, len(expire))
    return drop


def referenced_files(table) -> set[str]:
    """Every file a snapshot of the table still needs: manifest lists, manifests, data files and position
    delete files (a delete manifest lists those as its entries)."""
    io = table.io
    out: set[str] = set()
    seen: set[str] = set()
    for snapshot in table.snapshots():
        out.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(io):
            out.add(manifest.manifest_path)
            if manifest.manifest_path in seen:
                continue
            seen.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=True):
                out.add(entry.data_file.file_path)
    return out


def delete_unreferenced(
    store: ObjectStore,
    prefix: str,
    referenced_keys: set[str],
    cutoff: datetime,
    only: tuple[str, ...] = (".parquet", ".avro", ".json"),
    keep_suffixes: tuple[str, ...] = (".metadata.json",),
) -> int:
    """Delete the objects under ``prefix`` that nothing references and that were last written before
    ``cutoff``. Table metadata files (``*.metadata.json``) are never touched: the catalog points at one."""
    deleted = 0
    for info in store.list_after(prefix):
        key = info.key
        if key in referenced_keys or not key.endswith(only) or key.endswith(keep_suffixes):
            continue
        if info.last_modified is None or info.last_modified >= cutoff:
            continue
        store.delete(key)
        deleted += 1
    return deleted


def orphan_cutoff(table, now: datetime, grace: timedelta) -> datetime:
    """Files written before this may go: before the newest commit (a writer that started after it writes
    newer files) and older than the grace (a writer that rebases its files onto a new head, as other engines
    do when they retry a commit, never keeps them longer)."""
    head = table.current_snapshot()
    newest = datetime.fromtimestamp(head.timestamp_ms / 1000, UTC) if head is not None else now
    return min(now, newest) - grace


def snapshot_summaries(table) -> list[dict[str, str]]:
    return [summary_of(s) for s in table.snapshots()]


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
