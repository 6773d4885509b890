"""Contract checks over Arrow data, vectorized with pyarrow.compute, as typed results.

Counting and judging are separate: ``count_batch`` turns data into mergeable ``CheckCounts`` (so buckets and
row groups are counted independently and added up), ``evaluate`` turns counts into ``CheckResult``s with the
contract's severities. A version is publishable only when every blocking check passes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from finetune_pipeline.datasets.contracts import ColumnSpec, Severity, TableContract
from finetune_pipeline.datasets.hashing import hash_columns
from finetune_pipeline.datasets.merge import key_codes

SAMPLES = 5


@dataclass
class CheckResult:
    """One check's outcome. ``check`` is the kind (not_null, range, ...), ``column`` the column if any."""

    table: str
    check: str
    severity: Severity
    passed: bool
    detail: str
    column: str | None = None
    failing_rows: int = 0
    samples: list[Any] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.check}:{self.column}" if self.column else self.check

    @property
    def blocking_failure(self) -> bool:
        return not self.passed and self.severity == "blocking"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["name"] = self.name
        out["samples"] = [_jsonable(v) for v in self.samples]
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def publishable(results: Iterable[CheckResult]) -> bool:
    """True when no blocking check failed."""
    return not any(r.blocking_failure for r in results)


@dataclass
class CheckCounts:
    """Mergeable tallies behind the value checks of one table (or a bucket, or a row group)."""

    rows: int = 0
    nulls: dict[str, int] = field(default_factory=dict)
    violations: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[Any]] = field(default_factory=dict)
    pk_duplicates: int = 0
    max_value: dict[str, int] = field(default_factory=dict)

    def add(self, other: CheckCounts) -> CheckCounts:
        self.rows += other.rows
        self.pk_duplicates += other.pk_duplicates
        for name, value in other.nulls.items():
            self.nulls[name] = self.nulls.get(name, 0) + value
        for name, value in other.violations.items():
            self.violations[name] = self.violations.get(name, 0) + value
        for name, values in other.samples.items():
            mine = self.samples.setdefault(name, [])
            mine.extend(v for v in values if v not in mine)
            del mine[SAMPLES:]
        for name, value in other.max_value.items():
            self.max_value[name] = max(value, self.max_value.get(name, value))
        return self

    def subtract(self, removed: CheckCounts) -> CheckCounts:
        """Take out the tallies of rows that are gone (a bucket's rows a merge on read masked). Counts are
        exact; a maximum and the duplicate count cannot shrink without the remaining rows, so they stay as
        upper bounds until the bucket is next rewritten, and a value's samples go when its count reaches 0."""
        self.rows -= removed.rows
        for name, value in removed.nulls.items():
            self.nulls[name] = self.nulls.get(name, 0) - value
        for name, value in removed.violations.items():
            self.violations[name] = self.violations.get(name, 0) - value
            if self.violations[name] <= 0:
                self.samples.pop(name, None)
        return self

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["samples"] = {k: [_jsonable(v) for v in vs] for k, vs in self.samples.items()}
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckCounts:
        return cls(**data)


def _as_array(col: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    if pa.types.is_dictionary(col.type):
        return col.cast(col.type.value_type)
    return col


def _note(counts: CheckCounts, key: str, bad: int, values: pa.Array | pa.ChunkedArray | None) -> None:
    counts.violations[key] = counts.violations.get(key, 0) + bad
    if bad and values is not None:
        found = counts.samples.setdefault(key, [])
        for value in pc.unique(values.slice(0, 1000)).to_pylist():
            if len(found) >= SAMPLES:
                break
            if _jsonable(value) not in found:
                found.append(_jsonable(value))


def _dictionary_checks(counts: CheckCounts, col: ColumnSpec, arr: pa.DictionaryArray) -> bool:
    """Allowed values and regex judged once per distinct value, then weighted by how often each occurs."""
    if col.min is not None or col.max is not None:
        return False
    values = arr.dictionary
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return False
    occurrences = np.bincount(
        arr.indices.drop_null().to_numpy(zero_copy_only=False), minlength=len(values)
    ).astype(np.int64)
    rules = []
    if col.allowed_values is not None:
        allowed = pa.array(col.allowed_values).cast(col.arrow_type)
        rules.append(("allowed_values", pc.is_in(values, value_set=allowed)))
    if col.regex is not None:
        rules.append(("regex", pc.match_substring_regex(values, pattern=f"^(?:{col.regex})$")))
    for kind, ok in rules:
        failing = ~pc.fill_null(ok, True).to_numpy(zero_copy_only=False)
        bad = int(occurrences[failing].sum())
        sample = values.filter(pa.array(failing & (occurrences > 0))) if bad else None
        _note(counts, f"{kind}:{col.name}", bad, sample)
    return True


def _value_checks(counts: CheckCounts, col: ColumnSpec, arr: pa.Array | pa.ChunkedArray) -> None:
    if isinstance(arr, pa.ChunkedArray) and pa.types.is_dictionary(arr.type):
        if all(_dictionary_checks(counts, col, chunk) for chunk in arr.chunks):
            return
        arr = _as_array(arr)
    elif isinstance(arr, pa.DictionaryArray):
        if _dictionary_checks(counts, col, arr):
            return
        arr = _as_array(arr)
    valid = len(arr) - arr.null_count
    if col.allowed_values is not None:
        value_set = pa.array(col.allowed_values).cast(col.arrow_type)
        hits = pc.sum(pc.is_in(arr, value_set=value_set)).as_py() or 0
        bad = valid - hits
        sample = (
            arr.filter(pc.invert(pc.fill_null(pc.is_in(arr, value_set=value_set), True))) if bad else None
        )
        _note(counts, f"allowed_values:{col.name}", bad, sample)
    if col.min is not None or col.max is not None:
        lo = col.bound("min") if col.min is not None else None
        hi = col.bound("max") if col.max is not None else None
        mm = pc.min_max(arr)
        low, high = mm["min"].as_py(), mm["max"].as_py()
        outside = low is not None and (
            (lo is not None and low < lo.as_py()) or (hi is not None and high > hi.as_py())
        )
        bad, sample = 0, None
        if outside:
            mask = None
            if lo is not None:
                mask = pc.less(arr, lo)
            if hi is not None:
                above = pc.greater(arr, hi)
                mask = above if mask is None else pc.or_(mask, above)
            bad = pc.sum(mask).as_py() or 0
            sample = arr.filter(pc.fill_null(mask, False))
        _note(counts, f"range:{col.name}", bad, sample)
    if col.regex is not None:
        matches = pc.match_substring_regex(arr, pattern=f"^(?:{col.regex})$")
        bad = valid - (pc.sum(matches).as_py() or 0)
        sample = arr.filter(pc.invert(pc.fill_null(matches, True))) if bad else None
        _note(counts, f"regex:{col.name}", bad, sample)


def count_pk_duplicates(columns: list[pa.Array | pa.ChunkedArray]) -> int:
    """Rows whose key repeats an earlier row's key (hash first, exact check only on hash collisions)."""
    n = len(columns[0]) if columns else 0
    if n < 2:
        return 0
    hashes = hash_columns(columns)
    sorted_h = np.sort(hashes)
    if not (sorted_h[1:] == sorted_h[:-1]).any():
        return 0
    order = np.argsort(hashes, kind="stable")
    sorted_h = hashes[order]
    collide = np.nonzero(sorted_h[1:] == sorted_h[:-1])[0]
    rows = np.unique(np.concatenate([order[collide], order[collide + 1]]))
    picked = [pc.take(c, pa.array(rows)) for c in columns]
    codes = key_codes(picked, max_bits=40)
    return int(len(codes) - len(np.unique(codes)))


def count_batch(
    data: pa.Table | pa.RecordBatch,
    contract: TableContract,
    *,
    primary_key_check: bool = True,
    freshness_column: str | None = None,
) -> CheckCounts:
    """Count nulls, value-check violations and duplicate keys in one in-memory chunk of a table."""
    counts = CheckCounts(rows=data.num_rows)
    names = set(data.schema.names)
    for col in contract.columns:
        if col.name not in names:
            continue
        arr = _as_array(data.column(col.name))
        counts.nulls[col.name] = arr.null_count
        _value_checks(counts, col, arr)
    if primary_key_check and all(k in names for k in contract.primary_key):
        counts.pk_duplicates = count_pk_duplicates([data.column(k) for k in contract.primary_key])
    column = freshness_column or (contract.freshness.column if contract.freshness else None)
    if column and column in names and data.num_rows:
        newest = pc.max(data.column(column))
        if newest.is_valid:
            counts.max_value[column] = int(newest.cast(pa.int64()).as_py())
    return counts


def _type_matches(actual: pa.DataType, expected: pa.DataType) -> bool:
    if pa.types.is_dictionary(actual):
        actual = actual.value_type
    if pa.types.is_large_string(actual) or pa.types.is_string_view(actual):
        actual = pa.string()
    return actual == expected


def stored_type(t: pa.DataType) -> pa.DataType:
    """The Arrow type a contract type is stored as in the dataset's Iceberg tables (int8/int16 as int32,
    uint32 as int64, every timestamp in microseconds, zoned ones in UTC)."""
    if pa.types.is_integer(t) and (t.bit_width < 32 or pa.types.is_uint16(t)):
        return pa.int32()
    if pa.types.is_uint32(t):
        return pa.int64()
    if pa.types.is_timestamp(t):
        return pa.timestamp("us", tz="UTC" if t.tz else None)
    return t


def schema_check(schema: pa.Schema, contract: TableContract) -> CheckResult:
    """Every contract column present with exactly the contract's type, or the type it is stored as."""
    problems = []
    for col in contract.columns:
        if col.name not in schema.names:
            problems.append(f"{col.name}: missing")
            continue
        actual = schema.field(col.name).type
        if not (_type_matches(actual, col.arrow_type) or _type_matches(actual, stored_type(col.arrow_type))):
            problems.append(f"{col.name}: {actual} != {col.arrow_type}")
    return CheckResult(
        table=contract.table,
        check="schema",
        severity=contract.severity_of("schema"),
        passed=not problems,
        detail="; ".join(problems) or f"{len(contract.columns)} columns with contract types",
        failing_rows=0,
    )


def evaluate(
    counts: CheckCounts,
    contract: TableContract,
    *,
    schema: pa.Schema | None = None,
    now: datetime | None = None,
    newest_change: datetime | None = None,
    expected_rows: int | None = None,
    expected_from: str = "expected",
) -> list[CheckResult]:
    """Tallies to results: schema, not-null, primary key, allowed values, range, regex, freshness, rows."""
    t = contract.table
    results: list[CheckResult] = []
    if schema is not None:
        results.append(schema_check(schema, contract))
    for col in contract.columns:
        if not col.nullable:
            nulls = counts.nulls.get(col.name, 0)
            results.append(
                CheckResult(
                    t,
                    "not_null",
                    contract.severity_of("not_null"),
                    nulls == 0,
                    f"{nulls} null(s) of {counts.rows} rows",
                    column=col.name,
                    failing_rows=nulls,
                )
            )
        for kind, rule in (
            ("allowed_values", col.allowed_values),
            ("range", (col.min, col.max)),
            ("regex", col.regex),
        ):
            if rule is None or rule == (None, None):
                continue
            bad = counts.violations.get(f"{kind}:{col.name}", 0)
            rule_text = {
                "allowed_values": f"in {col.allowed_values}",
                "range": f"in [{col.min}, {col.max}]",
                "regex": f"matches {col.regex!r}",
            }[kind]
            results.append(
                CheckResult(
                    t,
                    kind,
                    contract.severity_of(kind),
                    bad == 0,
                    f"{bad} value(s) not {rule_text}",
                    column=col.name,
                    failing_rows=bad,
                    samples=list(counts.samples.get(f"{kind}:{col.name}", [])),
                )
            )
    results.append(
        CheckResult(
            t,
            "primary_key",
            contract.severity_of("primary_key"),
            counts.pk_duplicates == 0,
            f"{counts.pk_duplicates} duplicate key(s) on {contract.primary_key}",
            failing_rows=counts.pk_duplicates,
        )
    )
    if contract.freshness is not None:
        now = now or datetime.now(UTC)
        newest = newest_change
        if newest is None and contract.freshness.column in counts.max_value:
            newest = datetime.fromtimestamp(counts.max_value[contract.freshness.column] / 1e6, UTC)
        if newest is None:
            passed, detail = False, f"no {contract.freshness.column} value to judge freshness"
        else:
            lag = now - newest
            passed = lag <= contract.freshness.max_lag
            detail = f"newest change {newest.isoformat()} is {lag} old (max {contract.freshness.max_lag})"
        results.append(
            CheckResult(
                t,
                "freshness",
                contract.severity_of("freshness"),
                passed,
                detail,
                column=contract.freshness.column,
            )
        )
    if expected_rows is not None:
        results.append(
            row_count_result(
                contract, "row_count", counts.rows, expected_rows, contract.row_count.tolerance, expected_from
            )
        )
    return results


def row_count_result(
    contract: TableContract, kind: str, rows: int, expected: int, tolerance: float, basis: str
) -> CheckResult:
    """Rows against an expected count, within ``tolerance`` (relative to the expected count)."""
    diff = abs(rows - expected)
    allowed = tolerance * max(expected, 1)
    return CheckResult(
        contract.table,
        kind,
        contract.severity_of(kind),
        diff <= allowed,
        f"{rows} rows vs {expected} {basis} (difference {diff}, allowed {allowed:.0f})",
        failing_rows=diff,
    )


# ------------------------------------------------------------------------------------ Parquet validation


@dataclass
class ValidationReport:
    table: str
    rows: int
    files: int
    results: list[CheckResult]
    columns_read: list[str]

    @property
    def passed(self) -> bool:
        return publishable(self.results)


def _stats_prove(
    meta: pq.RowGroupMetaData, index: dict[str, int], col: ColumnSpec
) -> tuple[int, bool] | None:
    """From a row group's statistics: (null count, value checks proven) or None if stats are missing."""
    if col.name not in index:
        return None
    stats = meta.column(index[col.name]).statistics
    if stats is None or not stats.has_null_count:
        return None
    needs_values = col.allowed_values is not None or col.regex is not None
    if col.min is not None or col.max is not None:
        # String min/max can be truncated, so only numeric and temporal statistics prove a range.
        numeric = (
            pa.types.is_integer(col.arrow_type)
            or pa.types.is_floating(col.arrow_type)
            or pa.types.is_temporal(col.arrow_type)
        )
        if not (numeric and stats.has_min_max):
            needs_values = True
        else:
            lo, hi = stats.min, stats.max
            if col.min is not None and lo < col.bound("min").as_py():
                needs_values = True
            if col.max is not None and hi > col.bound("max").as_py():
                needs_values = True
    return stats.null_count, not needs_values


def validate_parquet(
    paths: list[str | Path],
    contract: TableContract,
    *,
    now: datetime | None = None,
    expected_rows: int | None = None,
    use_statistics: bool = True,
    batch_rows: int = 262_144,
) -> ValidationReport:
    """Validate Parquet files against a contract, reading row group by row group.

    With ``use_statistics`` a row group's null counts and numeric min/max come from its footer, and a column
    is read only when its statistics cannot prove the check (always for keys, allowed values and regex).
    """
    counts = CheckCounts()
    schema = None
    hashes: list[np.ndarray] = []
    key_chunks: list[list[pa.Array]] = []
    read_columns: set[str] = set()
    fresh_col = contract.freshness.column if contract.freshness else None
    # Columns checked against a set or a pattern are read as dictionaries: each distinct value is judged once.
    categorical = [
        c.name
        for c in contract.columns
        if pa.types.is_string(c.arrow_type) and (c.allowed_values is not None or c.regex is not None)
    ]
    for path in paths:
        pf = pq.ParquetFile(path, read_dictionary=categorical)
        schema = schema or pf.schema_arrow
        index = {pf.metadata.schema.column(i).name: i for i in range(pf.metadata.num_columns)}
        for rg in range(pf.num_row_groups):
            meta = pf.metadata.row_group(rg)
            counts.rows += meta.num_rows
            to_read: list[ColumnSpec] = []
            for col in contract.columns:
                if col.name not in pf.schema_arrow.names:
                    continue
                proof = _stats_prove(meta, index, col) if use_statistics else None
                if proof is None:
                    if (
                        not col.nullable
                        or col.allowed_values
                        or col.regex
                        or col.min is not None
                        or col.max is not None
                        or not use_statistics
                    ):
                        to_read.append(col)
                    continue
                nulls, proven = proof
                counts.nulls[col.name] = counts.nulls.get(col.name, 0) + nulls
                if not proven:
                    to_read.append(col)
            names = sorted({c.name for c in to_read} | set(contract.primary_key))
            if fresh_col and fresh_col in pf.schema_arrow.names:
                stats = meta.column(index[fresh_col]).statistics if fresh_col in index else None
                if use_statistics and stats is not None and stats.has_min_max:
                    newest = (
                        pa.scalar(stats.max, pf.schema_arrow.field(fresh_col).type).cast(pa.int64()).as_py()
                    )
                    counts.max_value[fresh_col] = max(newest, counts.max_value.get(fresh_col, newest))
                else:
                    names = sorted(set(names) | {fresh_col})
            names = [n for n in names if n in pf.schema_arrow.names]
            read_columns.update(names)
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[rg], columns=names):
                part = CheckCounts(rows=0)
                for col in to_read:
                    arr = batch.column(col.name)
                    part.nulls[col.name] = arr.null_count
                    _value_checks(part, col, arr)
                if fresh_col in batch.schema.names and batch.num_rows:
                    newest = pc.max(batch.column(fresh_col))
                    if newest.is_valid:
                        part.max_value[fresh_col] = int(newest.cast(pa.int64()).as_py())
                counts.add(part)
                keys = [batch.column(k) for k in contract.primary_key if k in batch.schema.names]
                if len(keys) == len(contract.primary_key):
                    hashes.append(hash_columns(keys))
                    key_chunks.append(keys)
    if hashes:
        all_hashes = np.concatenate(hashes)
        sorted_h = np.sort(all_hashes)
        if (sorted_h[1:] == sorted_h[:-1]).any():
            # Rare: only when 64-bit hashes collide do we compare the actual key values.
            counts.pk_duplicates = count_pk_duplicates(
                [
                    pa.chunked_array([chunk[i] for chunk in key_chunks])
                    for i in range(len(contract.primary_key))
                ]
            )
    results = evaluate(counts, contract, schema=schema, now=now, expected_rows=expected_rows)
    return ValidationReport(contract.table, counts.rows, len(paths), results, sorted(read_columns))
