"""Partition change events into spill files so each partition merges within a memory budget.

A table's rows live in buckets, the ``_bucket`` column its Iceberg table is identity-partitioned by. How keys
map to buckets is fixed when the table is created (:class:`Bucketing`, kept as a table property):
- ``range`` for a single integer key: bucket = (key - origin) // width. Keys that grow over time (serial ids)
  put new rows, and the recent rows most changes touch, in the newest few buckets, so a delta rewrites those
  and leaves the old buckets' files alone; new buckets appear as the table grows, each about ``width`` keys.
- ``hash`` otherwise: bucket = hash(key) % buckets, a fixed count.

For a run whose input is too big to merge one bucket at a time, each bucket is split k ways: partition
p = bucket * k + j, so p // k is the bucket and every partition of a bucket merges on its own and is appended
to that bucket's files. A range bucket splits into k sub-ranges of its keys, so that its pieces, merged and
written in order, leave its files in key order: each row group's key statistics then bound a narrow range,
and a delta on the newest keys reads only their row groups. A hash bucket splits by another part of the hash.
"""

from __future__ import annotations

import collections
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from finetune_pipeline.datasets.dms_format import OP
from finetune_pipeline.datasets.hashing import hash_columns

_LZ4 = pa.ipc.IpcWriteOptions(compression="lz4")
_UNCOMPRESSED = pa.ipc.IpcWriteOptions()
# A spill up to this share of the memory the system has available is written uncompressed (see _ipc_options).
CACHED_SPILL_SHARE = 0.25
# The bucket is an Iceberg int (32-bit) partition value.
MAX_BUCKET = 2**31 - 1
_SPLIT_SHIFT = np.uint64(40)


def range_key_type(t: pa.DataType) -> bool:
    """Key types that range buckets apply to: signed or small unsigned integers."""
    return pa.types.is_integer(t) and not pa.types.is_uint64(t)


@dataclass(frozen=True)
class Bucketing:
    """How keys map to buckets; fixed per table, since every file of a bucket holds exactly its keys."""

    kind: Literal["hash", "range"] = "hash"
    buckets: int = 1
    column: str | None = None
    origin: int = 0
    width: int = 1

    def bucket_ids(self, batch: pa.RecordBatch | pa.Table, hashes: np.ndarray) -> np.ndarray:
        """The bucket of each row (int64), from its key (range) or its key hash (hash)."""
        if self.kind == "hash":
            return (hashes % np.uint64(self.buckets)).astype(np.int64)
        # Keys below the origin join the first bucket, keys far above it the last: correct, if uneven.
        return np.clip(self.offsets(batch) // self.width, 0, MAX_BUCKET)

    def offsets(self, batch: pa.RecordBatch | pa.Table) -> np.ndarray:
        """Range buckets: each row's key less the origin (int64)."""
        keys = batch.column(self.column)
        if isinstance(keys, pa.ChunkedArray):
            keys = keys.combine_chunks()
        return pc.fill_null(keys, self.origin).to_numpy(zero_copy_only=False).astype(np.int64) - self.origin

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Bucketing:
        return cls(**json.loads(text))

    @classmethod
    def for_range(cls, column: str, low: int, high: int, rows: int, rows_per_bucket: int) -> Bucketing:
        """Range buckets over [low, high] holding about ``rows_per_bucket`` of ``rows`` keys each."""
        span = max(1, high - low + 1)
        width = max(1, math.ceil(span * max(1, rows_per_bucket) / max(1, rows)))
        return cls(kind="range", column=column, origin=int(low), width=int(width))


@dataclass(frozen=True)
class Layout:
    """What a run spills by: a bucketing, each bucket split ``split`` ways; for a new hash table, the fine
    buckets it spilled into fold into ``coarse`` output buckets (fine % coarse) once its size is known."""

    bucketing: Bucketing
    split: int = 1
    coarse: int = 0
    # Range buckets: the highest key of the run's rows when known (a new table's), so that the newest
    # bucket, filled only up to it, is cut into even pieces of its filled part. None: a bucket's full width.
    key_high: int | None = None

    def partition_ids(self, batch: pa.RecordBatch | pa.Table, hashes: np.ndarray) -> np.ndarray:
        """Partition per row from its bucket and its key (range) or key hash."""
        buckets = self.bucketing.bucket_ids(batch, hashes)
        if self.split == 1:
            return buckets
        return buckets * self.split + self._pieces(batch, hashes, buckets)

    def _pieces(self, batch: pa.RecordBatch | pa.Table, hashes: np.ndarray, buckets: np.ndarray) -> np.ndarray:
        """Which of ``split`` pieces of its bucket each row falls in: a sub-range of the bucket's keys for
        range buckets, another part of the key hash for hash buckets."""
        b = self.bucketing
        if b.kind == "hash":
            return ((hashes >> _SPLIT_SHIFT) % np.uint64(self.split)).astype(np.int64)
        start = buckets * b.width
        filled = b.width if self.key_high is None else np.clip(self.key_high - b.origin + 1 - start, 1, b.width)
        step = -(-filled // self.split)  # a ceiling, without the product of key and split (wide ranges overflow)
        # Keys below the origin (bucket 0) or past the last bucket fall in its first or last piece.
        return np.clip((b.offsets(batch) - start) // step, 0, self.split - 1)

    def bucket_of(self, part: int) -> int:
        fine = part // self.split
        return fine % self.coarse if self.coarse else fine

    @property
    def output(self) -> Bucketing:
        """The bucketing the table is written with."""
        if self.coarse:
            return Bucketing(kind="hash", buckets=self.coarse)
        return self.bucketing

    @staticmethod
    def for_spill(
        bucketing: Bucketing, buckets: int, input_bytes: int, budget_bytes: int, key_high: int | None = None
    ) -> Layout:
        """Split each of ``buckets`` buckets a power-of-two number of ways, so one partition's share of the
        input fits the merge budget."""
        split = _pow2(math.ceil(input_bytes / max(1, buckets) / max(1, budget_bytes)))
        return Layout(bucketing, split, key_high=key_high)

    @staticmethod
    def for_new_hash_table(input_bytes: int, input_rows: int, budget_bytes: int, rows_per_bucket: int) -> Layout:
        """Fine hash buckets to spill a new table into; ``settle`` folds them once its row count is known."""
        need = max(
            math.ceil(input_bytes / max(1, budget_bytes)), math.ceil(input_rows / max(1, rows_per_bucket))
        )
        return Layout(Bucketing(kind="hash", buckets=_pow2(need)))

    def settle(self, expected_rows: int, rows_per_bucket: int) -> Layout:
        """A new hash table's buckets from the rows it will hold; a divisor of the fine buckets spilled."""
        if self.bucketing.kind != "hash" or self.coarse:
            return self
        fine = self.bucketing.buckets
        buckets = min(fine, _pow2(math.ceil(max(0, expected_rows) / max(1, rows_per_bucket))))
        return Layout(self.bucketing, self.split, coarse=buckets) if buckets < fine else self


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length() if n > 1 else 1


@dataclass
class GroupedBatch:
    """A batch's kept rows ordered by partition: ``runs`` of (partition, offset, length); ``ops``: the rows
    read per Op, ``read`` in all (the rows dropped as superseded included)."""

    batch: pa.RecordBatch
    ops: dict[str, int]
    runs: list[tuple[int, int, int]]
    read: int


@dataclass
class SpillStats:
    """Events read (``rows``, and per Op), and how many of them were dropped as superseded."""

    rows: int = 0
    ops: dict[str, int] = field(default_factory=lambda: {"I": 0, "U": 0, "D": 0})
    superseded: int = 0


class Spill:
    """Arrow IPC spill files, one per partition, written batch by batch (nothing buffered in memory).

    ``keep``: which rows of a batch to spill (a bool per row, None for all); the others are counted only,
    as events that cannot win the merge (:mod:`.supersede`)."""

    def __init__(
        self,
        directory: str | Path,
        name: str,
        schema: pa.Schema,
        primary_key: list[str],
        layout: Layout,
        seed: int = 0,
        expected_bytes: int | None = None,
        keep: Callable[[pa.RecordBatch], np.ndarray | None] | None = None,
    ):
        self.directory = Path(directory)
        self.keep = keep
        self._options = _ipc_options(expected_bytes)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.schema = schema
        self.primary_key = primary_key
        self.layout = layout
        self.seed = seed
        self.rows: dict[int, int] = {}
        self.bytes: dict[int, int] = {}
        self.stats = SpillStats()
        self._writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
        self._files: dict[int, pa.NativeFile] = {}

    def path(self, part: int) -> Path:
        return self.directory / f"{self.name}-{part:010d}.arrow"

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        for grouped in self.group(batch):
            self.write(grouped)

    def add_all(self, batches: Iterable[pa.RecordBatch | pa.Table], threads: int) -> None:
        """:meth:`add` every batch, grouping up to ``threads`` batches at once (the grouping copy is most of
        a spill's work, and Arrow does it without the GIL); written in arrival order, which the merge keeps
        for exact ties."""
        if threads <= 1:
            for batch in batches:
                self.add(batch)
            return
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="spill") as pool:
            grouping: collections.deque[Future] = collections.deque()
            try:
                for batch in batches:
                    grouping.append(pool.submit(self.group, batch))
                    while len(grouping) > threads:
                        for grouped in grouping.popleft().result():
                            self.write(grouped)
                while grouping:
                    for grouped in grouping.popleft().result():
                        self.write(grouped)
            finally:
                for pending in grouping:
                    pending.cancel()

    def group(self, batch: pa.RecordBatch | pa.Table) -> list[GroupedBatch]:
        """A batch's rows grouped by partition, in arrival order within each (what :meth:`write` takes)."""
        if batch.num_rows == 0:
            return []
        if isinstance(batch, pa.Table):
            return [g for b in batch.to_batches() for g in self.group(b)]
        ops = {item["values"]: item["counts"] for item in pc.value_counts(batch.column(OP)).to_pylist()}
        read = batch.num_rows
        keep = self.keep(batch) if self.keep is not None else None
        rows = None if keep is None else np.flatnonzero(keep)
        if rows is not None and not len(rows):
            return [GroupedBatch(batch.slice(0, 0), ops, [], read)]
        hashes = hash_columns([batch.column(c) for c in self.primary_key], seed=self.seed)
        parts = self.layout.partition_ids(batch, hashes)
        if rows is not None:
            # The kept rows are copied once, by the grouping's take, straight from the batch read.
            parts = parts[rows]
        first, last = int(parts.min()), int(parts.max())
        if first == last:
            kept = batch if rows is None else batch.take(pa.array(rows))
            return [GroupedBatch(kept, ops, [(first, 0, kept.num_rows)], read)]
        # Partition ids of one batch span a small range: as uint16 numpy sorts them by radix, several times
        # faster than a comparison sort of int64.
        span = last - first
        keys = (parts - first).astype(np.uint16) if span < 65536 else parts
        order = np.argsort(keys, kind="stable")
        ordered = parts[order]
        if rows is not None:
            order = rows[order]
        starts = np.concatenate(([0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1))
        ends = np.append(starts[1:], len(ordered))
        runs = [(int(ordered[a]), a, b - a) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
        return [GroupedBatch(batch.take(pa.array(order)), ops, runs, read)]

    def write(self, grouped: GroupedBatch) -> None:
        self.stats.rows += grouped.read
        self.stats.superseded += grouped.read - grouped.batch.num_rows
        for op, n in grouped.ops.items():
            self.stats.ops[op] = self.stats.ops.get(op, 0) + n
        for part, offset, length in grouped.runs:
            self._write(part, grouped.batch.slice(offset, length))

    def _write(self, part: int, batch: pa.RecordBatch) -> None:
        writer = self._writers.get(part)
        if writer is None:
            sink = pa.OSFile(str(self.path(part)), "wb")
            self._files[part] = sink
            writer = self._writers[part] = pa.ipc.new_stream(sink, self.schema, options=self._options)
        writer.write_batch(batch)
        self.rows[part] = self.rows.get(part, 0) + batch.num_rows
        self.bytes[part] = self.bytes.get(part, 0) + batch.nbytes

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        for sink in self._files.values():
            sink.close()
        self._writers.clear()
        self._files.clear()

    def parts(self) -> list[int]:
        """The partitions holding rows, in order."""
        return sorted(p for p, n in self.rows.items() if n)

    def parts_of(self, bucket: int) -> list[int]:
        """The partitions of one bucket that hold rows."""
        return [p for p in self.parts() if self.layout.bucket_of(p) == bucket]

    def buckets(self) -> set[int]:
        """The buckets that received rows."""
        return {self.layout.bucket_of(p) for p in self.parts()}

    def rows_in(self, parts: Iterable[int]) -> int:
        return int(sum(self.rows.get(p, 0) for p in parts))

    def nbytes(self, part: int) -> int:
        """In-memory (Arrow) size of a partition's rows."""
        return int(self.bytes.get(part, 0))

    def read(self, part: int) -> pa.Table:
        """One partition's rows in arrival order (empty table if none)."""
        if not self.rows.get(part):
            return self.schema.empty_table()
        with pa.OSFile(str(self.path(part)), "rb") as source:
            table = pa.ipc.open_stream(source).read_all()
        return table

    def read_batches(self, part: int) -> Iterator[pa.RecordBatch]:
        """Stream one partition's rows batch by batch."""
        if not self.rows.get(part):
            return
        with pa.OSFile(str(self.path(part)), "rb") as source:
            yield from pa.ipc.open_stream(source)

    def remove(self, part: int) -> None:
        if self.path(part).exists():
            os.unlink(self.path(part))

    def remove_all(self) -> None:
        for part in list(self.rows):
            self.remove(part)


def split_bucket(
    batches: Iterable[pa.RecordBatch],
    directory: str | Path,
    name: str,
    schema: pa.Schema,
    primary_key: list[str],
    layout: Layout,
    seed: int = 0,
    expected_bytes: int | None = None,
) -> Spill:
    """Spill rows into partitions by key hash (seed 0: the same partition ids as the delta)."""
    spill = Spill(directory, name, schema, primary_key, layout, seed=seed, expected_bytes=expected_bytes)
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


def _ipc_options(expected_bytes: int | None) -> pa.ipc.IpcWriteOptions:
    """Uncompressed when the spill (``expected_bytes`` in memory) fits easily in what the system can cache:
    it is read back from the page cache, and LZ4 only costs CPU, a third of a 10M-event build's spill on two
    cores. Larger, or of unknown size: LZ4, since disk bandwidth is then what a spill waits on."""
    available = available_memory()
    if expected_bytes is not None and available is not None and expected_bytes <= CACHED_SPILL_SHARE * available:
        return _UNCOMPRESSED
    return _LZ4


# A container's memory limit and use: cgroup v2, then v1 (whose "no limit" is a huge number).
CGROUP_MEMORY = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def available_memory() -> int | None:
    """Bytes the system can give without swapping: Linux's MemAvailable, capped by the cgroup's memory
    limit (a container's); None where neither can be read."""
    found = []
    try:
        with open("/proc/meminfo") as meminfo:
            found += [int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:")]
    except OSError:
        pass
    for limit_path, used_path in CGROUP_MEMORY:
        try:
            limit = Path(limit_path).read_text().strip()
            used = Path(used_path).read_text().strip()
        except OSError:
            continue
        if limit != "max" and limit.isdigit() and used.isdigit():
            found.append(max(0, int(limit) - int(used)))
        break
    return min(found) if found else None
