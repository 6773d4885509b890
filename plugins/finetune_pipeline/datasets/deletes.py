"""Iceberg v2 position delete files: writing them, reading them back, and committing them with the data.

A bucket merged on read (see :mod:`.merge_on_read`) keeps its data files and masks the rows a delta replaced
or deleted with a position delete file: rows of ``(file_path, pos)``, the data file and the 0-based row
position in it, field ids 2147483546 and 2147483545, sorted by ``file_path`` then ``pos`` (Iceberg table
spec, "Position Delete Files": https://iceberg.apache.org/spec/#position-delete-files). Every reader of
the table applies them: pyiceberg's scans, Spark, Trino, Athena.

pyiceberg 0.12 reads position deletes in its scans but has no API to write them, so this module writes the
Parquet file itself and commits it through a small subclass of pyiceberg's overwrite producer whose added
manifest has content ``deletes``. Each data file has at most one delete file: a new one holds the old
positions and the new ones, and replaces it in the same commit, so a reader opens one delete file per data
file, and a delete file is removed together with its data file (none is ever left dangling).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PATH_FIELD_ID = 2147483546
POS_FIELD_ID = 2147483545
# ``pos`` is a long, as the spec has it (pyiceberg's own POSITIONAL_DELETE_SCHEMA declares an int).
DELETE_SCHEMA = pa.schema(
    [
        pa.field("file_path", pa.string(), nullable=False, metadata={"PARQUET:field_id": str(PATH_FIELD_ID)}),
        pa.field("pos", pa.int64(), nullable=False, metadata={"PARQUET:field_id": str(POS_FIELD_ID)}),
    ]
)


def deleted_positions(io, task) -> np.ndarray:
    """The positions of ``task``'s data file that its delete files mask, sorted, unique (int64)."""
    path = task.file.file_path
    found = []
    for delete_file in task.delete_files:
        with io.new_input(delete_file.file_path).open() as stream:
            table = pq.ParquetFile(stream).read(columns=["file_path", "pos"], use_threads=False)
        if table.num_rows == 0:
            continue
        paths = table.column("file_path").to_numpy(zero_copy_only=False)
        found.append(table.column("pos").to_numpy()[paths == path])
    if not found:
        return np.zeros(0, np.int64)
    return np.unique(np.concatenate(found).astype(np.int64))


def write_delete_file(io, location: str, token: str, bucket: int, spec_id: int, data_path: str,
                      positions: np.ndarray, properties: dict[str, str]):
    """One position delete file masking ``positions`` (sorted, unique) of the data file ``data_path``, as an
    Iceberg ``DataFile`` of content POSITION_DELETES.

    Its ``file_path`` bounds are the full path, untruncated: readers then match it to that one data file
    (pyiceberg's delete index by path) instead of to every file of the bucket."""
    from pyiceberg.conversions import to_bytes
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
    from pyiceberg.typedef import Record
    from pyiceberg.types import LongType, StringType

    name = data_path.rsplit("/", 1)[-1].removesuffix(".parquet")
    path = f"{location}/data/_bucket={bucket}/{token}-deletes-{name}.parquet"
    table = pa.table([pa.array(np.full(len(positions), data_path, dtype=object), pa.string()),
                      pa.array(positions, pa.int64())], schema=DELETE_SCHEMA)  # fmt: skip
    with io.new_output(path).create(overwrite=True) as stream:
        pq.write_table(
            table,
            stream,
            compression=properties.get("write.parquet.compression-codec", "zstd"),
            compression_level=int(properties.get("write.parquet.compression-level", "1")),
        )
        size = stream.tell()
    n = len(positions)
    encoded_path = to_bytes(StringType(), data_path)
    return DataFile.from_args(
        content=DataFileContent.POSITION_DELETES,
        file_path=path,
        file_format=FileFormat.PARQUET,
        partition=Record(bucket),
        record_count=n,
        file_size_in_bytes=size,
        value_counts={PATH_FIELD_ID: n, POS_FIELD_ID: n},
        null_value_counts={PATH_FIELD_ID: 0, POS_FIELD_ID: 0},
        lower_bounds={PATH_FIELD_ID: encoded_path, POS_FIELD_ID: to_bytes(LongType(), int(positions[0]))},
        upper_bounds={PATH_FIELD_ID: encoded_path, POS_FIELD_ID: to_bytes(LongType(), int(positions[-1]))},
        sort_order_id=None,
        spec_id=spec_id,
        equality_ids=None,
        key_metadata=None,
    )


def row_delta(transaction, snapshot_properties: dict[str, str]):
    """A snapshot producer that adds and removes data files and position delete files in one snapshot.

    The classes are defined here, not at the top level, so importing this module does not import pyiceberg.
    """
    from pyiceberg.manifest import ManifestContent, ManifestEntry, ManifestEntryStatus, ManifestWriterV2
    from pyiceberg.table.snapshots import Operation, SnapshotSummaryCollector, Summary, update_snapshot_summaries
    from pyiceberg.table.update.snapshot import _OverwriteFiles

    class DeleteManifestWriter(ManifestWriterV2):
        """A v2 manifest of delete files (pyiceberg's writer only writes content ``data``)."""

        def content(self) -> ManifestContent:
            return ManifestContent.DELETES

        @property
        def _meta(self) -> dict[str, str]:
            return {**super()._meta, "content": "deletes"}

    class RowDelta(_OverwriteFiles):
        """pyiceberg's overwrite, plus position delete files added and removed (see the module docstring)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._added_delete_files: list[Any] = []
            self._removed_delete_files: set[Any] = set()

        def append_delete_file(self, delete_file) -> RowDelta:
            self._added_delete_files.append(delete_file)
            return self

        def remove_delete_file(self, delete_file) -> RowDelta:
            self._removed_delete_files.add(delete_file)
            return self

        def _writer(self, content: ManifestContent, spec_id: int):
            if content == ManifestContent.DATA:
                return self.new_manifest_writer(self.spec(spec_id))
            return DeleteManifestWriter(self.spec(spec_id), self.schema(), self.new_manifest_output(),
                                        self._snapshot_id, self._compression)  # fmt: skip

        def _build_delete_files_partition_predicate(self) -> None:
            # Manifests holding a removed delete file must be rewritten too: prune by their partitions as well.
            removed_data = self._deleted_data_files
            self._deleted_data_files = removed_data | self._removed_delete_files
            try:
                super()._build_delete_files_partition_predicate()
            finally:
                self._deleted_data_files = removed_data

        def _existing_manifests(self) -> list[Any]:
            removed = self._deleted_data_files | self._removed_delete_files
            snapshot = self._transaction.table_metadata.snapshot_by_name(name=self._target_branch)
            if snapshot is None:
                return []
            evaluators: dict[int, Any] = {}
            out = []
            for manifest in snapshot.manifests(io=self._io):
                spec_id = manifest.partition_spec_id
                if spec_id not in evaluators:
                    evaluators[spec_id] = self._build_manifest_evaluator(spec_id)
                if not evaluators[spec_id](manifest):
                    out.append(manifest)
                    continue
                entries = manifest.fetch_manifest_entry(io=self._io, discard_deleted=True)
                kept = [e for e in entries if e.data_file not in removed]
                if len(kept) == len(entries):
                    out.append(manifest)
                    continue
                if not kept:
                    continue
                with self._writer(manifest.content, spec_id) as writer:
                    for e in kept:
                        writer.add_entry(ManifestEntry.from_args(
                            status=ManifestEntryStatus.EXISTING, snapshot_id=e.snapshot_id,
                            sequence_number=e.sequence_number, file_sequence_number=e.file_sequence_number,
                            data_file=e.data_file,
                        ))  # fmt: skip
                out.append(writer.to_manifest_file())
            return out

        def _removed_delete_entries(self) -> list[Any]:
            if not self._removed_delete_files or self._parent_snapshot_id is None:
                return []
            parent = self._transaction.table_metadata.snapshot_by_id(self._parent_snapshot_id)
            out = []
            for manifest in parent.manifests(self._io):
                if manifest.content != ManifestContent.DELETES:
                    continue
                for e in manifest.fetch_manifest_entry(self._io, discard_deleted=True):
                    if e.data_file in self._removed_delete_files:
                        out.append(ManifestEntry.from_args(
                            status=ManifestEntryStatus.DELETED, snapshot_id=self._snapshot_id,
                            sequence_number=e.sequence_number, file_sequence_number=e.file_sequence_number,
                            data_file=e.data_file,
                        ))  # fmt: skip
            if len(out) != len(self._removed_delete_files):
                from pyiceberg.exceptions import ValidationException

                raise ValidationException("a delete file to remove is not in the parent snapshot")
            return out

        def _manifests(self) -> list[Any]:
            self._build_delete_files_partition_predicate()
            groups: dict[tuple[ManifestContent, int], list[Any]] = defaultdict(list)
            # Files written by this sync carry the table's current spec (as in pyiceberg's own producers).
            spec_id = self._transaction.table_metadata.default_spec_id
            for f in self._added_data_files:
                groups[(ManifestContent.DATA, spec_id)].append(self._added(f))
            for f in self._added_delete_files:
                groups[(ManifestContent.DELETES, spec_id)].append(self._added(f))
            for e in self._deleted_entries():
                groups[(ManifestContent.DATA, e.data_file.spec_id)].append(e)
            for e in self._removed_delete_entries():
                groups[(ManifestContent.DELETES, e.data_file.spec_id)].append(e)
            manifests = []
            for (content, spec_id), entries in groups.items():
                with self._writer(content, spec_id) as writer:
                    for e in entries:
                        writer.add_entry(e)
                manifests.append(writer.to_manifest_file())
            return manifests + self._existing_manifests()

        def _added(self, f):
            return ManifestEntry.from_args(status=ManifestEntryStatus.ADDED, snapshot_id=self._snapshot_id,
                                           sequence_number=None, file_sequence_number=None, data_file=f)  # fmt: skip

        def _summary(self, snapshot_properties: dict[str, str] = None) -> Summary:
            meta = self._transaction.table_metadata
            schema, specs = meta.schema(), meta.specs()
            collector = SnapshotSummaryCollector()
            for f in [*self._added_data_files, *self._added_delete_files]:
                collector.add_file(data_file=f, partition_spec=meta.spec(), schema=schema)
            for f in [*self._deleted_data_files, *self._removed_delete_files]:
                collector.remove_file(data_file=f, partition_spec=specs[f.spec_id], schema=schema)
            parent = meta.snapshot_by_id(self._parent_snapshot_id) if self._parent_snapshot_id is not None else None
            return update_snapshot_summaries(
                summary=Summary(operation=self._operation, **collector.build(), **(snapshot_properties or {})),
                previous_summary=parent.summary if parent is not None else None,
            )

    operation = Operation.OVERWRITE if transaction.table_metadata.current_snapshot() is not None else Operation.APPEND
    return RowDelta(operation=operation, transaction=transaction, io=transaction._table.io,
                    snapshot_properties=snapshot_properties)  # fmt: skip
