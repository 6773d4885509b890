"""Builders shared by the dataset tests: small contracts and DMS change files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
from change_files import dms_sequence

from finetune_pipeline.datasets.dms_format import OP, SEQ, TS, cdc_file_name, load_file_name, write_dms_file

REPO = Path(__file__).resolve().parents[2]
DEMO_CONTRACTS = REPO / "include" / "contracts"
T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)

ITEMS_YAML = """\
table: shop.items
primary_key: [item_id]
columns:
  - {name: item_id, type: int64, nullable: false}
  - {name: name, type: string, nullable: false}
  - {name: qty, type: int32, min: 0, max: 1000}
  - {name: status, type: string, allowed_values: [new, done]}
row_count: {tolerance: 1.0}
bad_file_policy: quarantine_and_continue
"""
ITEMS_SCHEMA = pa.schema(
    [
        pa.field(OP, pa.string()),
        pa.field(TS, pa.timestamp("us", tz="UTC")),
        pa.field(SEQ, pa.string()),
        pa.field("item_id", pa.int64()),
        pa.field("name", pa.string()),
        pa.field("qty", pa.int32()),
        pa.field("status", pa.string()),
    ]
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def item_events(rows: list[tuple]) -> pa.Table:
    """Rows of (op, seconds after T0, change counter, item_id, name, qty, status) as a DMS CDC table."""
    out = []
    for op, sec, counter, item_id, name, qty, status in rows:
        ts = at(sec)
        out.append(
            {
                OP: op,
                TS: ts,
                SEQ: dms_sequence(ts, counter),
                "item_id": item_id,
                "name": name,
                "qty": qty,
                "status": status,
            }
        )
    return pa.Table.from_pylist(out, schema=ITEMS_SCHEMA)


def item_load(rows: list[tuple]) -> pa.Table:
    """Rows of (item_id, name, qty, status) as a full-load table (Op=I, transfer time, no sequence)."""
    out = [
        {OP: "I", TS: at(-60), SEQ: None, "item_id": i, "name": n, "qty": q, "status": s}
        for i, n, q, s in rows
    ]
    return pa.Table.from_pylist(out, schema=ITEMS_SCHEMA)


def put_cdc(
    store, table: pa.Table, seconds: float, fmt: str = "parquet", table_path: str = "shop/items"
) -> str:
    key = f"landing/{table_path}/{cdc_file_name(at(seconds), fmt)}"
    write_dms_file(store, key, table, fmt)
    return key


def put_load(store, table: pa.Table, n: int = 1, fmt: str = "parquet", table_path: str = "shop/items") -> str:
    key = f"landing/{table_path}/{load_file_name(n, fmt)}"
    write_dms_file(store, key, table, fmt)
    return key


def published(spec, version: str | None = None, access=None):
    """A published version through the reader training and the CLI use (the newest when None)."""
    from finetune_pipeline.datasets.catalog import load
    from finetune_pipeline.datasets.reader import open_version

    return open_version(load(spec.catalog, access), spec.catalog.namespace, version)


def published_rows(store, spec, table: str = "shop.items", version: str | None = None, access=None) -> dict:
    """A published version's rows of a table keyed by primary key value (first key column), without the
    bucket column."""
    rows = {}
    for row in published(spec, version, access).tables[table].to_arrow().to_pylist():
        row.pop("_bucket")
        pk = next(iter(row.values()))
        assert pk not in rows, f"duplicate key {pk} across files"
        rows[pk] = row
    return rows


def versions(spec, access=None) -> list[str]:
    from finetune_pipeline.datasets.catalog import load
    from finetune_pipeline.datasets.reader import published_versions

    return published_versions(load(spec.catalog, access), spec.catalog.namespace)


def iceberg_table(spec, table: str = "shop.items", access=None):
    from finetune_pipeline.datasets.catalog import load

    return load(spec.catalog, access).load_table(spec.catalog.identifier(table))


def head_state(store, spec, table: str = "shop.items", access=None):
    """Where the next sync of a table resumes: the state its ``main`` snapshot's summary names."""
    from finetune_pipeline.datasets.iceberg_tables import summary_of
    from finetune_pipeline.datasets.state import TableState

    snapshot = iceberg_table(spec, table, access).current_snapshot()
    return TableState.from_snapshot(summary_of(snapshot), store, spec.dataset_prefix)
