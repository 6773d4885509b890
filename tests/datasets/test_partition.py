"""How a run's rows are cut into partitions: buckets, and pieces of a bucket too big for one merge."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from finetune_pipeline.datasets import partition
from finetune_pipeline.datasets.partition import Bucketing, Layout, Spill


def _parts(layout: Layout, keys) -> np.ndarray:
    keys = np.asarray(keys, dtype=np.int64)
    return layout.partition_ids(pa.table({"id": keys}), np.zeros(len(keys), np.uint64))


def test_range_pieces_are_rising_sub_ranges_of_the_filled_part_of_a_bucket():
    bucketing = Bucketing(kind="range", column="id", origin=1, width=1000)
    # Keys 1..2500: buckets 0 and 1 full, bucket 2 filled up to 2500 of its 3000.
    parts = _parts(Layout(bucketing, split=4, key_high=2500), np.arange(1, 2501))
    assert (np.diff(parts) >= 0).all()  # in key order: pieces merged in order write sorted files
    assert np.bincount(parts).tolist() == [250] * 8 + [125] * 4
    # Without the highest key, the newest bucket's pieces follow its full width: its top half is empty.
    assert np.bincount(_parts(Layout(bucketing, split=4), np.arange(1, 2501)))[8:].tolist() == [250, 250]


def test_range_pieces_of_keys_outside_the_buckets_and_of_very_wide_buckets():
    bucketing = Bucketing(kind="range", column="id", origin=100, width=1000)
    assert _parts(Layout(bucketing, split=4), [-5, 99, 100, 1099]).tolist() == [0, 0, 0, 3]
    wide = Bucketing(kind="range", column="id", origin=-(2**62), width=2**62)
    parts = _parts(Layout(wide, split=8), [-(2**62), -1, 0, 2**62 - 1])
    assert parts.tolist() == [0, 7, 8, 15]  # no overflow: 2**62 keys times 8 pieces would pass int64


def test_hash_pieces_follow_the_hash():
    layout = Layout(Bucketing(kind="hash", buckets=2), split=2)
    hashes = np.array([0, 1, 2**40, 2**40 + 1], np.uint64)
    assert layout.partition_ids(pa.table({"id": [1, 2, 3, 4]}), hashes).tolist() == [0, 2, 1, 3]


def _events(n: int, seed: int) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    return pa.RecordBatch.from_pydict({
        "Op": pa.array(rng.choice(["I", "U", "D"], n)),
        "id": pa.array(rng.integers(1, 5000, n)),
        "arrival": pa.array(np.arange(seed * n, (seed + 1) * n)),
    })


def _spilled(spill: Spill) -> dict[int, list[int]]:
    return {part: spill.read(part).column("arrival").to_pylist() for part in spill.parts()}


def test_a_spill_grouped_on_threads_writes_what_one_thread_writes_in_arrival_order(tmp_path):
    layout = Layout(Bucketing(kind="range", column="id", origin=1, width=1000), split=2)
    batches = [_events(3000, seed) for seed in range(8)]
    one = Spill(tmp_path / "one", "delta", batches[0].schema, ["id"], layout)
    for batch in batches:
        one.add(batch)
    one.close()
    many = Spill(tmp_path / "many", "delta", batches[0].schema, ["id"], layout)
    many.add_all(iter(batches), threads=2)
    many.close()
    assert _spilled(many) == _spilled(one) and len(_spilled(one)) == 10
    assert all(arrivals == sorted(arrivals) for arrivals in _spilled(many).values())
    assert many.stats == one.stats and many.stats.rows == 24_000


def test_a_spill_that_fits_in_the_page_cache_is_written_uncompressed(tmp_path, monkeypatch):
    batch = pa.RecordBatch.from_pydict({"Op": ["I"] * 20_000, "id": list(range(20_000)), "text": ["same"] * 20_000})
    layout = Layout(Bucketing())
    monkeypatch.setattr(partition, "available_memory", lambda: 64 * 2**20)
    sizes = {}
    for name, expected in (("fits", batch.nbytes), ("large", 32 * 2**20), ("unknown", None)):
        spill = Spill(tmp_path / name, "delta", batch.schema, ["id"], layout, expected_bytes=expected)
        spill.add(batch)
        spill.close()
        assert spill.read(0).equals(pa.Table.from_batches([batch]))
        sizes[name] = spill.path(0).stat().st_size
    assert sizes["fits"] > 1.5 * sizes["large"] and sizes["large"] == sizes["unknown"]


def test_available_memory_is_capped_by_a_containers_limit(tmp_path, monkeypatch):
    v2, v1 = tmp_path / "v2", tmp_path / "v1"
    v1.mkdir()
    (v1 / "limit").write_text(f"{2**30}\n")
    (v1 / "usage").write_text(f"{2**28}\n")
    monkeypatch.setattr(partition, "CGROUP_MEMORY", ((str(v2 / "max"), str(v2 / "current")),
                                                     (str(v1 / "limit"), str(v1 / "usage"))))
    assert partition.available_memory() == 2**30 - 2**28  # this machine has more than 768 MiB available
    v2.mkdir()
    (v2 / "max").write_text("max\n")
    (v2 / "current").write_text("123\n")
    assert partition.available_memory() > 2**30  # no v2 limit: MemAvailable alone (v1 is not read)
