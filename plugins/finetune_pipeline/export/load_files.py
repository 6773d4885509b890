"""Write a table's snapshot rows as DMS full-load files, a bounded batch at a time.

The files hold what the project's writer (:func:`finetune_pipeline.datasets.dms_format.write_dms_file`) makes
of a whole table: each row group goes through its :func:`to_dms_table` (``Op``, ``_dms_ts`` as DMS's
timestamp string, ``_dms_seq``, then the table's columns) and is written by pyarrow's ``ParquetWriter``.
The batching differs: rows are buffered up to ``row_group_bytes``, and a file is closed once it passes
``max_file_bytes``, so memory stays bounded whatever the table's size. So do the encodings, which change the
bytes and not the values read back: dictionary pages only where they pay (:func:`dictionary_columns`), and
zstd (:data:`COMPRESSION`).

The constant columns are built from buffers: any Python value handed to pyarrow (``pa.scalar``,
``pa.array``) makes it import pandas, a fifth of a second the export would spend on nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from finetune_pipeline.datasets.dms_format import DMS_TS_FORMAT, OP, SEQ, TS, to_dms_table

MIB = 1024 * 1024
# DMS's S3 target closes a full-load file at MaxFileSize, 1 GB by default (CHAP_Target.S3, "MaxFileSize").
DEFAULT_MAX_FILE_BYTES = 1024 * MIB
DEFAULT_ROW_GROUP_BYTES = 32 * MIB
# The load files' codec. A choice of this export's own, not DMS's (whose S3 target writes Parquet uncompressed
# or gzip, as localaws's emulated DMS does): the files are read by pyarrow (dms_format.read_events, in the
# dataset sync), which reads any Parquet codec, and zstd is what the datasets stage already writes its Iceberg
# files with, for Athena (iceberg_tables: write.parquet.compression-codec). Measured on 1.35M rows of the
# benchmark's table, one writer: zstd level 1 0.34 s and 32.7 MB, pyarrow's default snappy 0.29 s and 71.2 MB;
# the half it saves is half the bytes to checksum, to copy onto the Snowball and to upload.
COMPRESSION = "zstd"
COMPRESSION_LEVEL = 1
# How a file's columns are judged for dictionary encoding (:func:`dictionary_columns`), from its first rows.
DICTIONARY_SAMPLE_ROWS = 16_384
DICTIONARY_ROWS_PER_VALUE = 8


def _repeated(value: bytes, n: int) -> pa.Array:
    """A string column of ``n`` times ``value``, repeated by Arrow from a scalar made of buffers."""
    one = pa.Array.from_buffers(pa.string(), 1, [None, pa.py_buffer(struct.pack("<ii", 0, len(value))),
                                                 pa.py_buffer(value)])
    return pa.repeat(one[0], n)


def dictionary_columns(table: pa.Table) -> list[str]:
    """The columns to dictionary-encode: DMS's constant ``Op`` and ``_dms_ts``, and the columns whose first
    :data:`DICTIONARY_SAMPLE_ROWS` rows hold at most one distinct value in :data:`DICTIONARY_ROWS_PER_VALUE`."""
    # Parquet's dictionary encoder hashes every value and pays that back only when values repeat: a unique
    # key, a timestamp or a free text falls back to plain pages once its dictionary is full, after hashing
    # for nothing. Measured on 1.35M rows of the benchmark's table, one writer: dictionary on every column
    # 0.49 s and 75.5 MB; on Op, _dms_ts, author (2 values) and score (1000) 0.29 s and 71.2 MB.
    sample = table.slice(0, DICTIONARY_SAMPLE_ROWS)
    chosen = [OP, TS]
    for name in table.column_names:
        if name in (OP, TS, SEQ):
            continue
        if pc.count_distinct(sample.column(name)).as_py() * DICTIONARY_ROWS_PER_VALUE <= sample.num_rows:
            chosen.append(name)
    return chosen


class LoadFileWriter:
    """Rolling Parquet files ``<prefix>-<n>.parquet`` in ``directory``; :meth:`close` returns them in order.

    ``on_file_closed`` is called with each file's path as soon as that file is complete, in the writer's thread.
    """

    def __init__(
        self,
        directory: Path,
        prefix: str,
        load_time: datetime,
        *,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
        on_file_closed: Callable[[Path], None] | None = None,
    ) -> None:
        self.directory = directory
        self.prefix = prefix
        self.max_file_bytes = max_file_bytes
        self.row_group_bytes = row_group_bytes
        self.on_file_closed = on_file_closed
        # DMS stamps full-load rows with the transfer time (TimestampColumnName). The snapshot position is
        # used: no CDC change can commit at or before it, so a change after the snapshot always wins the merge.
        # A naive time is UTC, as Arrow takes it for a timestamp with a zone.
        utc = load_time.astimezone(UTC) if load_time.tzinfo else load_time.replace(tzinfo=UTC)
        self._load_ts = utc.strftime(DMS_TS_FORMAT).encode()
        self.rows = 0
        self.paths: list[Path] = []
        self._buffer: list[pa.RecordBatch] = []
        self._buffered = 0
        self._writer: pq.ParquetWriter | None = None
        self._sink = None

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self._buffer.append(batch)
        self._buffered += batch.nbytes
        self.rows += batch.num_rows
        if self._buffered >= self.row_group_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        rows = pa.Table.from_batches(self._buffer)
        self._buffer, self._buffered = [], 0
        n = rows.num_rows
        lead = {OP: _repeated(b"I", n), TS: _repeated(self._load_ts, n), SEQ: pa.nulls(n, pa.string())}
        table = to_dms_table(pa.Table.from_arrays([*lead.values(), *rows.columns],
                                                  names=[*lead, *rows.column_names]))
        if self._writer is None:
            path = self.directory / f"{self.prefix}-{len(self.paths) + 1:05d}.parquet"
            self.directory.mkdir(parents=True, exist_ok=True)
            # Arrow's own file, not a Python one: the pages go to disk without the GIL or a copy into bytes.
            self._sink = pa.OSFile(str(path), "wb")
            self._writer = pq.ParquetWriter(self._sink, table.schema, use_dictionary=dictionary_columns(table),
                                            compression=COMPRESSION, compression_level=COMPRESSION_LEVEL)
            self.paths.append(path)
        self._writer.write_table(table, row_group_size=n)
        if self._sink.tell() >= self.max_file_bytes:
            self._close_file()

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None
            if self.on_file_closed is not None:
                self.on_file_closed(self.paths[-1])

    def close(self) -> list[Path]:
        self._flush()
        self._close_file()
        return self.paths

    def abort(self) -> None:
        self._buffer = []
        self.on_file_closed = None  # the files are deleted: nothing to report about them
        try:
            self._close_file()
        finally:
            for path in self.paths:
                path.unlink(missing_ok=True)
