"""run_sync end to end on a local bucket: incremental discovery, quarantine, publish rules, evolution."""

from __future__ import annotations

import json
from datetime import timedelta

import pyarrow.parquet as pq
import pytest
from change_files import seed_changes, seed_tables, write_seed
from ds_helpers import T0, at, item_events, item_load, published_rows, put_cdc, put_load

from finetune_pipeline.datasets.dms_format import cdc_file_name
from finetune_pipeline.datasets.publish import read_current
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
    manifest = read_current(store, spec.dataset_prefix)
    assert manifest.version == second.version
    assert manifest.watermark == {"shop.items": cdc_file_name(at(22))}
    assert manifest.tables["shop.items"].recent_files == [cdc_file_name(at(12))]


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
    state = read_current(store, spec.dataset_prefix).tables["shop.items"]
    assert state.cdc_events == {"I": 3, "U": 0, "D": 0}


def test_nothing_new_is_up_to_date(store, spec):
    _base(store)
    first = run_sync(store, spec, now=NOW)
    again = run_sync(store, spec, now=NOW)
    assert again.status == "up_to_date" and not again.published
    assert again.version == first.version
    assert read_current(store, spec.dataset_prefix).version == first.version


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
    before = store.get_bytes("datasets/shop/current")
    bad_key = put_cdc(store, item_events([("I", 20, 3, 7, "x", 1, "new")]).drop_columns(["item_id"]), 21)
    put_cdc(store, item_events([("I", 22, 4, 8, "y", 1, "new")]), 23)
    result = run_sync(store, spec, now=NOW)
    assert result.status == "blocked" and not result.published
    assert result.quarantined[0].source_key == bad_key
    assert result.quarantined[0].reason == "missing_column"
    assert store.get_bytes("datasets/shop/current") == before
    assert read_current(store, spec.dataset_prefix).version == first.version


def test_blocking_check_keeps_current_and_watermark(store, spec):
    _base(store)
    first = run_sync(store, spec, now=NOW)
    put_cdc(store, item_events([("U", 30, 5, 1, "a", 5000, "done")]), 31)  # qty out of range 0..1000
    blocked = run_sync(store, spec, now=NOW)
    assert blocked.status == "blocked"
    [failed] = [c for c in blocked.checks if not c.passed]
    assert failed.name == "range:qty" and failed.samples == [5000]
    assert store.exists(blocked.report_keys["html"])  # the report says why, though nothing was published
    manifest = read_current(store, spec.dataset_prefix)
    assert manifest.version == first.version
    assert manifest.watermark["shop.items"] == cdc_file_name(at(12))
    # A later correction: the next run takes both files (the watermark had not moved) and publishes.
    put_cdc(store, item_events([("U", 40, 6, 1, "a", 50, "done")]), 41)
    fixed = run_sync(store, spec, now=NOW)
    assert fixed.published and published_rows(store, spec)[1]["qty"] == 50


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


def test_retention_keeps_the_newest_versions(store, contracts_dir):
    spec = SyncSpec(
        landing_prefix="landing",
        dataset_prefix="ds",
        contracts_dir=contracts_dir,
        retention=2,
        snapshot_position=T0,
    )
    _base(store)
    versions = [run_sync(store, spec, now=NOW).version]
    for i in range(3):
        put_cdc(store, item_events([("I", 100 + i, 10 + i, 100 + i, "n", 1, "new")]), 101 + i)
        versions.append(run_sync(store, spec, now=NOW).version)
    kept = [d.rstrip("/").rsplit("/", 1)[-1] for d in store.list_dirs("ds/versions")]
    assert kept == versions[-2:]
    assert read_current(store, "ds").retained == versions[-2:]


def test_buckets_split_and_untouched_buckets_are_copied(store, contracts_dir):
    spec = SyncSpec(
        landing_prefix="landing",
        dataset_prefix="ds",
        contracts_dir=contracts_dir,
        snapshot_position=T0,
        rows_per_bucket=50,
        merge_memory_bytes=2**16,
    )
    put_load(store, item_load([(i, f"n{i}", i % 100, "new") for i in range(1, 401)]))
    put_cdc(store, item_events([("U", 1, 1, 7, "seven", 7, "done"), ("D", 2, 2, 8, "x", 1, "new")]), 3)
    first = run_sync(store, spec, now=NOW)
    manifest = read_current(store, "ds")
    assert manifest.tables["shop.items"].buckets == 8  # 399 rows / 50 per bucket, as a power of two
    rows = published_rows(store, spec)
    assert len(rows) == 399 and rows[7]["name"] == "seven" and 8 not in rows
    put_cdc(store, item_events([("U", 10, 3, 9, "nine", 9, "done")]), 11)
    second = run_sync(store, spec, now=NOW)
    report = json.loads(store.get_bytes(second.report_keys["json"]))["tables"]["shop.items"]
    assert report["buckets_rewritten"] == 1 and report["buckets_copied"] == 7
    rows = published_rows(store, spec)
    assert len(rows) == 399 and rows[9]["name"] == "nine"
    assert first.version != second.version


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
    assert not check.passed and blocked.status == "blocked" and read_current(store, spec.dataset_prefix) is None
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
    state = read_current(store, spec.dataset_prefix).tables["shop.items"]
    assert state.snapshot_rows == 3 and state.cdc_events == {"I": 0, "U": 1, "D": 1}

    # DMS captured an insert whose file has not been applied (late, or not landed yet): the gap shows.
    put_cdc(store, item_events([("I", 20, 3, 4, "d", 4, "new")]), 22)
    second = run_sync(store, spec, now=NOW, outside_counts=_dms(inserts=2, updates=1, deletes=1))
    [check] = [c for c in second.checks if c.check == "row_count_dms"]
    assert not check.passed and second.status == "blocked"
    assert check.detail.startswith("3 rows vs 4 from DMS task task-1: 3 at the snapshot + 2 inserts - 1 deletes")
    assert "this dataset applied 1 inserts and 1 deletes" in check.detail
    assert read_current(store, spec.dataset_prefix).version == first.version

    # The counts carry across incremental runs: once DMS agrees, the version publishes.
    third = run_sync(store, spec, now=NOW, outside_counts=_dms(inserts=1, updates=1, deletes=1))
    assert third.published
    state = read_current(store, spec.dataset_prefix).tables["shop.items"]
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
def test_demo_seed_data_end_to_end(store, demo_contracts_dir, fmt):
    tables = seed_tables(40, 150, seed=3)
    changes = seed_changes(tables, T0, n_files=4, changes_per_file=25, seed=3)
    write_seed(store, "landing", tables, changes, load_time=T0 + timedelta(minutes=3), fmt=fmt)
    spec = SyncSpec(
        landing_prefix="landing", dataset_prefix="ds", contracts_dir=demo_contracts_dir, snapshot_position=T0
    )
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


def test_published_files_are_plain_parquet_with_change_columns(store, spec):
    _base(store)
    run_sync(store, spec, now=NOW)
    manifest = read_current(store, spec.dataset_prefix)
    [key] = manifest.files["shop.items"]
    assert key == f"datasets/shop/versions/{manifest.version}/shop.items/part-00000.parquet"
    with store.local_path(key) as path:
        schema = pq.read_schema(path)
    assert schema.names == ["item_id", "name", "qty", "status", "_dms_ts", "_dms_seq"]
