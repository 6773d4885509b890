"""Merge on read: small deltas append rows and mask the old ones with position delete files; every reader
applies them; a bucket past the masked-row threshold is rewritten and its delete files go with it."""

from __future__ import annotations

import json
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ds_helpers import T0, iceberg_table, item_events, item_load, published, published_rows, put_cdc, put_load

from finetune_pipeline.datasets.deletes import DELETE_SCHEMA
from finetune_pipeline.datasets.dms_format import TS
from finetune_pipeline.datasets.iceberg_tables import TableWrite, referenced_files
from finetune_pipeline.datasets.sync import run_sync

NOW = T0 + timedelta(hours=1)
KEYS = 100


def _load(store) -> dict[int, tuple]:
    rows = {k: (f"n{k}", k % 50, "new") for k in range(1, KEYS + 1)}
    put_load(store, item_load([(k, *v) for k, v in rows.items()]))
    return rows


def _apply(rows: dict[int, tuple], events: list[tuple]) -> None:
    for op, _, _, key, name, qty, status in sorted(events, key=lambda e: (e[1], e[2])):
        if op == "D":
            rows.pop(key, None)
        else:
            rows[key] = (name, qty, status)


def _names(store, spec, version=None) -> dict[int, tuple]:
    return {k: (r["name"], r["qty"], r["status"]) for k, r in published_rows(store, spec, version=version).items()}


def _report(store, spec, result) -> dict:
    return json.loads(store.get_bytes(result.report_keys["json"]))["tables"]["shop.items"]


def _delete_files(spec) -> list:
    return [d for t in iceberg_table(spec).scan().plan_files() for d in t.delete_files]


def _static_rows(spec, version: str) -> dict[int, tuple]:
    """The version's rows through pyiceberg alone, from its metadata file (what another engine reads)."""
    from pyiceberg.table import StaticTable

    table = published(spec, version).tables["shop.items"]
    static = StaticTable.from_metadata(table.metadata_location)
    rows = static.scan(snapshot_id=static.snapshot_by_name(version).snapshot_id).to_arrow().to_pylist()
    return {r["item_id"]: (r["name"], r["qty"], r["status"]) for r in rows}


def _small_delta(counter: int, ts: float, keys: list[int], op: str = "U") -> list[tuple]:
    return [(op, ts + i * 0.001, counter + i, k, f"u{counter}-{k}", 7, "done") for i, k in enumerate(keys)]


@pytest.fixture
def mor_spec(spec):
    # Buckets of any size may merge on read (by default, small ones are always rewritten).
    return spec.model_copy(update={"dataset_prefix": "ds", "rows_per_bucket": 1000, "merge_on_read_min_rows": 1})


def test_a_small_delta_masks_old_rows_and_every_reader_applies_the_masks(store, mor_spec):
    spec = mor_spec
    truth = _load(store)
    assert run_sync(store, spec, now=NOW).published
    events = [*_small_delta(10, 10, [3, 40]), ("D", 11, 20, 7, None, None, None), ("I", 12, 21, 500, "x", 1, "new")]
    put_cdc(store, item_events(events), 13)
    result = run_sync(store, spec, now=NOW)
    assert result.published, [c.to_dict() for c in result.failed_checks]
    _apply(truth, events)
    report = _report(store, spec, result)
    assert report["buckets_merged_on_read"] == 1 and report["buckets_rewritten"] == 0
    assert report["data_files_removed"] == 0 and report["delete_files_added"] == 1
    assert report["rows"] == len(truth) == published(spec).tables["shop.items"].rows
    deletes = _delete_files(spec)
    assert len(deletes) == 1 and deletes[0].record_count == 3  # keys 3, 40 replaced, 7 deleted
    masks = pq.read_table(deletes[0].file_path.removeprefix("file://"))
    assert masks.schema.equals(DELETE_SCHEMA, check_metadata=True)
    assert masks.column("pos").to_pylist() == sorted(masks.column("pos").to_pylist())
    assert _names(store, spec) == truth
    assert _static_rows(spec, result.version) == truth
    assert _static_rows(spec, "v000001") == {k: (f"n{k}", k % 50, "new") for k in range(1, KEYS + 1)}
    # The tallies stay those of the rows published: the profile's and the checks' row counts.
    summary = iceberg_table(spec).current_snapshot().summary
    assert int(summary["total-position-deletes"]) == 3 and int(summary["total-delete-files"]) == 1


def test_more_small_deltas_replace_the_delete_file_and_compaction_drops_it(store, mor_spec):
    spec = mor_spec
    truth = _load(store)
    run_sync(store, spec, now=NOW)
    modes = []
    counter, ts = 10, 10.0
    for step in range(8):
        keys = [1 + (step * 3 + i * 17) % KEYS for i in range(3)]
        events = _small_delta(counter, ts, keys)
        counter, ts = counter + 10, ts + 10
        put_cdc(store, item_events(events), ts - 5)
        result = run_sync(store, spec, now=NOW)
        assert result.published
        _apply(truth, events)
        report = _report(store, spec, result)
        modes.append("read" if report["buckets_merged_on_read"] else "rewrite")
        assert _names(store, spec) == truth
        assert _static_rows(spec, result.version) == truth
        deletes = _delete_files(spec)
        assert len(deletes) <= 1  # one delete file per data file: a new one replaces the old
        assert report["rows"] == len(truth)
    # Three rows per sync on 100 rows: masked rows pass 10% on the fourth sync, which rewrites the bucket.
    assert modes == ["read", "read", "read", "rewrite", "read", "read", "read", "rewrite"]
    assert _delete_files(spec) == []


def test_replays_older_than_the_stored_row_lose_under_merge_on_read(store, mor_spec):
    spec = mor_spec
    truth = _load(store)
    run_sync(store, spec, now=NOW)
    newer = [("U", 50, 50, 5, "newer", 5, "done"), ("D", 51, 51, 6, None, None, None)]
    put_cdc(store, item_events(newer), 52)
    run_sync(store, spec, now=NOW)
    _apply(truth, newer)
    # A replay of older events (a DMS restart): the update of 5 and the insert of deleted 6 lose.
    replay = [("U", 40, 40, 5, "older", 1, "new"), ("I", 41, 41, 6, "back", 1, "new"),
              ("U", 60, 60, 8, "fresh", 8, "new")]  # fmt: skip
    put_cdc(store, item_events(replay), 61)
    result = run_sync(store, spec, now=NOW)
    assert result.published and _report(store, spec, result)["buckets_merged_on_read"] == 1
    truth[8] = ("fresh", 8, "new")
    assert _names(store, spec) == truth and 6 not in truth
    assert _static_rows(spec, result.version) == truth


def test_a_bucket_of_full_load_rows_is_matched_on_its_keys_alone(store, mor_spec, monkeypatch):
    """No stored row has a _dms_seq (the data files' null counts say so): full-load rows, here without a
    transfer time, which every CDC event beats. The order columns are not read and the merge is that of a
    rewrite. Once the bucket holds CDC rows, they are read again, and a replay loses to them."""
    from finetune_pipeline.datasets import table_sync

    spec = mor_spec
    truth = {k: (f"n{k}", k % 50, "new") for k in range(1, KEYS + 1)}
    load = item_load([(k, *v) for k, v in truth.items()])
    no_time = pa.nulls(load.num_rows, load.schema.field(TS).type)
    put_load(store, load.set_column(load.schema.get_field_index(TS), TS, no_time))
    assert run_sync(store, spec, now=NOW).published
    with_order = []
    real = table_sync.read_base_keys

    def spy(io, tasks, primary_key, delta, order):
        with_order.append(order)
        return real(io, tasks, primary_key, delta, order)

    monkeypatch.setattr(table_sync, "read_base_keys", spy)
    first = _small_delta(10, 10, [3, 40])
    put_cdc(store, item_events(first), 13)
    result = run_sync(store, spec, now=NOW)
    assert result.published and _report(store, spec, result)["buckets_merged_on_read"] == 1
    assert with_order == [False]
    _apply(truth, first)
    assert _names(store, spec) == truth and truth[3][0] == "u10-3"
    # A replay older than the stored change of key 3 loses to it; key 8 changes for real.
    replay = [("U", 5, 5, 3, "older", 1, "new"), ("U", 30, 21, 8, "fresh", 8, "new")]
    put_cdc(store, item_events(replay), 31)
    result = run_sync(store, spec, now=NOW)
    assert result.published and _report(store, spec, result)["buckets_merged_on_read"] == 1
    assert with_order == [False, True]
    truth[8] = ("fresh", 8, "new")
    assert _names(store, spec) == truth and truth[3][0] == "u10-3"


def test_a_bucket_built_in_pieces_is_in_key_order_and_its_newest_keys_read_alone(store, mor_spec, monkeypatch):
    """A range bucket too big for one merge splits into sub-ranges of its keys, merged and written in order:
    its row groups hold disjoint, rising key ranges, and a delta on the newest keys reads only theirs."""
    from finetune_pipeline.datasets import iceberg_tables, merge_on_read

    monkeypatch.setattr(iceberg_tables, "MIN_ROW_GROUP_ROWS", 1)  # each piece its own row group
    spec = mor_spec.model_copy(update={"rows_per_bucket": 10_000, "merge_memory_bytes": 2**16})
    truth = {k: (f"n{k}", k % 50, "new") for k in range(1, 2001)}
    put_load(store, item_load([(k, *v) for k, v in truth.items()]))
    assert run_sync(store, spec, now=NOW).published
    (task,) = iceberg_table(spec).scan().plan_files()
    metadata = pq.ParquetFile(task.file.file_path.removeprefix("file://")).metadata
    ranges = [(g.column(0).statistics.min, g.column(0).statistics.max)
              for g in (metadata.row_group(i) for i in range(metadata.num_row_groups))]  # fmt: skip
    assert len(ranges) > 2 and ranges[0][0] == 1 and ranges[-1][1] == 2000
    assert all(high < low for (_, high), (low, _) in zip(ranges, ranges[1:], strict=False))
    read = []
    real = merge_on_read._groups_to_read
    monkeypatch.setattr(merge_on_read, "_groups_to_read", lambda *args: read.append(real(*args)) or read[-1])
    newest = _small_delta(10, 10, [1999, 2000])
    put_cdc(store, item_events(newest), 13)
    result = run_sync(store, spec, now=NOW)
    assert result.published and _report(store, spec, result)["buckets_merged_on_read"] == 1
    assert read == [[len(ranges) - 1]]
    _apply(truth, newest)
    assert _names(store, spec) == truth


def test_the_pieces_of_a_bucket_are_gathered_into_row_groups(store, mor_spec):
    """Small pieces merged apart are written together: one row group for the whole small bucket."""
    spec = mor_spec.model_copy(update={"rows_per_bucket": 10_000, "merge_memory_bytes": 2**16})
    put_load(store, item_load([(k, f"n{k}", k % 50, "new") for k in range(1, 2001)]))
    assert run_sync(store, spec, now=NOW).published
    (task,) = iceberg_table(spec).scan().plan_files()
    metadata = pq.ParquetFile(task.file.file_path.removeprefix("file://")).metadata
    assert metadata.num_row_groups == 1 and metadata.num_rows == 2000
    keys = pq.read_table(task.file.file_path.removeprefix("file://"), columns=["item_id"]).column(0).to_pylist()
    assert keys == sorted(keys)


def test_a_crash_before_the_commit_leaves_nothing_referenced_and_the_retry_publishes(store, mor_spec, monkeypatch):
    spec = mor_spec
    truth = _load(store)
    run_sync(store, spec, now=NOW)
    events = _small_delta(10, 10, [2, 9])
    put_cdc(store, item_events(events), 13)
    real = TableWrite.commit

    def crash(self, **kwargs):
        assert kwargs["added_deletes"]  # the delete file was written, not yet committed
        raise RuntimeError("killed before the commit")

    monkeypatch.setattr(TableWrite, "commit", crash)
    with pytest.raises(RuntimeError, match="killed"):
        run_sync(store, spec, now=NOW)
    table = iceberg_table(spec)
    assert len(table.snapshots()) == 1 and _delete_files(spec) == []
    written = {i.key for i in store.list_after("warehouse/") if "-deletes-" in i.key}
    assert written and not written & {store.key_of(f) for f in referenced_files(table)}
    monkeypatch.setattr(TableWrite, "commit", real)
    result = run_sync(store, spec, now=NOW)
    assert result.published and result.version == "v000002"
    _apply(truth, events)
    assert _names(store, spec) == truth and len(_delete_files(spec)) == 1


def test_retention_keeps_the_delete_files_a_kept_snapshot_references(store, mor_spec):
    spec = mor_spec.model_copy(update={"retention": 2, "orphan_file_grace": timedelta(0)})
    truth = _load(store)
    run_sync(store, spec, now=NOW)
    seen = {}
    for step in range(5):
        events = _small_delta(10 + step * 10, 10 + step * 10, [1 + step * 7, 2 + step * 7])
        put_cdc(store, item_events(events), 15 + step * 10)
        result = run_sync(store, spec, now=NOW)
        _apply(truth, events)
        seen[result.version] = dict(truth)
    table = iceberg_table(spec)
    needed = {store.key_of(f) for f in referenced_files(table)}
    left = {i.key for i in store.list_after("warehouse/") if i.key.endswith((".parquet", ".avro"))}
    assert any("-deletes-" in k for k in needed) and left <= needed and needed - left <= {
        k for k in needed if k.endswith(".json")
    }
    for version in ("v000005", "v000006"):
        assert _names(store, spec, version) == seen[version]
        assert _static_rows(spec, version) == seen[version]


def test_a_column_added_with_delete_files_present(store, mor_spec, contracts_dir):
    spec = mor_spec
    truth = _load(store)
    run_sync(store, spec, now=NOW)
    events = _small_delta(10, 10, [4, 5])
    put_cdc(store, item_events(events), 13)
    run_sync(store, spec, now=NOW)
    _apply(truth, events)
    assert _delete_files(spec)
    path = contracts_dir / "shop.items.yaml"
    path.write_text(path.read_text().replace("columns:\n", "columns:\n  - {name: note, type: string}\n", 1))
    later = _small_delta(30, 30, [6])
    put_cdc(store, item_events(later), 33)
    result = run_sync(store, spec, now=NOW)
    assert result.published, [c.to_dict() for c in result.failed_checks]
    _apply(truth, later)
    assert _names(store, spec) == truth
    assert all(r["note"] is None for r in published_rows(store, spec).values())
    # The next small delta merges on read again, over files of both schemas.
    # The next small delta (DMS writes the new column now) merges on read again, over files of both schemas.
    again = _small_delta(40, 40, [7, 70])
    put_cdc(store, item_events(again).append_column("note", pa.array(["a", "b"])), 43)
    result = run_sync(store, spec, now=NOW)
    assert result.published, [c.to_dict() for c in result.failed_checks]
    _apply(truth, again)
    assert _report(store, spec, result)["buckets_merged_on_read"] == 1
    assert _names(store, spec) == truth and _static_rows(spec, result.version) == truth
    notes = {k: r["note"] for k, r in published_rows(store, spec).items() if r["note"] is not None}
    assert notes == {7: "a", 70: "b"}


def test_the_training_entrypoint_and_the_cli_read_a_version_with_delete_files(store, mor_spec, monkeypatch, capsys):
    """Both read the data files themselves (a rank's share, a file to validate): through the reader, so the
    masked rows are not read."""
    import importlib

    from ds_helpers import REPO

    from finetune_pipeline.datasets.cli import main

    spec = mor_spec
    truth = _load(store)
    run_sync(store, spec, now=NOW)
    events = [*_small_delta(10, 10, [3, 4]), ("D", 11, 20, 9, None, None, None)]
    put_cdc(store, item_events(events), 13)
    result = run_sync(store, spec, now=NOW)
    _apply(truth, events)
    version = published(spec)
    table = version.tables["shop.items"]
    assert _delete_files(spec) and table.rows == len(truth)
    monkeypatch.syspath_prepend(str(REPO / "include" / "training"))
    train = importlib.import_module("train")
    got = {}
    for rank in range(2):
        files = {"shop.items": train.Rank(rank, 2).share(table.files())}
        job = train.TrainingJob(result.version, files, store.root, None, {}, train.Rank(rank, 2),
                                _tables=version.tables)  # fmt: skip
        for row in job.read("shop.items", ["item_id", "name", "qty", "status"]).to_pylist():
            assert row["item_id"] not in got
            got[row["item_id"]] = (row["name"], row["qty"], row["status"])
    assert got == truth
    # The CLI's validate of a published version counts its rows, not its data files'.
    contract = str(spec.contracts_dir / "shop.items.yaml")
    spec_dir = store.root / "ds"
    monkeypatch.chdir(store.root)
    capsys.readouterr()
    assert main(["validate", str(spec_dir), "--version", result.version, "--contract", contract,
                 "--catalog-uri", spec.catalog.uri, "--warehouse", spec.catalog.warehouse]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["rows"] == len(truth)


def test_the_tallies_of_a_bucket_merged_on_read_count_the_rows_published(store, mor_spec):
    """Nulls of the masked rows are taken out (read back only for columns that had any) and the new rows'
    added: the bucket's counts and profile equal a count over the rows the version has."""
    from ds_helpers import head_state

    spec = mor_spec
    put_load(store, item_load([(k, f"n{k}", k % 50, None if k % 10 == 0 else "new") for k in range(1, KEYS + 1)]))
    run_sync(store, spec, now=NOW)
    # 10 and 20 lose their null status, 30 is deleted, 5 gains one, 500 is inserted with one.
    events = [("U", 10, 10, 10, "a", 1, "done"), ("U", 10.1, 11, 20, "b", 1, "new"),
              ("D", 10.2, 12, 30, None, None, None), ("U", 10.3, 13, 5, "c", 1, None),
              ("I", 10.4, 14, 500, "d", 1, None)]  # fmt: skip
    put_cdc(store, item_events(events), 13)
    result = run_sync(store, spec, now=NOW)
    assert result.published and _report(store, spec, result)["buckets_merged_on_read"] == 1
    rows = published_rows(store, spec)
    nulls = sum(1 for r in rows.values() if r["status"] is None)
    assert nulls == 10 - 3 + 2
    (bucket,) = head_state(store, spec).buckets.values()
    assert bucket.rows == bucket.counts["rows"] == bucket.profile["rows"] == len(rows)
    assert bucket.counts["nulls"]["status"] == bucket.profile["nulls"]["status"] == nulls
    assert bucket.counts["nulls"]["name"] == 0
    sampled = set(bucket.profile["sample_hashes"])
    # Fewer rows than the sample holds: every row once, none of those masked.
    assert len(sampled) == len(bucket.profile["sample_hashes"]) == len(rows)
