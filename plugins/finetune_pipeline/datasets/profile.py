"""Column profiles for reports: null counts, numeric moments and a mergeable sample for drift.

The sample is a bottom-k sketch: the k rows with the smallest hash of the primary key. Sketches of disjoint
buckets merge exactly (take the k smallest of the union), so an unchanged bucket's sketch is reused as is.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from finetune_pipeline.datasets.contracts import TableContract
from finetune_pipeline.datasets.hashing import hash_columns

SAMPLE_SIZE = 1000
_SAMPLE_SEED = 7919


def numeric_columns(contract: TableContract) -> list[str]:
    out = []
    for col in contract.columns:
        t = col.arrow_type
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_temporal(t):
            out.append(col.name)
    return out


def _as_float(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    t = arr.type
    if pa.types.is_timestamp(t):
        # Seconds since the epoch, so moments and histograms read in a familiar unit.
        unit = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[t.unit]
        return pc.cast(arr, pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64) / unit
    if pa.types.is_date32(t):
        return pc.cast(arr, pa.int32()).to_numpy(zero_copy_only=False).astype(np.float64) * 86400.0
    return pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)


@dataclass
class Moments:
    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    low: float | None = None
    high: float | None = None

    def add(self, other: Moments) -> None:
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq
        lows = [v for v in (self.low, other.low) if v is not None]
        highs = [v for v in (self.high, other.high) if v is not None]
        self.low = min(lows) if lows else None
        self.high = max(highs) if highs else None

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    @property
    def std(self) -> float | None:
        if not self.count:
            return None
        var = max(0.0, self.total_sq / self.count - (self.total / self.count) ** 2)
        return math.sqrt(var)


@dataclass
class Profile:
    """Per-table (or per-bucket) column profile."""

    rows: int = 0
    nulls: dict[str, int] = field(default_factory=dict)
    moments: dict[str, Moments] = field(default_factory=dict)
    sample_hashes: list[int] = field(default_factory=list)
    sample: dict[str, list[float | None]] = field(default_factory=dict)

    def add(self, other: Profile) -> Profile:
        self.rows += other.rows
        for name, value in other.nulls.items():
            self.nulls[name] = self.nulls.get(name, 0) + value
        for name, m in other.moments.items():
            self.moments.setdefault(name, Moments()).add(m)
        hashes = self.sample_hashes + other.sample_hashes
        if hashes:
            keep = np.argsort(np.array(hashes, dtype=np.uint64), kind="stable")[:SAMPLE_SIZE]
            names = set(self.sample) | set(other.sample)
            merged = {}
            for name in names:
                values = (self.sample.get(name) or [None] * len(self.sample_hashes)) + (
                    other.sample.get(name) or [None] * len(other.sample_hashes)
                )
                merged[name] = [values[i] for i in keep]
            self.sample_hashes = [hashes[i] for i in keep]
            self.sample = merged
        return self

    def subtract(self, rows: int, nulls: dict[str, int], keys: list[pa.Array | pa.ChunkedArray]) -> Profile:
        """Take out rows that are gone (a bucket's rows a merge on read masked): the row and null counts
        exactly, and their keys from the sample. Moments need the values, which a merge on read does not
        read: they keep the masked rows until the bucket is next rewritten (at most
        ``merge_on_read.MAX_MASKED_SHARE`` of its rows)."""
        self.rows -= rows
        for name, value in nulls.items():
            self.nulls[name] = self.nulls.get(name, 0) - value
        if keys and len(keys[0]) and self.sample_hashes:
            gone = hash_columns(keys, seed=_SAMPLE_SEED)
            keep = ~np.isin(np.array(self.sample_hashes, dtype=np.uint64), gone)
            self.sample_hashes = [h for h, k in zip(self.sample_hashes, keep, strict=True) if k]
            self.sample = {name: [v for v, k in zip(values, keep, strict=False) if k]
                           for name, values in self.sample.items()}  # fmt: skip
        return self

    def null_rate(self, column: str) -> float:
        return self.nulls.get(column, 0) / self.rows if self.rows else 0.0

    def to_json(self) -> dict[str, Any]:
        # Built field by field, not with dataclasses.asdict: that deep-copies the sample value by value, and
        # a sync serializes one profile per bucket it touches.
        return {
            "rows": self.rows,
            "nulls": dict(self.nulls),
            "moments": {name: asdict(m) for name, m in self.moments.items()},
            "sample_hashes": [str(h) for h in self.sample_hashes],
            "sample": {name: list(values) for name, values in self.sample.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Profile:
        return cls(
            rows=data["rows"],
            nulls=dict(data["nulls"]),
            moments={k: Moments(**v) for k, v in data["moments"].items()},
            sample_hashes=[int(h) for h in data["sample_hashes"]],
            sample={k: list(v) for k, v in data["sample"].items()},
        )


def profile_table(table: pa.Table, contract: TableContract) -> Profile:
    """Profile one in-memory chunk of a table."""
    profile = Profile(rows=table.num_rows)
    names = set(table.column_names)
    numeric = [c for c in numeric_columns(contract) if c in names]
    for col in contract.columns:
        if col.name in names:
            profile.nulls[col.name] = table.column(col.name).null_count
    for name in numeric:
        values = _as_float(table.column(name))
        finite = values[~np.isnan(values)]
        if finite.size:
            profile.moments[name] = Moments(
                int(finite.size),
                float(finite.sum()),
                float(np.square(finite).sum()),
                float(finite.min()),
                float(finite.max()),
            )
        else:
            profile.moments[name] = Moments()
    if table.num_rows and all(k in names for k in contract.primary_key):
        hashes = hash_columns([table.column(k) for k in contract.primary_key], seed=_SAMPLE_SEED)
        if len(hashes) > SAMPLE_SIZE:
            idx = np.argpartition(hashes, SAMPLE_SIZE)[:SAMPLE_SIZE]
        else:
            idx = np.arange(len(hashes))
        idx = idx[np.argsort(hashes[idx], kind="stable")]
        profile.sample_hashes = [int(h) for h in hashes[idx]]
        taken = pa.array(idx)
        for name in numeric:
            vals = _as_float(pc.take(table.column(name), taken))
            profile.sample[name] = [None if np.isnan(v) else float(v) for v in vals]
    return profile
