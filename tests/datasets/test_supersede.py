"""Events that cannot win the merge are dropped before the spill: which ones, and that nothing else is."""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ds_helpers import ITEMS_YAML, T0, item_events, item_load, published_rows, put_cdc, put_load

from finetune_pipeline.datasets import table_sync
from finetune_pipeline.datasets.catalog import CatalogSpec
from finetune_pipeline.datasets.contracts import load_contract
from finetune_pipeline.datasets.dms_format import classify, read_events, to_dms_table
from finetune_pipeline.datasets.store import LocalStore
from finetune_pipeline.datasets.supersede import scan_latest_commits
from finetune_pipeline.datasets.sync import SyncSpec, run_sync


def _file(store: LocalStore, key: str):
    return classify(key, "landing/shop/items/"), store.root / key


def _events(store: LocalStore, contract, key: str) -> pa.RecordBatch:
    f, path = _file(store, key)
    return pa.Table.from_batches(list(read_events(path, f, contract))).combine_chunks().to_batches()[0]


@pytest.fixture
def contract(tmp_path):
    path = tmp_path / "shop.items.yaml"
    path.write_text(ITEMS_YAML)
    return load_contract(path)


def test_an_event_older_than_its_keys_latest_is_dropped_and_ties_and_other_keys_stay(tmp_path, contract):
    store = LocalStore(tmp_path / "bucket")
    load = put_load(store, item_load([(1, "a", 1, "new"), (2, "b", 2, "new"), (9, "z", 9, "new")]))
    first = put_cdc(store, item_events([("U", 10, 1, 1, "a1", 1, None), ("U", 10, 2, 2, "b1", 2, None),
                                        ("U", 20, 3, 3, "c1", 3, None)]), 21)  # fmt: skip
    # Key 1 changes again later; key 2 again at the same commit time (its sequence decides, in the merge).
    second = put_cdc(store, item_events([("U", 30, 4, 1, "a2", 1, None), ("U", 10, 5, 2, "b2", 2, None)]), 31)
    latest = scan_latest_commits([_file(store, k) for k in (load, first, second)], "item_id", max_keys=100)
    assert latest.events == 5 and latest.keys == 3

    def kept(key):
        batch = _events(store, contract, key)
        keep = latest.keep(batch)
        return batch.column("name").to_pylist() if keep is None else batch.filter(pa.array(keep)).column(
            "name").to_pylist()  # fmt: skip

    # Full-load rows come before every CDC event: keys 1 and 2 changed, 9 did not.
    assert kept(load) == ["z"]
    assert kept(first) == ["b1", "c1"]  # a1 lost to a2; b1 ties with b2, so both stay
    assert kept(second) == ["a2", "b2"]


def test_keys_outside_the_scanned_range_stay_and_a_range_past_the_bound_scans_nothing(tmp_path, contract):
    store = LocalStore(tmp_path / "bucket")
    cdc = put_cdc(store, item_events([("U", 10, 1, 5, "a", 1, None), ("U", 20, 2, 5, "b", 1, None)]), 21)
    latest = scan_latest_commits([_file(store, cdc)], "item_id", max_keys=100)
    outside = pa.RecordBatch.from_pylist([{"Op": "U", "_dms_ts": T0, "_dms_seq": "1" * 35, "item_id": 4}])
    assert latest.keep(outside) is None
    wide = put_cdc(store, item_events([("U", 10, 3, 1, "a", 1, None), ("U", 20, 4, 1000, "b", 1, None)]), 41)
    assert scan_latest_commits([_file(store, cdc), _file(store, wide)], "item_id", max_keys=100) is None


def test_files_without_key_statistics_grow_the_span_as_they_are_read(tmp_path):
    store = LocalStore(tmp_path / "bucket")
    keys = []
    for n, (key, seconds) in enumerate([(50, 10), (3, 20), (90, 30), (50, 40)]):
        key_name = put_cdc(store, item_events([("U", seconds, n + 1, key, "x", 1, None)]), seconds + 1)
        table = to_dms_table(item_events([("U", seconds, n + 1, key, "x", 1, None)]))
        pq.write_table(table, store.root / key_name, write_statistics=False)
        keys.append(key_name)
    latest = scan_latest_commits([_file(store, k) for k in keys], "item_id", max_keys=100, threads=2)
    assert (latest.low, len(latest.latest), latest.events, latest.keys) == (3, 88, 4, 3)
    assert scan_latest_commits([_file(store, k) for k in keys], "item_id", max_keys=50) is None


def test_an_unreadable_file_stops_the_scan(tmp_path):
    store = LocalStore(tmp_path / "bucket")
    key = put_cdc(store, item_events([("U", 10, 1, 5, "a", 1, None)]), 21)
    (store.root / key).write_bytes(b"not parquet")
    assert scan_latest_commits([_file(store, key)], "item_id", max_keys=100) is None


def _spec(tmp_path, store) -> SyncSpec:
    contracts = tmp_path / "contracts"
    contracts.mkdir(exist_ok=True)
    (contracts / "shop.items.yaml").write_text(ITEMS_YAML)
    return SyncSpec(
        landing_prefix="landing",
        dataset_prefix="ds",
        contracts_dir=contracts,
        catalog=CatalogSpec(uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=store.location("warehouse")),
        merge_memory_bytes=2**10,
    )


def _many_changes(store, files: int, keys: int, seed: int = 0) -> dict:
    """``files`` CDC files each changing every key once (in a random order); the last value of each key."""
    rng = np.random.default_rng(seed)
    final, counter = {}, 0
    for n in range(files):
        rows = []
        for key in rng.permutation(np.arange(1, keys + 1)).tolist():
            counter += 1
            rows.append(("U", n * 60 + counter / 1000, counter, key, f"k{key}-f{n}", n, "new"))
            final[key] = f"k{key}-f{n}"
        put_cdc(store, item_events(rows), n * 60 + 59)
    return final


def test_a_sync_spills_only_the_events_that_can_win_and_publishes_what_it_would_without(tmp_path, caplog):
    store = LocalStore(tmp_path / "bucket")
    final = _many_changes(store, files=5, keys=200)
    caplog.set_level(logging.INFO, logger="finetune_pipeline.datasets.table_sync")
    result = run_sync(store, _spec(tmp_path, store))
    assert result.published, [c.to_dict() for c in result.failed_checks]
    events = json.loads(store.get_bytes(result.report_keys["json"]))["tables"]["shop.items"]["events"]
    assert events["U"] == 1000 and events["superseded"] == 800  # counted, then dropped
    assert "1000 event(s) read, 200 of them spilled" in caplog.text
    assert {k: r["name"] for k, r in published_rows(store, _spec(tmp_path, store)).items()} == final


def test_a_file_quarantined_by_the_spill_no_longer_supersedes_the_events_of_others(tmp_path, caplog):
    """The scan reads only keys and commit times, so a file bad elsewhere passes it; the spill then
    quarantines it, and the events it superseded must come back: the scan runs again without it."""
    store = LocalStore(tmp_path / "bucket")
    final = _many_changes(store, files=4, keys=100)
    bad = item_events([("U", 500, 10_000 + k, k, f"bad{k}", 1, "new") for k in range(1, 101)])
    bad = bad.set_column(0, "Op", pa.array(["X"] * 100))  # an Op DMS never writes
    put_cdc(store, bad, 501)
    caplog.set_level(logging.INFO, logger="finetune_pipeline.datasets.table_sync")
    result = run_sync(store, _spec(tmp_path, store))
    assert [q.reason for q in result.quarantined] == ["bad_op"]
    assert {k: r["name"] for k, r in published_rows(store, _spec(tmp_path, store)).items()} == final
    assert caplog.text.count("cannot win and are not spilled") == 2  # the scan, then again without the file


def test_a_delta_of_one_event_per_key_is_spilled_whole(tmp_path, caplog, monkeypatch):
    store = LocalStore(tmp_path / "bucket")
    final = _many_changes(store, files=1, keys=300)
    scans = []
    monkeypatch.setattr(table_sync, "scan_latest_commits", lambda *a, **k: scans.append(a) or
                        scan_latest_commits(*a, **k))  # fmt: skip
    result = run_sync(store, _spec(tmp_path, store))
    events = json.loads(store.get_bytes(result.report_keys["json"]))["tables"]["shop.items"]["events"]
    assert len(scans) == 1 and events["superseded"] == 0  # scanned, found nothing to drop, spilled all
    assert {k: r["name"] for k, r in published_rows(store, _spec(tmp_path, store)).items()} == final
