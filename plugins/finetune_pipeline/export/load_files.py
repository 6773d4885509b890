"""Write a table's snapshot rows as DMS full-load files, a bounded batch at a time.

The files are what the project's writer (:func:`finetune_pipeline.datasets.dms_format.write_dms_file`) makes
of a whole table: each row group goes through its :func:`to_dms_table` (``Op``, ``_dms_ts`` as DMS's
timestamp string, ``_dms_seq``, then the table's columns) and is written by the same pyarrow
``ParquetWriter`` with the same defaults. Only the batching differs: rows are buffered up to
``row_group_bytes``, and a file is closed once it passes ``max_file_bytes``, so memory stays bounded
whatever the table's size.

The constant columns are built from buffers: any Python value handed to pyarrow (``pa.scalar``,
``pa.array``) makes it import pandas, a fifth of a second the export would spend on nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from finetune_pipeline.datasets.dms_format import DMS_TS_FORMAT, OP, SEQ, TS, to_dms_table

MIB = 1024 * 1024
# DMS's S3 target closes a full-load file at MaxFileSize, 1 GB by default (CHAP_Target.S3, "MaxFileSize").
DEFAULT_MAX_FILE_BYTES = 1024 * MIB
DEFAULT_ROW_GROUP_BYTES = 32 * MIB


def _repeated(value: bytes, n: int) -> pa.Array:
    """A string column of ``n`` times ``value``, from its offsets and data buffers."""
    offsets = np.arange(n + 1, dtype=np.int64) * len(value)
    if offsets[-1] > np.iinfo(np.int32).max:
        raise OverflowError(f"{n} rows of {value!r} pass a string column's 2 GiB: use smaller row groups")
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets.astype(np.int32)),
                                                  pa.py_buffer(value * n)])


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
            self._writer = pq.ParquetWriter(self._sink, table.schema)
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
