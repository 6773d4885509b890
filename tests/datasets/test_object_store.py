"""LocalStore and S3Store behave alike (S3's semantics); S3Store runs against localaws over HTTP."""

from __future__ import annotations

import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from finetune_pipeline.datasets.store import LocalStore, S3Store, StoreError

KEYS = [
    "landing/public/t/20261126-090000000.parquet",
    "landing/public/t/20261126-090500000.parquet",
    "landing/public/t/20261126-091000000.parquet",
    "landing/public/t/LOAD00000001.parquet",
    "landing/public/t-b/x",
    "landing/public/t/sub/y",
    "landing/public/u/z",
]


@pytest.fixture(params=["local", "s3"])
def any_store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "bucket")
    client = request.getfixturevalue("boto_client")("s3")
    bucket = f"ds-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return S3Store(client, bucket, tmp_dir=tmp_path)


def _fill(store):
    for key in KEYS:
        store.put_bytes(key, key.encode())


def test_list_after_matches_s3_order_and_start_after(any_store):
    _fill(any_store)
    everything = [i.key for i in any_store.list_after("landing/")]
    assert everything == sorted(KEYS)  # byte order: "t-b/x" sorts before "t/..."
    after = [i.key for i in any_store.list_after("landing/public/t/", "landing/public/t/20261126-090500000")]
    assert after == [
        "landing/public/t/20261126-090500000.parquet",
        "landing/public/t/20261126-091000000.parquet",
        "landing/public/t/LOAD00000001.parquet",
        "landing/public/t/sub/y",
    ]
    assert [i.key for i in any_store.list_after("landing/public/t/", "landing/public/t/zzz")] == []
    assert [i.key for i in any_store.list_after("nothing/")] == []
    sizes = {i.key: i.size for i in any_store.list_after("landing/public/u/")}
    assert sizes == {"landing/public/u/z": len(b"landing/public/u/z")}


def test_put_get_copy_move_delete(any_store, tmp_path):
    any_store.put_bytes("a/one", b"1")
    assert any_store.get_bytes("a/one") == b"1"
    assert any_store.exists("a/one") and not any_store.exists("a/two")
    any_store.copy("a/one", "b/one")
    any_store.move("a/one", "q/one")
    assert not any_store.exists("a/one")
    assert any_store.get_bytes("q/one") == b"1" and any_store.get_bytes("b/one") == b"1"
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 10_000)
    any_store.put_file("c/f.bin", src)
    with any_store.local_path("c/f.bin") as path:
        assert path.read_bytes() == b"x" * 10_000
    any_store.delete("c/f.bin")
    assert not any_store.exists("c/f.bin")
    with pytest.raises(StoreError):
        any_store.get_bytes("c/f.bin")
    with pytest.raises(StoreError), any_store.local_path("c/f.bin"):
        pass


def test_list_dirs_and_delete_prefix(any_store):
    _fill(any_store)
    assert any_store.list_dirs("landing/public") == [
        "landing/public/t-b/",
        "landing/public/t/",
        "landing/public/u/",
    ]
    assert any_store.delete_prefix("landing/public/t/") == 5
    assert [i.key for i in any_store.list_after("landing/")] == ["landing/public/t-b/x", "landing/public/u/z"]


def test_parquet_read_by_row_group_through_local_path(any_store, tmp_path):
    table = pa.table({"x": list(range(10_000))})
    src = tmp_path / "t.parquet"
    pq.write_table(table, src, row_group_size=1000)
    any_store.put_file("d/t.parquet", src)
    with any_store.local_path("d/t.parquet") as path:
        pf = pq.ParquetFile(path)
        assert pf.num_row_groups == 10
        assert sum(b.num_rows for b in pf.iter_batches(batch_size=1000)) == 10_000


def test_local_store_rejects_escaping_keys(tmp_path):
    store = LocalStore(tmp_path)
    with pytest.raises(StoreError):
        store.put_bytes("../outside", b"x")
    with pytest.raises(StoreError):
        store.put_bytes("/abs", b"x")


def test_sync_on_s3_store(boto_client, localaws, tmp_path, contracts_dir):
    """The whole sync against localaws: listing with StartAfter, quarantine moves, data files and table
    metadata written to the bucket through pyiceberg's S3 FileIO, publish."""
    from datetime import timedelta

    from ds_helpers import T0, item_events, item_load, published_rows, put_cdc, put_load

    from finetune_pipeline.datasets.catalog import AwsAccess, CatalogSpec
    from finetune_pipeline.datasets.sync import SyncSpec, run_sync

    client = boto_client("s3")
    bucket = f"ds-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    store = S3Store(client, bucket, tmp_dir=tmp_path)
    spec = SyncSpec(
        landing_prefix="landing",
        dataset_prefix="datasets/shop",
        contracts_dir=contracts_dir,
        catalog=CatalogSpec(uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"s3://{bucket}/datasets/shop/warehouse"),
        snapshot_position=T0,
    )
    access = AwsAccess(region="us-east-1", endpoint_url=localaws.endpoint_url, access_key_id="testing",
                       secret_access_key="testing")  # fmt: skip
    put_load(store, item_load([(1, "a", 1, "new"), (2, "b", 2, "new")]))
    put_cdc(store, item_events([("U", 3, 1, 1, "a2", 5, "done")]), 4)
    bad = put_cdc(store, item_events([("Q", 5, 2, 2, "b", 2, "new")]), 6)
    result = run_sync(store, spec, now=T0 + timedelta(hours=1), access=access)
    assert result.published
    assert {k: r["name"] for k, r in published_rows(store, spec, access=access).items()} == {1: "a2", 2: "b"}
    warehouse = [i.key for i in store.list_after("datasets/shop/warehouse/")]
    assert any(k.endswith(".parquet") for k in warehouse) and any(k.endswith(".metadata.json") for k in warehouse)
    [q] = result.quarantined
    assert q.source_key == bad and not store.exists(bad)
    assert q.quarantine_key.startswith("datasets/shop/quarantine/shop/items/")
    assert client.head_object(Bucket=bucket, Key=q.report_key)["ContentLength"] > 0
    assert run_sync(store, spec, now=T0 + timedelta(hours=1), access=access).status == "up_to_date"
