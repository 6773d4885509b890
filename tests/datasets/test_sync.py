"""run_sync end to end on a local bucket and a SQL catalog: incremental discovery, quarantine, publish rules,
evolution, retention, bucketing."""

from __future__ import annotations

import json
from datetime import timedelta

import pyarrow.parquet as pq
import pytest
from change_files import seed_changes, seed_tables, write_seed
from ds_helpers import (
    T0,
    at,
    head_state,
    iceberg_table,
    item_events,
    item_load,
    published,
    published_rows,
    put_cdc,
    put_load,
    versions,
)

from finetune_pipeline.datasets.dms_format import cdc_file_name
from finetune_pipeline.datasets.reconcile import DmsTableCounts, OutsideCounts
from finetune_pipeline.datasets.sync import SyncSpec, run_sync

NOW = T0 + timedelta(hours=1)


class CountingStore:
    """Wraps a store and records what each list_after call returned."""

    def __init__(self, inner):
        self.inner = inner
        self.listings: list[tuple[str, str | None, list[str]]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def list_after(self, prefix, start_after=None):
        keys = []
        for info in self.inner.list_after(prefix, start_after):
            keys.append(info.key)
            yield info
        self.listings.append((prefix, start_after, keys))


def _base(store):
    put_load(store, item_load([(1, "a", 1, "new"), (2, "b", 2, "new"), (3, "c", 3, "new")]))
    put_cdc(store, item_events([("U", 10, 1, 1, "a1", 10, "done"), ("D", 11, 2, 3, "c", 3, "new")]), 12)


def test_full_then_incremental(store, spec):
    _base(store)
    first = run_sync(store, spec, now=NOW)
    assert first.status == "published" and first.published
    assert first.row_counts == {"shop.items": 2}
    assert {k: v["name"] for k, v in published_rows(store, spec).items()} == {1: "a1", 2: "b"}

    put_cdc(store, item_events([("I", 20, 3, 4, "d", 4, "new"), ("U", 21, 4, 2, "b2", 5, "done")]), 22)
    counting = CountingStore(store)
    second = run_sync(counting, spec, now=NOW)
    assert second.status == "published" and second.previous_version == first.version
    assert {k: v["name"] for k, v in published_rows(store, spec).items()} == {1: "a1", 2: "b2", 4: "d"}
    # Discovery started after the watermark: neither the full load nor the first CDC file was read again.
    (prefix, start_after, listed) = counting.listings[0]
    assert start_after is not None and start_after.startswith("landing/shop/items/2026")
    assert listed[0].endswith(cdc_file_name(at(12)))  # inside the late-file grace window, skipped as seen
    assert versions(spec)[-1] == second.version
    state = head_state(store, spec)
    assert state.cdc_watermark == cdc_file_name(at(22))
    assert state.recent_files == [cdc_file_name(at(12))]


def test_widening_the_grace_window_never_takes_a_file_twice(store, spec):
    put_load(store, item_load([(1, "a", 1, "new")]))
    put_cdc(store, item_events([("I", 50, 1, 2, "b", 2, "new")]), 60)
    put_cdc(store, item_events([("I", 1790, 2, 3, "c", 3, "new")]), 1800)
    narrow = spec.model_copy(update={"late_file_grace": timedelta(minutes=10)})
    assert run_sync(store, narrow, now=NOW).row_counts == {"shop.items": 3}

    wide = spec.model_copy(update={"late_file_grace": timedelta(minutes=60)})
    assert run_sync(store, wide, now=NOW).status == "up_to_date"
    put_cdc(store, item_events([("I", 2390, 3, 4, "d", 4, "new")]), 2400)
    after = run_sync(store, wide, now=NOW)
    assert after.published and after.row_counts == {"shop.items": 4}
    assert all(c.passed for c in after.checks if c.check == "row_count"), after.checks
    state = head_state(store, spec)
    assert state.cdc_events == {"I": 3, "U": 0, "D": 0}


def test_nothing_new_is_up_to_date(store, spec):
    _base(store)
    first = run_sync(store, spec, now=NOW)
    again = run_sync(store, spec, now=NOW)
    assert again.status == "up_to_date" and not again.published
    assert again.version == first.version
    assert versions(spec) == [first.version]
    assert len(iceberg_table(spec).snapshots()) == 1  # nothing committed


def test_events_at_or_before_the_snapshot_are_dropped(store, spec):
    put_load(store, item_load([(1, "loaded", 1, "new")]))
    # Committed before the snapshot: already in the full load, must not be re-applied.
    put_cdc(
        store, item_events([("U", -5, 1, 1, "pre-snapshot", 9, "new"), ("D", 0, 2, 1, "x", 1, "new")]), -1
    )
    put_cdc(store, item_events([("I", 5, 3, 2, "after", 2, "new")]), 6)
    result = run_sync(store, spec, now=NOW)
    assert result.published
    rows = published_rows(store, spec)
    assert {k: v["name"] for k, v in rows.items()} == {1: "loaded", 2: "after"}
    report = json.loads(store.get_bytes(result.report_keys["json"]))
    assert report["tables"]["shop.items"]["events"]["dropped_before_snapshot"] == 2


def test_bad_file_is_quarantined_and_the_rest_published(store, spec):
    _base(store)
    bad_key = put_cdc(store, item_events([("X", 13, 3, 5, "bad", 1, "new")]), 14)
    original = store.get_bytes(bad_key)
    put_cdc(store, item_events([("I", 15, 4, 6, "good", 1, "new")]), 16)
    result = run_sync(store, spec, now=NOW)
    assert result.published
    assert set(published_rows(store, spec)) == {1, 2, 6}
    [q] = result.quarantined
    assert q.source_key == bad_key and q.reason == "bad_op"
    assert not store.exists(bad_key)
    assert store.get_bytes(q.quarantine_key) == original  # moved, never deleted
    report = json.loads(store.get_bytes(q.report_key))
    assert report["reason"] == "bad_op" and report["source_key"] == bad_key
    [check] = [c for c in result.checks if c.check == "bad_file"]
    assert check.severity == "warning" and not check.passed


def test_quarantine_and_stop_blocks_publish(store, spec, contracts_dir):
    path = contracts_dir / "shop.items.yaml"
    path.write_text(path.read_text().replace("quarantine_and_continue", "quarantine_and_stop"))
    _base(store)
    first = run_sync(store, spec, now=NOW)
    before = iceberg_table(spec).metadata_location
    bad_key = put_cdc(store, item_events([("I", 20, 3, 7, "x", 1, "new")]).drop_columns(["item_id"]), 21)
    put_cdc(store, item_events([("I", 22, 4, 8, "y", 1, "new")]), 23)
    result = run_sync(store, spec, now=NOW)
    assert result.status == "blocked" and not result.published
    assert result.quarantined[0].source_key == bad_key
    assert result.quarantined[0].reason == "missing_column"
    assert iceberg_table(spec).metadata_location == before  # the catalog was not touched
    assert versions(spec) == [first.version]


def test_blocking_check_keeps_current_and_watermark(store, spec):
    _base(store)
    first = run_sync(store, spec, now=NOW)
    put_cdc(store, item_events([("U", 30, 5, 1, "a", 5000, "done")]), 31)  # qty out of range 0..1000
    blocked = run_sync(store, spec, now=NOW)
    assert blocked.status == "blocked"
    [failed] = [c for c in blocked.checks if not c.passed]
    assert failed.name == "range:qty" and failed.samples == [5000]
    assert store.exists(blocked.report_keys["html"])  # the report says why, though nothing was published
    assert blocked.version == "v000002" and versions(spec) == [first.version]
    assert head_state(store, spec).cdc_watermark == cdc_file_name(at(12))
    # A later correction: the next run takes both files (the watermark had not moved) and publishes.
    put_cdc(store, item_events([("U", 40, 6, 1, "a", 50, "done")]), 41)
    fixed = run_sync(store, spec, now=NOW)
    assert fixed.published and fixed.version == "v000002"  # the blocked attempt's number was never taken
    assert published_rows(store, spec)[1]["qty"] == 50


def test_late_file_inside_the_grace_window_is_applied(store, spec):
    _base(store)
    put_cdc(store, item_events([("U", 100, 10, 2, "b-late-run", 2, "new")]), 101)
    run_sync(store, spec, now=NOW)
    # A file named (and committed) before the watermark lands after the run; DMS uploads can race.
    put_cdc(store, item_events([("U", 50, 5, 2, "b-older", 2, "new"), ("I", 51, 6, 9, "late", 1, "new")]), 52)
    result = run_sync(store, spec, now=NOW)
    assert result.published
    rows = published_rows(store, spec)
    assert rows[2]["name"] == "b-late-run"  # older event loses to the newer one already applied
    assert rows[9]["name"] == "late"


def test_files_out_of_order_within_a_run(store, spec):
    _base(store)
    # File names disagree with commit order: ordering follows (_dms_ts, _dms_seq), not the key.
    put_cdc(store, item_events([("U", 30, 30, 2, "newest", 2, "new")]), 20)
    put_cdc(store, item_events([("U", 25, 25, 2, "older", 2, "new")]), 40)
    run_sync(store, spec, now=NOW)
    assert published_rows(store, spec)[2]["name"] == "newest"


def test_adding_a_nullable_column(store, spec, contracts_dir):
    _base(store)
    run_sync(store, spec, now=NOW)
    path = contracts_dir / "shop.items.yaml"
    path.write_text(
        path.read_text().replace("  - {name: status", "  - {name: color, type: string}\n  - {name: status")
    )
    table = item_events([("I", 20, 3, 5, "e", 1, "new")])
    table = table.append_column("color", __import__("pyarrow").array(["red"]))
    put_cdc(store, table, 21)
    result = run_sync(store, spec, now=NOW)
    assert result.published
    rows = published_rows(store, spec)
    assert rows[5]["color"] == "red"
    assert rows[1]["color"] is None and rows[2]["color"] is None


def test_retention_keeps_the_newest_versions_and_deletes_what_nothing_references(store, spec):
    spec = spec.model_copy(update={"retention": 2, "orphan_file_grace": timedelta(0)})
    _base(store)
    kept = [run_sync(store, spec, now=NOW).version]
    for i in range(3):
        put_cdc(store, item_events([("I", 100 + i, 10 + i, 100 + i, "n", 1, "new")]), 101 + i)
        kept.append(run_sync(store, spec, now=NOW).version)
    assert kept == ["v000001", "v000002", "v000003", "v000004"]
    table = iceberg_table(spec)
    tags = sorted(n for n, r in table.refs().items() if r.snapshot_ref_type.value == "tag")
    assert tags == kept[-2:] and versions(spec) == kept[-2:]
    assert len(table.snapshots()) == 2  # older snapshots expired, tagged ones inside retention stay
    # Older tags still read, each as it was published.
    assert set(published_rows(store, spec, version="v000003")) == {1, 2, 100, 101}
    # Every data file left is one a kept snapshot needs; reports and state of expired versions are gone.
    from finetune_pipeline.datasets.iceberg_tables import referenced_files

    needed = {store.key_of(f) for f in referenced_files(table)}
    data = [i.key for i in store.list_after("warehouse/") if i.key.endswith((".parquet", ".avro"))]
    assert data and set(data) <= needed
    assert [d.rstrip("/").rsplit("/", 1)[-1] for d in store.list_dirs("datasets/shop/reports")] == kept[-2:]
    states = store.list_dirs("datasets/shop/_state/shop.items")
    assert sorted(d.rstrip("/").rsplit("/", 1)[-1].split("-")[0] for d in states) == kept[-2:]


def test_retention_never_deletes_files_younger_than_the_grace(store, spec):
    """Files a writer has written but not committed yet (here: a blocked run's) outlive retention."""
    spec = spec.model_copy(update={"retention": 1})
    _base(store)
    run_sync(store, spec, now=NOW)
    put_cdc(store, item_events([("U", 30, 5, 1, "a", 5000, "done")]), 31)  # blocked: qty out of range
    assert run_sync(store, spec, now=NOW).status == "blocked"
    staged = [i.key for i in store.list_after("warehouse/") if i.key.endswith(".parquet")]
    put_cdc(store, item_events([("U", 40, 6, 1, "a", 50, "done")]), 41)
    assert run_sync(store, spec, now=NOW).published
    left = {i.key for i in store.list_after("warehouse/")}
    assert set(staged) <= left  # unreferenced now, but younger than the 24 h grace


def _data_files(spec, version: str) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for task in published(spec, version).tables["shop.items"].scan().plan_files():
        out.setdefault(task.file.partition[0], set()).add(task.file.file_path)
    return out


def test_range_buckets_and_untouched_buckets_keep_their_files(store, spec):
    """An integer key is bucketed by key range; a sync replaces the touched buckets' files (one partition
    each) and the new snapshot references the other buckets' files as they were."""
    spec = spec.model_copy(update={"dataset_prefix": "ds", "rows_per_bucket": 50, "merge_memory_bytes": 2**16})
    put_load(store, item_load([(i, f"n{i}", i % 100, "new") for i in range(1, 401)]))
    put_cdc(store, item_events([("U", 1, 1, 7, "seven", 7, "done"), ("D", 2, 2, 8, "x", 1, "new")]), 3)
    first = run_sync(store, spec, now=NOW)
    table = iceberg_table(spec)
    assert json.loads(table.properties["finetune.bucketing"])["kind"] == "range"
    before = _data_files(spec, first.version)
    assert sorted(before) == list(range(8))  # keys 1..400, 50 per bucket
    rows = published_rows(store, spec)
    assert len(rows) == 399 and rows[7]["name"] == "seven" and 8 not in rows
    put_cdc(store, item_events([("U", 10, 3, 9, "nine", 9, "done"), ("I", 11, 4, 420, "new", 1, "new")]), 12)
    second = run_sync(store, spec, now=NOW)
    report = json.loads(store.get_bytes(second.report_keys["json"]))["tables"]["shop.items"]
    assert report["buckets_rewritten"] == 2 and report["buckets_kept"] == 7  # bucket 0, and new bucket 8
    after = _data_files(spec, second.version)
    assert sorted(after) == list(range(9))
    assert all(after[b] == before[b] for b in range(1, 8))  # the same files, not copies
    assert after[0].isdisjoint(before[0])
    summary = iceberg_table(spec).current_snapshot().summary
    assert summary["deleted-data-files"] == "1" and summary["added-data-files"] == "2"
    rows = published_rows(store, spec)
    assert len(rows) == 400 and rows[9]["name"] == "nine" and rows[420]["name"] == "new"
    assert first.version != second.version


def test_hash_buckets_for_a_string_key(store, spec, contracts_dir):
    path = contracts_dir / "shop.items.yaml"
    path.write_text(path.read_text().replace("primary_key: [item_id]", "primary_key: [name]"))
    spec = spec.model_copy(update={"rows_per_bucket": 50, "merge_memory_bytes": 2**16})
    put_load(store, item_load([(i, f"n{i}", i % 100, "new") for i in range(1, 401)]))
    assert run_sync(store, spec, now=NOW).published
    bucketing = json.loads(iceberg_table(spec).properties["finetune.bucketing"])
    assert bucketing["kind"] == "hash" and bucketing["buckets"] == 8  # 400 rows / 50, as a power of two
    put_cdc(store, item_events([("U", 10, 3, 9, "n9", 9, "done")]), 11)
    second = run_sync(store, spec, now=NOW)
    report = json.loads(store.get_bytes(second.report_keys["json"]))["tables"]["shop.items"]
    assert report["buckets_rewritten"] == 1 and report["buckets_kept"] == 7
    rows = {r["name"]: r for r in published(spec).tables["shop.items"].to_arrow().to_pylist()}
    assert len(rows) == 400 and rows["n9"]["qty"] == 9


def _tolerance(contracts_dir, text: str) -> None:
    path = contracts_dir / "shop.items.yaml"
    path.write_text(path.read_text().replace("row_count: {tolerance: 1.0}", text))


def test_row_count_against_the_source(store, spec, contracts_dir):
    _tolerance(
        contracts_dir, "row_count: {tolerance: 0.0, source_tolerance: 0.1}\nseverity: {row_count_source: blocking}"
    )
    _base(store)
    blocked = run_sync(store, spec, now=NOW, outside_counts=OutsideCounts(source={"shop.items": 10}, source_name="src"))
    [check] = [c for c in blocked.checks if c.check == "row_count_source"]
    assert not check.passed and blocked.status == "blocked" and versions(spec) == []
    assert "2 rows vs 10 counted in the source through connection src" in check.detail
    assert "allowed 1" in check.detail
    ok = run_sync(store, spec, now=NOW, outside_counts=OutsideCounts(source={"shop.items": 2}))
    assert ok.published
    assert [c.passed for c in ok.checks if c.check == "row_count_source"] == [True]


def test_row_count_against_a_source_missing_the_table_is_a_failed_warning(store, spec, contracts_dir):
    _base(store)
    result = run_sync(store, spec, now=NOW, outside_counts=OutsideCounts(source={}, source_name="src"))
    [check] = [c for c in result.checks if c.check == "row_count_source"]
    assert not check.passed and check.severity == "warning" and result.published
    assert "no count of shop.items from connection src" in check.detail


def _dms(inserts=0, deletes=0, updates=0):
    return OutsideCounts(
        dms={"shop.items": DmsTableCounts(inserts=inserts, updates=updates, deletes=deletes)}, dms_task="task-1"
    )


def test_row_count_against_dms_statistics(store, spec, contracts_dir):
    """Rows at the snapshot (3 loaded) + inserts - deletes DMS captured, against what was published."""
    _tolerance(contracts_dir, "row_count: {tolerance: 0.0}\nseverity: {row_count_dms: blocking}")
    _base(store)  # 3 loaded, then CDC: one update, one delete -> 2 rows
    first = run_sync(store, spec, now=NOW, outside_counts=_dms(updates=1, deletes=1))
    [check] = [c for c in first.checks if c.check == "row_count_dms"]
    assert check.passed, check.detail
    state = head_state(store, spec)
    assert state.snapshot_rows == 3 and state.cdc_events == {"I": 0, "U": 1, "D": 1}

    # DMS captured an insert whose file has not been applied (late, or not landed yet): the gap shows.
    put_cdc(store, item_events([("I", 20, 3, 4, "d", 4, "new")]), 22)
    second = run_sync(store, spec, now=NOW, outside_counts=_dms(inserts=2, updates=1, deletes=1))
    [check] = [c for c in second.checks if c.check == "row_count_dms"]
    assert not check.passed and second.status == "blocked"
    assert check.detail.startswith("3 rows vs 4 from DMS task task-1: 3 at the snapshot + 2 inserts - 1 deletes")
    assert "this dataset applied 1 inserts and 1 deletes" in check.detail
    assert versions(spec) == [first.version]

    # The counts carry across incremental runs: once DMS agrees, the version publishes.
    third = run_sync(store, spec, now=NOW, outside_counts=_dms(inserts=1, updates=1, deletes=1))
    assert third.published
    state = head_state(store, spec)
    assert state.snapshot_rows == 3 and state.cdc_events == {"I": 1, "U": 1, "D": 1}


def test_dms_reports_no_statistics_for_the_table(store, spec, contracts_dir):
    _tolerance(contracts_dir, "row_count: {tolerance: 0.0}")
    _base(store)
    result = run_sync(store, spec, now=NOW, outside_counts=OutsideCounts(dms={}, dms_task="task-1"))
    [check] = [c for c in result.checks if c.check == "row_count_dms"]
    assert not check.passed and check.severity == "warning" and result.published
    assert "2 rows vs 3 from DMS task task-1: no statistics for this table" in check.detail


def test_outside_counts_are_asked_for_only_when_something_new_landed(store, spec):
    _base(store)
    asked = []

    def counts(tables):
        asked.append(tables)
        return OutsideCounts(source={"shop.items": 2})

    assert run_sync(store, spec, now=NOW, outside_counts=counts).published
    assert run_sync(store, spec, now=NOW, outside_counts=counts).status == "up_to_date"
    assert asked == [["shop.items"]]


def test_dms_statistics_from_the_api_shape():
    counts = OutsideCounts.from_dms_statistics(
        [{"SchemaName": "shop", "TableName": "items", "Inserts": 5, "Deletes": 2, "Updates": 7, "FullLoadRows": 0}],
        task="arn:task",
    )
    assert counts.dms == {"shop.items": DmsTableCounts(inserts=5, updates=7, deletes=2)}
    assert counts.source is None


def test_new_full_load_files_after_the_build_are_flagged(store, spec):
    _base(store)
    run_sync(store, spec, now=NOW)
    put_load(store, item_load([(1, "reloaded", 1, "new")]), n=2)
    result = run_sync(store, spec, now=NOW)
    assert result.status == "up_to_date"
    [warning] = result.checks
    assert warning.check == "full_load_changed" and warning.severity == "warning"
    rebuilt = run_sync(store, spec, now=NOW, full_rebuild=True)
    assert rebuilt.published
    assert published_rows(store, spec)[1]["name"] == "a1"  # the CDC update is newer than any full-load row


def test_full_rebuild_equals_incremental(store, spec):
    _base(store)
    run_sync(store, spec, now=NOW)
    put_cdc(store, item_events([("I", 20, 3, 4, "d", 4, "new"), ("D", 21, 4, 1, "a1", 10, "done")]), 22)
    run_sync(store, spec, now=NOW)
    incremental = published_rows(store, spec)
    rebuilt = run_sync(store, spec, now=NOW, full_rebuild=True)
    assert rebuilt.published
    assert published_rows(store, spec) == incremental


def _seed_truth(tables, changes):
    truth = {name: {next(iter(r.values())): r for r in t.to_pylist()} for name, t in tables.items()}
    for name, files in changes.items():
        for _, cdc in files:
            for row in cdc.to_pylist():
                op = row.pop("Op")
                row.pop("_dms_ts"), row.pop("_dms_seq")
                key = next(iter(row.values()))
                if op == "D":
                    truth[name].pop(key, None)
                else:
                    truth[name][key] = row
    return truth


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_demo_seed_data_end_to_end(store, demo_contracts_dir, catalog_spec, fmt):
    tables = seed_tables(40, 150, seed=3)
    changes = seed_changes(tables, T0, n_files=4, changes_per_file=25, seed=3)
    write_seed(store, "landing", tables, changes, load_time=T0 + timedelta(minutes=3), fmt=fmt)
    spec = SyncSpec(
        landing_prefix="landing", dataset_prefix="ds", contracts_dir=demo_contracts_dir, snapshot_position=T0,
        catalog=catalog_spec,
    )  # fmt: skip
    result = run_sync(store, spec, now=T0 + timedelta(hours=1))
    assert result.published, [c.to_dict() for c in result.failed_checks]
    truth = _seed_truth(tables, changes)
    for name in ("public.customers", "public.tickets"):
        rows = published_rows(store, spec, name)
        assert result.row_counts[name] == len(truth[name])
        assert {
            k: {c: v for c, v in r.items() if not c.startswith("_dms")} for k, r in rows.items()
        } == truth[name]
    html = store.get_bytes(result.report_keys["html"]).decode()
    assert "<svg" in html and "public.tickets" in html


def test_data_files_are_parquet_with_field_ids_and_the_change_columns(store, spec):
    _base(store)
    run_sync(store, spec, now=NOW)
    [location] = published(spec).tables["shop.items"].files()
    key = store.key_of(location)
    assert key.startswith("warehouse/finetune/shop__items/data/_bucket=0/") and key.endswith(".parquet")
    with store.local_path(key) as path:
        schema = pq.read_schema(path)
    assert schema.names == ["item_id", "name", "qty", "status", "_dms_ts", "_dms_seq", "_bucket"]
    assert [f.metadata[b"PARQUET:field_id"] for f in schema] == [str(i).encode() for i in range(1, 8)]


def test_a_contract_edit_that_crashes_the_sync_loses_no_file(store, spec, contracts_dir):
    """Issue 10, item 2: the primary key's type is changed, the sync fails, the contract is reverted: the
    next run takes the file that landed meanwhile."""
    from finetune_pipeline.datasets.iceberg_tables import SchemaMismatchError

    _base(store)
    assert run_sync(store, spec, now=NOW).published
    good = put_cdc(store, item_events([("U", 20, 3, 2, "b-changed", 2, "done")]), 21)
    path = contracts_dir / "shop.items.yaml"
    original = path.read_text()
    path.write_text(original.replace("{name: item_id, type: int64", "{name: item_id, type: string"))
    with pytest.raises(SchemaMismatchError, match="item_id"):
        run_sync(store, spec, now=NOW)
    assert store.exists(good)  # nothing was moved
    assert not list(store.list_after("datasets/shop/quarantine/"))

    path.write_text(original)
    again = run_sync(store, spec, now=NOW)
    assert again.published, again.status
    assert published_rows(store, spec)[2]["name"] == "b-changed"


def test_a_crash_while_staging_moves_no_file(store, spec, monkeypatch):
    """Bad files are moved only once every table is staged: a run that dies before leaves them in place."""
    from finetune_pipeline.datasets.iceberg_tables import TableWrite

    _base(store)
    assert run_sync(store, spec, now=NOW).published
    bad = put_cdc(store, item_events([("X", 20, 3, 5, "bad", 1, "new")]), 21)

    def dies(*args, **kwargs):
        raise RuntimeError("the catalog went away")

    monkeypatch.setattr(TableWrite, "open", dies)
    with pytest.raises(RuntimeError, match="went away"):
        run_sync(store, spec, now=NOW)
    assert store.exists(bad) and not list(store.list_after("datasets/shop/quarantine/"))
    monkeypatch.undo()
    result = run_sync(store, spec, now=NOW)
    assert result.published and [q.source_key for q in result.quarantined] == [bad]


def _stop_policy(contracts_dir) -> None:
    path = contracts_dir / "shop.items.yaml"
    path.write_text(path.read_text().replace("quarantine_and_continue", "quarantine_and_stop"))


def _bad_and_good(store):
    bad = put_cdc(store, item_events([("I", 20, 3, 7, "x", 1, "new")]).drop_columns(["item_id"]), 21)
    put_cdc(store, item_events([("I", 22, 4, 8, "y", 1, "new")]), 23)
    return bad


def test_quarantine_and_stop_holds_every_later_run_until_released(store, spec, contracts_dir, tmp_path):
    """Issue 10, item 1: the file quarantined under quarantine_and_stop blocks this run and the next ones;
    released (fixed) it is read again, and the version holds its rows and every other."""
    from finetune_pipeline.datasets import quarantine

    _stop_policy(contracts_dir)
    _base(store)
    first = run_sync(store, spec, now=NOW)
    bad = _bad_and_good(store)
    assert run_sync(store, spec, now=NOW).status == "blocked"
    for _ in range(2):  # the file is in quarantine/ now, out of discovery's sight: still held
        held = run_sync(store, spec, now=NOW)
        assert held.status == "blocked" and not held.published
        [check] = held.failed_checks
        assert check.check == "quarantine_hold" and check.severity == "blocking" and bad in check.detail
    put_cdc(store, item_events([("I", 30, 5, 9, "z", 1, "new")]), 31)
    assert run_sync(store, spec, now=NOW).status == "blocked"
    assert versions(spec) == [first.version]

    [entry] = quarantine.entries(store, spec.quarantine)
    assert entry.holds and entry.source_key == bad
    fixed = tmp_path / "fixed.parquet"
    pq.write_table(item_events([("I", 20, 3, 7, "x-fixed", 1, "new")]), fixed)
    quarantine.release(store, entry, fixed=fixed, note="item_id restored")
    result = run_sync(store, spec, now=NOW)
    assert result.published, result.failed_checks
    assert {k: v["name"] for k, v in published_rows(store, spec).items()} == {
        1: "a1", 2: "b", 7: "x-fixed", 8: "y", 9: "z"
    }
    [entry] = quarantine.entries(store, spec.quarantine)
    assert entry.status == "applied" and entry.report["applied_in"] == result.version
    assert run_sync(store, spec, now=NOW).status == "up_to_date"


def test_quarantine_and_stop_holds_until_discarded(store, spec, contracts_dir):
    from finetune_pipeline.datasets import quarantine

    _stop_policy(contracts_dir)
    _base(store)
    run_sync(store, spec, now=NOW)
    _bad_and_good(store)
    assert run_sync(store, spec, now=NOW).status == "blocked"
    assert run_sync(store, spec, now=NOW).status == "blocked"
    [entry] = quarantine.entries(store, spec.quarantine)
    with pytest.raises(quarantine.QuarantineError, match="why"):
        quarantine.discard(store, entry, note=" ")
    quarantine.discard(store, entry, note="the source row was re-sent by hand")
    result = run_sync(store, spec, now=NOW)
    assert result.published
    assert set(published_rows(store, spec)) == {1, 2, 8}  # every row but the discarded file's
    [entry] = quarantine.entries(store, spec.quarantine)
    assert entry.status == "discarded" and store.exists(entry.quarantine_key)  # kept as evidence


def test_a_released_file_behind_the_watermark_is_read_again(store, spec):
    """quarantine_and_continue moves the watermark past a bad file; released, it is still taken."""
    from finetune_pipeline.datasets import quarantine

    _base(store)
    bad = put_cdc(store, item_events([("I", 20, 3, 7, "x", 1, "new")]).drop_columns(["item_id"]), 21)
    assert run_sync(store, spec, now=NOW).published
    put_cdc(store, item_events([("I", 2000, 4, 8, "y", 1, "new")]), 2001)  # watermark far past the bad file
    assert run_sync(store, spec, now=NOW).published
    [entry] = quarantine.entries(store, spec.quarantine)
    assert not entry.holds  # continue: nothing held
    with store.local_path(entry.quarantine_key) as path:
        table = pq.read_table(path)
    import pyarrow as pa

    fixed = table.append_column("item_id", pa.array([7], pa.int64()))
    fixed_path = store.root / "fixed.parquet"
    pq.write_table(fixed, fixed_path)
    quarantine.release(store, entry, fixed=fixed_path)
    assert store.exists(bad)
    result = run_sync(store, spec, now=NOW)
    assert result.published and set(published_rows(store, spec)) == {1, 2, 7, 8}


def test_a_change_file_missing_a_column_the_table_holds_is_a_bad_file(store, spec):
    """Issue 10, item 3: DMS writes every column of the table in each file; one missing means the source
    dropped or renamed it. Read as NULL it would wipe the column's values: it is quarantined instead."""
    _base(store)
    run_sync(store, spec, now=NOW)
    bad = put_cdc(store, item_events([("U", 20, 3, 2, "b2", 7, "done")]).drop_columns(["status"]), 21)
    put_cdc(store, item_events([("I", 22, 4, 9, "i", 1, "new")]), 23)
    result = run_sync(store, spec, now=NOW)
    assert result.published
    [q] = result.quarantined
    assert q.source_key == bad and q.reason == "missing_column"
    assert "'status'" in q.detail and "NULL" in q.detail
    rows = published_rows(store, spec)
    assert rows[2]["status"] == "new" and rows[2]["name"] == "b" and rows[9]["status"] == "new"


def test_a_file_without_a_column_the_contract_just_added_reads_it_as_null_and_says_so(store, spec, contracts_dir):
    """Files DMS wrote before the source gained a column lack it: nothing to overwrite, so they are applied,
    and the report says which files were read without it."""
    _base(store)
    run_sync(store, spec, now=NOW)
    path = contracts_dir / "shop.items.yaml"
    path.write_text(path.read_text().replace("  - {name: status", "  - {name: color, type: string}\n  - {name: status"))
    before = put_cdc(store, item_events([("I", 20, 3, 5, "e", 1, "new")]), 21)
    result = run_sync(store, spec, now=NOW)
    assert result.published and not result.quarantined
    [check] = [c for c in result.checks if c.check == "missing_columns"]
    assert check.severity == "warning" and not check.passed
    assert "color" in check.detail and before in check.detail
    assert published_rows(store, spec)[5]["color"] is None
    # Once the table holds the column, a file without it is a bad file.
    put_cdc(store, item_events([("I", 30, 4, 6, "f", 1, "new")]), 31)
    later = run_sync(store, spec, now=NOW)
    assert [q.reason for q in later.quarantined] == ["missing_column"]


def test_extra_columns_warn_by_default_and_are_refused_when_the_contract_says_so(store, spec, contracts_dir):
    import pyarrow as pa

    _base(store)
    run_sync(store, spec, now=NOW)
    table = item_events([("I", 20, 3, 5, "e", 1, "new")])
    extra = put_cdc(store, table.append_column("color", pa.array(["red"])), 21)
    warned = run_sync(store, spec, now=NOW)
    assert warned.published and set(published_rows(store, spec)) == {1, 2, 5}
    [check] = [c for c in warned.checks if c.check == "extra_columns"]
    assert check.severity == "warning" and not check.passed
    assert "color" in check.detail and extra in check.detail and "not published" in check.detail

    path = contracts_dir / "shop.items.yaml"
    path.write_text(path.read_text() + "extra_columns: reject\n")
    refused = put_cdc(store, item_events([("I", 30, 4, 6, "f", 1, "new")]).append_column("size", pa.array([3])), 31)
    result = run_sync(store, spec, now=NOW)
    [q] = result.quarantined
    assert q.source_key == refused and q.reason == "extra_column" and "size" in q.detail
    assert 6 not in published_rows(store, spec)


def test_a_change_file_landing_after_the_grace_window_is_taken_by_the_next_sync_and_said_so(store, spec):
    """Issue 10, item 10: a file named long before the watermark (DMS names a file when it opens it) that
    lands after the last sync is not skipped: the next sync applies it, with a warning. Its events are
    ordered by their commit time, so an older change loses to a newer one already applied."""
    _base(store)
    put_cdc(store, item_events([("U", 3000, 10, 2, "b-newer", 2, "new")]), 3001)
    assert run_sync(store, spec, now=NOW).published
    # Named 50 minutes before the watermark, far outside the 10-minute window; landed just now.
    late = put_cdc(store, item_events([("U", 20, 5, 2, "b-older", 2, "new"), ("I", 21, 6, 9, "late", 1, "new")]), 22)
    result = run_sync(store, spec, now=NOW)
    assert result.published, result.status
    [check] = [c for c in result.checks if c.check == "late_file"]
    assert check.severity == "warning" and not check.passed and late in check.detail
    rows = published_rows(store, spec)
    assert rows[9]["name"] == "late" and rows[2]["name"] == "b-newer"
    # Taken once: the next sync has nothing new.
    assert run_sync(store, spec, now=NOW).status == "up_to_date"


def _strict(contracts_dir) -> None:
    _tolerance(contracts_dir, "row_count: {tolerance: 0.0}")


def _row_count(result):
    [check] = [c for c in result.checks if c.check == "row_count"]
    return check


def test_row_count_passes_on_a_replayed_tail_after_a_dms_task_restart(store, spec, contracts_dir):
    """Issue 10, item 5: a restarted task writes the tail of its previous file again; the same inserts
    arrive twice, and the merged state is right."""
    _strict(contracts_dir)
    _base(store)
    run_sync(store, spec, now=NOW)
    tail = [("I", 20, 3, 4, "d", 4, "new"), ("I", 21, 4, 5, "e", 5, "new")]
    put_cdc(store, item_events(tail), 22)
    put_cdc(store, item_events([*tail, ("I", 23, 5, 6, "f", 6, "new")]), 24)  # the replay, then a new insert
    result = run_sync(store, spec, now=NOW)
    assert result.published, _row_count(result).detail
    assert set(published_rows(store, spec)) == {1, 2, 4, 5, 6} and _row_count(result).passed


def test_row_count_passes_on_a_delete_of_a_row_the_full_load_never_had(store, spec, contracts_dir):
    """A row inserted and deleted while the full load ran: the load never had it, CDC brings its delete."""
    _strict(contracts_dir)
    put_load(store, item_load([(1, "a", 1, "new"), (2, "b", 2, "new")]))
    put_cdc(store, item_events([("D", 5, 1, 9, "gone", 1, "new"), ("I", 6, 2, 3, "c", 3, "new")]), 7)
    result = run_sync(store, spec, now=NOW)
    assert result.published, _row_count(result).detail
    assert set(published_rows(store, spec)) == {1, 2, 3}


def test_row_count_passes_when_cdc_overlaps_the_full_load(store, spec, contracts_dir):
    """Changes captured while the full load ran are in the loaded rows too: an insert of a loaded key."""
    _strict(contracts_dir)
    put_load(store, item_load([(1, "a", 1, "new"), (2, "b", 2, "new"), (3, "c", 3, "new")]))
    put_cdc(store, item_events([("I", 5, 1, 3, "c", 3, "new"), ("U", 6, 2, 2, "b2", 2, "done")]), 7)
    result = run_sync(store, spec, now=NOW)
    assert result.published, _row_count(result).detail
    assert {k: v["name"] for k, v in published_rows(store, spec).items()} == {1: "a", 2: "b2", 3: "c"}


def test_row_count_catches_published_rows_the_sync_lost(store, spec, contracts_dir, monkeypatch):
    """Rows of the previous version that the sync failed to read back are lost from the next one: caught."""
    from finetune_pipeline.datasets.iceberg_tables import TableWrite

    _strict(contracts_dir)
    spec = spec.model_copy(update={"rows_per_bucket": 2})
    put_load(store, item_load([(i, f"n{i}", i, "new") for i in range(1, 7)]))
    assert run_sync(store, spec, now=NOW).published
    put_cdc(store, item_events([("U", 20, 3, 1, "one", 1, "new"), ("U", 21, 4, 6, "six", 6, "new")]), 22)
    original = TableWrite.base_files

    def loses_a_file(self):
        files = original(self)
        first = min(files)
        return {**files, first: files[first][1:]}

    monkeypatch.setattr(TableWrite, "base_files", loses_a_file)
    result = run_sync(store, spec, now=NOW)
    check = _row_count(result)
    assert result.status == "blocked" and not check.passed and check.severity == "blocking"
    assert "6 rows at the previous version" in check.detail


def test_files_complete_catches_a_listed_change_file_the_sync_skipped(store, spec, monkeypatch):
    """File-level completeness: every change file listed in the window is taken, now or before."""
    from finetune_pipeline.datasets import table_sync

    _base(store)
    run_sync(store, spec, now=NOW)
    skipped = put_cdc(store, item_events([("I", 20, 3, 4, "d", 4, "new")]), 21)
    put_cdc(store, item_events([("I", 22, 4, 5, "e", 5, "new")]), 23)
    original = table_sync.discover

    def loses_a_file(*args, **kwargs):
        found = original(*args, **kwargs)
        found.files = [f for f in found.files if f.key != skipped]
        return found

    monkeypatch.setattr(table_sync, "discover", loses_a_file)
    monkeypatch.setattr("finetune_pipeline.datasets.sync.discover", loses_a_file)
    result = run_sync(store, spec, now=NOW)
    [check] = [c for c in result.checks if c.check == "files_complete"]
    assert result.status == "blocked" and not check.passed and check.severity == "blocking"
    assert skipped in check.detail
    monkeypatch.undo()
    assert run_sync(store, spec, now=NOW).published and set(published_rows(store, spec)) == {1, 2, 4, 5}


def test_a_state_from_before_the_taken_files_record_takes_no_file_twice(store, spec):
    """Upgrading: a state without the record of taken files lists from its grace window as before, and
    starts the record; nothing already taken is taken again as 'late'."""
    _base(store)
    for i in range(3):
        put_cdc(store, item_events([("I", 1000 + 600 * i, 10 + i, 20 + i, "n", 1, "new")]), 1001 + 600 * i)
    run_sync(store, spec, now=NOW)
    key = "datasets/shop/" + head_state(store, spec).state_key
    sidecar = json.loads(store.get_bytes(key))
    sidecar.pop("taken_files"), sidecar.pop("taken_since")
    store.put_bytes(key, json.dumps(sidecar).encode())
    assert head_state(store, spec).taken_files is None

    put_cdc(store, item_events([("I", 3000, 20, 30, "new", 1, "new")]), 3001)
    upgraded = run_sync(store, spec, now=NOW)
    report = json.loads(store.get_bytes(upgraded.report_keys["json"]))["tables"]["shop.items"]
    assert upgraded.published and report["applied_files"] == 1
    assert not [c for c in upgraded.checks if c.check == "late_file"]
    put_cdc(store, item_events([("I", 3100, 21, 31, "newer", 1, "new")]), 3101)
    after = run_sync(store, spec, now=NOW)
    report = json.loads(store.get_bytes(after.report_keys["json"]))["tables"]["shop.items"]
    assert after.published and report["applied_files"] == 1
    assert set(published_rows(store, spec)) == {1, 2, 20, 21, 22, 30, 31}
