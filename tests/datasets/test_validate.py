"""Contract checks over Arrow and Parquet: counts, severities, samples, and the statistics shortcut."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from finetune_pipeline.datasets.contracts import parse_contract
from finetune_pipeline.datasets.validate import (
    CheckCounts,
    count_batch,
    count_pk_duplicates,
    evaluate,
    publishable,
    validate_parquet,
)

CONTRACT = parse_contract(
    yaml.safe_load("""
table: shop.orders
primary_key: [order_id]
columns:
  - {name: order_id, type: int64, nullable: false}
  - {name: sku, type: string, nullable: false, regex: "[A-Z]{3}-[0-9]{4}"}
  - {name: qty, type: int32, min: 1, max: 100}
  - {name: state, type: string, allowed_values: [open, shipped]}
  - {name: placed_at, type: "timestamp[us, UTC]"}
freshness: {max_lag: 1h, column: placed_at}
row_count: {tolerance: 0.1}
severity: {regex: warning}
""")
)
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _table(n: int = 1000, **broken) -> pa.Table:
    rows = {
        "order_id": list(range(n)),
        "sku": [f"ABC-{i % 10000:04d}" for i in range(n)],
        "qty": [1 + i % 100 for i in range(n)],
        "state": ["open" if i % 2 else "shipped" for i in range(n)],
        "placed_at": [NOW - timedelta(minutes=30 + i % 10) for i in range(n)],
    }
    for column, changes in broken.items():
        for i, value in changes.items():
            rows[column][i] = value
    schema = pa.schema(
        [
            ("order_id", pa.int64()),
            ("sku", pa.string()),
            ("qty", pa.int32()),
            ("state", pa.string()),
            ("placed_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    return pa.table(rows, schema=schema)


def _by_name(results):
    return {r.name: r for r in results}


def test_clean_table_passes_every_check():
    results = evaluate(
        count_batch(_table(), CONTRACT), CONTRACT, schema=_table().schema, now=NOW, expected_rows=1000
    )
    assert publishable(results)
    names = set(_by_name(results))
    assert names == {
        "schema",
        "not_null:order_id",
        "not_null:sku",
        "regex:sku",
        "range:qty",
        "allowed_values:state",
        "primary_key",
        "freshness:placed_at",
        "row_count",
    }


def test_each_violation_is_counted_with_samples():
    table = _table(
        qty={3: 0, 4: 101, 5: None}, state={7: "lost"}, sku={9: "bad", 10: None}, order_id={11: 12}
    )
    results = _by_name(evaluate(count_batch(table, CONTRACT), CONTRACT, now=NOW))
    assert results["range:qty"].failing_rows == 2 and sorted(results["range:qty"].samples) == [0, 101]
    assert results["allowed_values:state"].failing_rows == 1 and results["allowed_values:state"].samples == [
        "lost"
    ]
    assert results["regex:sku"].failing_rows == 1 and results["regex:sku"].severity == "warning"
    assert results["not_null:sku"].failing_rows == 1
    assert results["primary_key"].failing_rows == 1
    assert not publishable(results.values())
    # Only warnings fail: still publishable.
    only_regex = _table(sku={9: "bad"})
    assert publishable(evaluate(count_batch(only_regex, CONTRACT), CONTRACT, now=NOW))


def test_counts_merge_across_chunks():
    table = _table(qty={3: 0}, state={900: "lost"})
    whole = count_batch(table, CONTRACT, primary_key_check=False)
    parts = CheckCounts()
    for batch in table.to_batches(max_chunksize=128):
        parts.add(count_batch(batch, CONTRACT, primary_key_check=False))
    assert parts.violations == whole.violations and parts.nulls == whole.nulls and parts.rows == 1000
    assert CheckCounts.from_json(parts.to_json()).violations == parts.violations


def test_freshness_and_row_count():
    stale = evaluate(
        count_batch(_table(), CONTRACT), CONTRACT, now=NOW + timedelta(hours=2), expected_rows=1200
    )
    results = _by_name(stale)
    assert not results["freshness:placed_at"].passed and "old" in results["freshness:placed_at"].detail
    assert not results["row_count"].passed and results["row_count"].failing_rows == 200


def test_schema_check_reports_type_and_missing_columns():
    table = _table().drop_columns(["state"]).set_column(2, "qty", pa.array([1] * 1000, pa.int64()))
    [schema] = [r for r in evaluate(CheckCounts(), CONTRACT, schema=table.schema) if r.check == "schema"]
    assert not schema.passed and "state: missing" in schema.detail and "qty: int64 != int32" in schema.detail


def test_pk_duplicates_exact_on_strings_and_composites():
    assert count_pk_duplicates([pa.array(["a", "b", "a", "a"])]) == 2
    assert count_pk_duplicates([pa.array([1, 1, 2]), pa.array(["x", "y", "x"])]) == 0


@pytest.mark.parametrize("use_statistics", [True, False])
def test_parquet_validation_with_and_without_statistics(tmp_path, use_statistics):
    good, bad = tmp_path / "good.parquet", tmp_path / "bad.parquet"
    pq.write_table(_table(), good, row_group_size=200)
    pq.write_table(_table(qty={500: 0}, state={10: "lost"}).slice(0, 1000), bad, row_group_size=200)
    clean = validate_parquet([good], CONTRACT, now=NOW, expected_rows=1000, use_statistics=use_statistics)
    assert clean.passed and clean.rows == 1000
    broken = validate_parquet([good, bad], CONTRACT, now=NOW, use_statistics=use_statistics)
    results = _by_name(broken.results)
    assert results["range:qty"].failing_rows == 1
    assert results["allowed_values:state"].failing_rows == 1
    assert results["primary_key"].failing_rows == 1000  # the same ids in both files
    if use_statistics:
        # Range and freshness come from footers where they prove the check; keys and sets are read.
        assert "placed_at" not in clean.columns_read and "qty" not in clean.columns_read
        assert {"order_id", "state", "sku"} <= set(clean.columns_read)
