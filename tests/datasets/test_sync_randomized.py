"""Randomized change streams through run_sync, compared with an independent plain-dict replay.

Each seed builds a full load and CDC files with inserts, updates, deletes (also of unknown keys), equal commit
times broken by the sequence, events before the snapshot, replayed events, files named out of order and files
arriving late, spread over several runs with small buckets and merge budgets so partitions get split.
"""

from __future__ import annotations

import json
import random
from datetime import timedelta

import pytest
from ds_helpers import ITEMS_YAML, T0, item_events, item_load, published, published_rows, put_cdc, put_load

from finetune_pipeline.datasets import merge_on_read, table_sync
from finetune_pipeline.datasets.catalog import CatalogSpec
from finetune_pipeline.datasets.store import LocalStore
from finetune_pipeline.datasets.sync import SyncSpec, run_sync

KEYS = 60


def _row(rng: random.Random) -> tuple:
    return (f"n{rng.randrange(1000)}", rng.randrange(0, 1001), rng.choice(["new", "done", None]))


def _replay(load_files: list[list[tuple]], cdc_files: list[list[tuple]]) -> dict:
    """Ground truth: full load in file/row order, then every CDC event after the snapshot by (ts, counter)."""
    state = {}
    for rows in load_files:
        for key, name, qty, status in rows:
            state[key] = (name, qty, status)
    events = sorted({e for rows in cdc_files for e in rows if e[1] > 0}, key=lambda e: (e[1], e[2]))
    for op, _, _, key, name, qty, status in events:
        if op == "D":
            state.pop(key, None)
        else:
            state[key] = (name, qty, status)
    return state


def _stream(rng: random.Random, min_events: int = 21) -> tuple[list[list[tuple]], list[tuple[float, list[tuple]]]]:
    load = [(k, *_row(rng)) for k in rng.sample(range(1, KEYS), rng.randrange(0, KEYS // 2))]
    split = rng.randrange(0, len(load) + 1)
    loads = [load[:split], load[split:] + [(k, *_row(rng)) for k, *_ in rng.sample(load, min(3, len(load)))]]
    events, ts = [], -20.0
    for counter in range(1, rng.randrange(min_events, 121)):
        if rng.random() > 0.2:  # otherwise an equal commit time: the sequence decides
            ts += rng.choice([0.001, 0.5, 1, 3])
        op = rng.choices(["I", "U", "D"], weights=[4, 4, 2])[0]
        events.append((op, round(ts, 3), counter, rng.randrange(1, KEYS + 5), *_row(rng)))
    files, i = [], 0
    while i < len(events):
        size = rng.randrange(1, 15)
        chunk = events[i : i + size]
        i += size
        if files and rng.random() < 0.3:  # DMS restart: an earlier file's events written again
            chunk = chunk + rng.sample(files[-1][1], min(len(files[-1][1]), rng.randrange(1, 4)))
        name_at = max(e[1] for e in chunk) + 0.5
        if rng.random() < 0.15:  # named earlier than its content
            name_at -= rng.choice([2, 10])
        files.append((name_at, chunk))
    return [x for x in loads if x], files


@pytest.mark.parametrize("seed", range(24))
def test_random_streams_match_dict_replay(tmp_path, seed):
    _run_stream(tmp_path, random.Random(seed))


@pytest.mark.parametrize("seed", range(24))
def test_random_streams_merged_on_read_match_dict_replay(tmp_path, seed, monkeypatch):
    """The same streams with buckets of any size merged on read, up to half their rows masked, delivered
    in smaller runs: deltas after the full load merge on read, and compaction rewrites a bucket once its
    masked rows pass the share. Each read also goes through pyiceberg alone, from the metadata file."""
    monkeypatch.setattr(merge_on_read, "MAX_MASKED_SHARE", 0.5)
    rng = random.Random(1000 + seed)
    # Buckets of 16 rows and more: a delta of a few events on a bucket of 4 is always more than half of it.
    # Streams of at least 60 events, so there are enough runs after the full load for both to happen.
    modes, _ = _run_stream(tmp_path, rng, merge_on_read_min_rows=1, run_sizes=(1, 2), bucket_rows=(16, 1000),
                           min_events=60, static_check=True)
    assert "on_read" in modes and "rewritten" in modes, modes


@pytest.mark.parametrize("seed", range(24))
def test_random_streams_with_superseded_events_dropped_match_dict_replay(tmp_path, seed, monkeypatch):
    """The same streams, each run's events that cannot win dropped before the spill whatever their share:
    replays, ties broken by the sequence, files named out of order and full-load rows changed since."""
    monkeypatch.setattr(table_sync, "SCAN_MAX_LAST_EVENT_SHARE", 1.0)
    _, superseded = _run_stream(tmp_path, random.Random(2000 + seed), run_sizes=(6, 20), min_events=60,
                                budgets=(2**10,))
    assert superseded > 0


def _run_stream(tmp_path, rng: random.Random, merge_on_read_min_rows: int = 10_000, run_sizes=(1, 6),
                bucket_rows=(4, 16, 1000), min_events: int = 21, static_check: bool = False,
                budgets=(2**10, 2**12, 2**30)) -> tuple[list[str], int]:
    """Sync a random stream run by run against the dict replay; returns how each touched bucket merged, and
    how many events were dropped as superseded."""
    contracts = tmp_path / "contracts"
    contracts.mkdir()
    (contracts / "shop.items.yaml").write_text(ITEMS_YAML + "severity: {row_count: warning}\n")
    store = LocalStore(tmp_path / "bucket")
    spec = SyncSpec(
        landing_prefix="landing",
        dataset_prefix="ds",
        contracts_dir=contracts,
        catalog=CatalogSpec(uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=store.location("warehouse")),
        snapshot_position=T0,
        rows_per_bucket=rng.choice(bucket_rows),
        merge_memory_bytes=rng.choice(budgets),
        late_file_grace=timedelta(minutes=10),
        merge_on_read_min_rows=merge_on_read_min_rows,
    )
    loads, files = _stream(rng, min_events)
    for n, rows in enumerate(loads, start=1):
        put_load(store, item_load(rows), n=n)
    # Files arrive over several runs; some arrive after files named later than them.
    order = sorted(files, key=lambda f: f[0])
    arrivals = sorted(range(len(order)), key=lambda j: j + rng.choice([0, 0, 0, 2.5]))
    batches = []
    while arrivals:
        size = rng.randrange(*run_sizes)
        batches.append(arrivals[:size])
        arrivals = arrivals[size:]
    delivered: list[list[tuple]] = []
    modes: list[str] = []
    superseded = 0
    used_ms: set[int] = set()
    for batch in batches:
        for j in batch:
            name_at, chunk = order[j]
            ms = round(name_at * 1000)
            while ms in used_ms:  # two files cannot share a name
                ms += 1
            used_ms.add(ms)
            put_cdc(store, item_events(chunk), ms / 1000)
            delivered.append(chunk)
        result = run_sync(store, spec, now=T0 + timedelta(hours=1))
        assert result.status in ("published", "up_to_date"), [c.to_dict() for c in result.failed_checks]
        got = {k: (r["name"], r["qty"], r["status"]) for k, r in published_rows(store, spec).items()}
        assert got == _replay(loads, delivered)
        if result.status != "published":
            continue
        report = json.loads(store.get_bytes(result.report_keys["json"]))["tables"]["shop.items"]
        modes += ["on_read"] * report["buckets_merged_on_read"] + ["rewritten"] * report["buckets_rewritten"]
        superseded += report["events"]["superseded"]
        assert report["rows"] == len(got) == published(spec).tables["shop.items"].rows
        if static_check:
            assert _static_rows(spec, result.version) == got
    return modes, superseded


def _static_rows(spec, version: str) -> dict:
    from pyiceberg.table import StaticTable

    static = StaticTable.from_metadata(published(spec, version).tables["shop.items"].metadata_location)
    rows = static.scan(snapshot_id=static.snapshot_by_name(version).snapshot_id).to_arrow().to_pylist()
    return {r["item_id"]: (r["name"], r["qty"], r["status"]) for r in rows}
