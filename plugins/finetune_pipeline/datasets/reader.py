"""Reading a dataset version: the one code path the training entrypoint, the CLI and the tests use.

A version is a tag (``v000123``) on every table of the dataset; each table's tagged snapshot records, in its
summary, which tables the version spans (``finetune.dataset-tables``). A version is *published* once every
one of them carries the tag. The sync commits table by table (catalogs commit one table at a time), so a
crash between two commits leaves the tag on some tables only: such a version is refused here, and the next
sync completes it under the same number. Readers never look for "the latest file": they name a tag, or
ask for the newest published one.

Other engines read the same thing from the table metadata alone, e.g. Spark or Trino
``... FOR VERSION AS OF 'v000123'``, Athena by the tag's snapshot id, pyiceberg ``StaticTable``.

Readers with no access to the catalog (training nodes: the embedded SQLite catalog is on the Airflow machine)
open a version from its record (``<dataset>/versions/<version>.json``, written once it is published): it names
each table's metadata file, and :class:`RecordCatalog` serves those as a read-only catalog, so the same
:func:`open_version` checks the tags and reads the rows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from finetune_pipeline.datasets.iceberg_tables import SUMMARY_PREFIX, TABLE_PROPERTY, summary_of
from finetune_pipeline.datasets.state import record_key
from finetune_pipeline.datasets.store import ObjectStore, StoreError

VERSION_RE = re.compile(r"^v(\d{6,})$")
DATASET_TABLES = SUMMARY_PREFIX + "dataset-tables"


class VersionNotFound(LookupError):
    """The version does not exist, or not on every table it spans."""


def version_name(number: int) -> str:
    return f"v{number:06d}"


def version_number(name: str | None) -> int | None:
    match = VERSION_RE.match(name or "")
    return int(match.group(1)) if match else None


def is_version(name: str) -> bool:
    return VERSION_RE.match(name) is not None


@dataclass
class TableVersion:
    """One table at one version: a pinned snapshot, scanned through pyiceberg."""

    table: str
    identifier: tuple[str, ...]
    tag: str
    snapshot_id: int
    iceberg_table: Any = field(repr=False)

    @property
    def summary(self) -> dict[str, str]:
        return summary_of(self.iceberg_table.snapshot_by_id(self.snapshot_id))

    @property
    def rows(self) -> int:
        """Rows of the version: its data files' records less those their position delete files mask (the sync
        removes a delete file with its data file, so every one it references masks rows of a live file)."""
        summary = self.summary
        return int(summary.get("total-records", "0")) - int(summary.get("total-position-deletes", "0"))

    @property
    def changes_applied(self) -> int:
        """CDC events (inserts, updates, deletes) the sync had applied since the table's full load, as of this
        version: its running count, so two versions' difference is what changed between them."""
        events = json.loads(self.summary.get(SUMMARY_PREFIX + "state.cdc_events", "{}"))
        return sum(int(n) for n in events.values())

    @property
    def snapshot_rows(self) -> int | None:
        """The rows of the full load this table was built from (a rebuild starts a new count)."""
        value = json.loads(self.summary.get(SUMMARY_PREFIX + "state.snapshot_rows", "null"))
        return None if value is None else int(value)

    @property
    def metadata_location(self) -> str:
        return self.iceberg_table.metadata_location

    def scan(self, columns: list[str] | None = None, row_filter: Any = None):
        kwargs: dict[str, Any] = {"snapshot_id": self.snapshot_id}
        if columns:
            kwargs["selected_fields"] = tuple(columns)
        if row_filter is not None:
            kwargs["row_filter"] = row_filter
        return self.iceberg_table.scan(**kwargs)

    def to_arrow(self, columns: list[str] | None = None) -> pa.Table:
        """Every row of the version (with the table's schema at that snapshot)."""
        return self.scan(columns).to_arrow()

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The rows as a stream of record batches, for data bigger than memory."""
        yield from self.scan(columns).to_arrow_batch_reader()

    def files(self) -> list[str]:
        """The Parquet data files the version's snapshot is made of. Some rows of them may be masked by
        position delete files: read them through :meth:`read_files`, never as plain Parquet."""
        return [task.file.file_path for task in self.scan().plan_files()]

    def read_files(self, paths: list[str], columns: list[str] | None = None) -> pa.Table:
        """The rows of some of the version's data files (from :meth:`files`), with their delete files applied:
        how a reader that shares the files out (a training rank) reads its share."""
        from pyiceberg.expressions import AlwaysTrue
        from pyiceberg.io.pyarrow import ArrowScan

        scan = self.scan(columns)
        wanted = set(paths)
        tasks = [task for task in scan.plan_files() if task.file.file_path in wanted]
        missing = wanted - {task.file.file_path for task in tasks}
        if missing:
            raise ValueError(f"not data files of {self.table} at {self.tag}: {sorted(missing)[:5]}")
        table = self.iceberg_table
        arrow = ArrowScan(table.metadata, table.io, scan.projection(), AlwaysTrue())
        return arrow.to_table(tasks)

    def describe(self) -> dict[str, Any]:
        return {
            "identifier": ".".join(self.identifier),
            "snapshot_id": self.snapshot_id,
            "metadata_location": self.metadata_location,
            "rows": self.rows,
        }


@dataclass
class DatasetVersion:
    version: str
    tables: dict[str, TableVersion]

    @property
    def row_counts(self) -> dict[str, int]:
        return {name: t.rows for name, t in sorted(self.tables.items())}

    def files(self) -> list[str]:
        return [f for _, t in sorted(self.tables.items()) for f in t.files()]

    def describe(self) -> dict[str, Any]:
        """What the dataset Asset event carries: the tag, and each table's identifier and snapshot."""
        return {"version": self.version, "tag": self.version,
                "tables": {name: t.describe() for name, t in sorted(self.tables.items())}}


def dataset_tables(catalog, namespace: str) -> dict[str, Any]:
    """The tables the sync wrote in a namespace, by contract name (``schema.table``)."""
    out = {}
    for identifier in catalog.list_tables(namespace):
        table = catalog.load_table(identifier)
        name = table.properties.get(TABLE_PROPERTY)
        if name:
            out[name] = table
    return out


def _tags(table) -> dict[str, int]:
    return {n: r.snapshot_id for n, r in table.refs().items() if r.snapshot_ref_type.value == "tag" and is_version(n)}


def members(table, version: str) -> list[str]:
    """The tables a version spans, as its snapshot on ``table`` records them."""
    snapshot = table.snapshot_by_name(version)
    return json.loads(summary_of(snapshot).get(DATASET_TABLES, "[]")) if snapshot is not None else []


def complete_versions(tables: dict[str, Any]) -> list[str]:
    """Versions tagged on every table they span, oldest first."""
    tags = {name: _tags(t) for name, t in tables.items()}
    candidates = sorted({v for ts in tags.values() for v in ts}, key=version_number)
    out = []
    for version in candidates:
        holder = next(name for name, ts in tags.items() if version in ts)
        spans = members(tables[holder], version) or [holder]
        if all(version in tags.get(name, {}) for name in spans):
            out.append(version)
    return out


def open_version(catalog, namespace: str, version: str | None = None) -> DatasetVersion:
    """A published version of the dataset in ``namespace`` (the newest when ``version`` is None).

    :raises VersionNotFound: no such version, or not on every table it spans (an interrupted sync).
    """
    tables = dataset_tables(catalog, namespace)
    published = complete_versions(tables)
    if version is None:
        if not published:
            raise VersionNotFound(f"no dataset version is published in namespace {namespace!r} yet")
        version = published[-1]
    elif version not in published:
        tagged = sorted(name for name, t in tables.items() if version in _tags(t))
        if not tagged:
            known = ", ".join(published[-5:]) or "none"
            raise VersionNotFound(f"no dataset version {version} in namespace {namespace!r} (newest: {known})")
        spans = members(tables[tagged[0]], version)
        missing = sorted(set(spans) - set(tagged))
        raise VersionNotFound(
            f"dataset version {version} is not published: tables {missing} lack its tag (a sync was interrupted "
            "between table commits; the next sync completes it)"
        )
    holder = next(t for t in tables.values() if version in _tags(t))
    spans = members(holder, version) or [n for n, t in tables.items() if version in _tags(t)]
    out = {}
    for name in spans:
        table = tables[name]
        out[name] = TableVersion(name, tuple(table.name()), version, _tags(table)[version], table)
    return DatasetVersion(version, out)


def published_versions(catalog, namespace: str) -> list[str]:
    return complete_versions(dataset_tables(catalog, namespace))


class RecordCatalog:
    """A read-only catalog over the metadata files a version record names (pyiceberg ``StaticTable``s)."""

    def __init__(self, namespace: str, tables: dict[str, dict[str, Any]], io_properties: dict[str, str]) -> None:
        self.namespace = namespace
        self._tables = {tuple(t["identifier"].split(".")): t["metadata_location"] for t in tables.values()}
        self._properties = io_properties

    def list_tables(self, namespace: str) -> list[tuple[str, ...]]:
        return sorted(i for i in self._tables if i[0] == namespace)

    def load_table(self, identifier: tuple[str, ...]):
        from pyiceberg.table import StaticTable

        static = StaticTable.from_metadata(self._tables[tuple(identifier)], properties=self._properties)
        return StaticTable(
            identifier=tuple(identifier),
            metadata=static.metadata,
            metadata_location=static.metadata_location,
            io=static.io,
            catalog=static.catalog,
        )


def version_record(version: DatasetVersion, namespace: str) -> dict[str, Any]:
    return {"version": version.version, "namespace": namespace, **version.describe()}


def open_record(store: ObjectStore, dataset_prefix: str, version: str | None = None, access=None) -> DatasetVersion:
    """A published version from its record, without the catalog (see the module docstring); the newest
    recorded one when ``version`` is None.

    :raises VersionNotFound: no record: the version was never published, or retention removed it.
    """
    from finetune_pipeline.datasets.catalog import fileio_properties

    if version is None:
        folder = record_key(dataset_prefix, "x").rsplit("/", 1)[0] + "/"
        names = [i.key[len(folder) :].removesuffix(".json") for i in store.list_after(folder)]
        recorded = sorted((n for n in names if is_version(n)), key=version_number)
        if not recorded:
            raise VersionNotFound(f"no dataset version is recorded under {store.uri(dataset_prefix)} yet")
        version = recorded[-1]
    try:
        record = json.loads(store.get_bytes(record_key(dataset_prefix, version)))
    except StoreError:
        raise VersionNotFound(
            f"no record of dataset version {version} under {store.uri(dataset_prefix)}: not published, or "
            "older than the retained versions"
        ) from None
    catalog = RecordCatalog(record["namespace"], record["tables"], fileio_properties(access))
    return open_version(catalog, record["namespace"], version)
