"""Hash-partition change events into spill files so each partition merges within a memory budget.

A table's published parts are B buckets (bucket = hash(pk) % B, fixed per table). For a run whose input is too
big to merge one bucket at a time, each bucket is split k ways: partition p = hash % (B*k), so p % B is still
the bucket and every partition of bucket b can be merged on its own and appended to part b.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from finetune_pipeline.datasets.dms_format import OP
from finetune_pipeline.datasets.hashing import hash_columns

_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


@dataclass(frozen=True)
class Layout:
    """B output buckets, each split k ways for merging."""

    buckets: int
    split: int = 1

    @property
    def partitions(self) -> int:
        return self.buckets * self.split

    def partition_ids(self, hashes: np.ndarray) -> np.ndarray:
        """Partition per row from its key hash."""
        return (hashes % np.uint64(self.partitions)).astype(np.int64)

    def members(self, bucket: int) -> list[int]:
        """The partitions that make up one bucket."""
        return [bucket + self.buckets * j for j in range(self.split)]

    @staticmethod
    def for_spill(
        buckets: int | None, input_bytes: int, input_rows: int, budget_bytes: int, rows_per_bucket: int
    ) -> Layout:
        """Partitions to spill into: a power of two times the bucket count (fixed for an existing table),
        enough that one partition's input fits the merge budget. A new table's bucket count is chosen
        after the spill (``settle``), so it is left open here (buckets = partitions)."""
        if buckets is not None:
            return Layout(buckets, _pow2(math.ceil(input_bytes / buckets / max(1, budget_bytes))))
        need = max(
            math.ceil(input_bytes / max(1, budget_bytes)), math.ceil(input_rows / max(1, rows_per_bucket))
        )
        return Layout(_pow2(need), 1)

    def settle(self, expected_rows: int, rows_per_bucket: int) -> Layout:
        """A new table's buckets from the rows it will hold; still a divisor of the partitions spilled."""
        buckets = min(self.partitions, _pow2(math.ceil(max(0, expected_rows) / max(1, rows_per_bucket))))
        return Layout(buckets, self.partitions // buckets)


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length() if n > 1 else 1


@dataclass
class SpillStats:
    rows: int = 0
    ops: dict[str, int] = field(default_factory=lambda: {"I": 0, "U": 0, "D": 0})


class Spill:
    """Arrow IPC spill files, one per partition, written batch by batch (nothing buffered in memory)."""

    def __init__(
        self,
        directory: str | Path,
        name: str,
        schema: pa.Schema,
        primary_key: list[str],
        layout: Layout,
        seed: int = 0,
    ):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.schema = schema
        self.primary_key = primary_key
        self.layout = layout
        self.seed = seed
        self.rows = np.zeros(layout.partitions, dtype=np.int64)
        self.bytes = np.zeros(layout.partitions, dtype=np.int64)
        self.stats = SpillStats()
        self._writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
        self._files: dict[int, pa.NativeFile] = {}

    def path(self, part: int) -> Path:
        return self.directory / f"{self.name}-{part:05d}.arrow"

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows == 0:
            return
        if isinstance(batch, pa.Table):
            for b in batch.to_batches():
                self.add(b)
            return
        self.stats.rows += batch.num_rows
        for item in pc.value_counts(batch.column(OP)).to_pylist():
            self.stats.ops[item["values"]] = self.stats.ops.get(item["values"], 0) + item["counts"]
        parts = self.layout.partition_ids(
            hash_columns([batch.column(c) for c in self.primary_key], seed=self.seed)
        )
        if self.layout.partitions == 1:
            self._write(0, batch)
            return
        order = np.argsort(
            parts.astype(np.uint16 if self.layout.partitions < 65536 else np.int64), kind="stable"
        )
        counts = np.bincount(parts, minlength=self.layout.partitions)
        grouped = batch.take(pa.array(order))
        start = 0
        for part in np.nonzero(counts)[0]:
            size = int(counts[part])
            self._write(int(part), grouped.slice(start, size))
            start += size

    def _write(self, part: int, batch: pa.RecordBatch) -> None:
        writer = self._writers.get(part)
        if writer is None:
            sink = pa.OSFile(str(self.path(part)), "wb")
            self._files[part] = sink
            # LZ4 keeps spill I/O small (disk bandwidth, not CPU, is what a spill usually waits on).
            writer = self._writers[part] = pa.ipc.new_stream(sink, self.schema, options=_IPC_OPTIONS)
        writer.write_batch(batch)
        self.rows[part] += batch.num_rows
        self.bytes[part] += batch.nbytes

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        for sink in self._files.values():
            sink.close()
        self._writers.clear()
        self._files.clear()

    def rows_in(self, parts: list[int]) -> int:
        return int(sum(self.rows[p] for p in parts))

    def nbytes(self, part: int) -> int:
        """In-memory (Arrow) size of a partition's rows."""
        return int(self.bytes[part])

    def read(self, part: int) -> pa.Table:
        """One partition's rows in arrival order (empty table if none)."""
        if self.rows[part] == 0:
            return self.schema.empty_table()
        with pa.OSFile(str(self.path(part)), "rb") as source:
            table = pa.ipc.open_stream(source).read_all()
        return table

    def read_batches(self, part: int) -> Iterator[pa.RecordBatch]:
        """Stream one partition's rows batch by batch."""
        if self.rows[part] == 0:
            return
        with pa.OSFile(str(self.path(part)), "rb") as source:
            yield from pa.ipc.open_stream(source)

    def remove(self, part: int) -> None:
        if self.path(part).exists():
            os.unlink(self.path(part))


def split_bucket(
    batches: Iterable[pa.RecordBatch],
    directory: str | Path,
    name: str,
    schema: pa.Schema,
    primary_key: list[str],
    layout: Layout,
    seed: int = 0,
) -> Spill:
    """Spill rows into partitions by key hash (seed 0: the same partition ids as the delta)."""
    spill = Spill(directory, name, schema, primary_key, layout, seed=seed)
    try:
        for batch in batches:
            spill.add(batch)
    finally:
        spill.close()
    return spill


def concat(tables: Iterable[pa.Table], schema: pa.Schema) -> pa.Table:
    """Concatenate tables of one schema without copying their buffers."""
    parts = [t for t in tables if t.num_rows]
    if not parts:
        return schema.empty_table()
    return pa.concat_tables(parts)
