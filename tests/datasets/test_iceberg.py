"""Dataset versions as Iceberg snapshots: what one commit holds, who can read it, schema evolution, commits
that race, and a catalog that cannot be used.

Concurrency is tested on the SQL catalog (SQLite), whose commit is a compare-and-swap on the table's metadata
pointer. moto's Glue ignores ``VersionId`` on ``UpdateTable``, so against localaws two Glue writers would not
conflict; the Glue test below only shows that a sync and a reader work through the Glue API.
"""

from __future__ import annotations

import http.server
import importlib
import json
import sys
import threading
import types
import uuid
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ds_helpers import (
    REPO,
    T0,
    iceberg_table,
    item_events,
    item_load,
    published,
    published_rows,
    put_cdc,
    put_load,
    versions,
)

from finetune_pipeline.datasets import sync as sync_module
from finetune_pipeline.datasets.catalog import AwsAccess, CatalogError, CatalogSpec, load
from finetune_pipeline.datasets.iceberg_tables import SchemaMismatchError, TableWrite
from finetune_pipeline.datasets.reader import open_record
from finetune_pipeline.datasets.state import record_key
from finetune_pipeline.datasets.sync import SyncConflictError, run_sync

NOW = T0 + timedelta(hours=1)


def _base(store):
    put_load(store, item_load([(1, "a", 1, "new"), (2, "b", 2, "new"), (3, "c", 3, "new")]))
    put_cdc(store, item_events([("U", 10, 1, 1, "a1", 10, "done"), ("D", 11, 2, 3, "c", 3, "new")]), 12)


def _rows(table: pa.Table) -> list[tuple]:
    return sorted((r["item_id"], r["name"], r["qty"], r["status"]) for r in table.to_pylist())


# ---------------------------------------------------------------------------------------------- one commit


def test_a_version_is_one_tagged_snapshot_with_its_summary_and_sync_state(store, spec):
    _base(store)
    first = run_sync(store, spec, now=NOW)
    put_cdc(store, item_events([("I", 20, 3, 4, "d", 4, "new")]), 22)
    second = run_sync(store, spec, now=NOW)
    table = iceberg_table(spec)
    # One snapshot per version, each tagged with it; the table's own commit retry is off.
    assert [s.summary["finetune.version"] for s in table.snapshots()] == ["v000001", "v000002"]
    assert {n: r.snapshot_id for n, r in table.refs().items() if n != "main"} == {
        "v000001": first.tables["shop.items"]["snapshot_id"],
        "v000002": second.tables["shop.items"]["snapshot_id"],
    }
    assert table.properties["commit.retry.num-retries"] == "0"
    summary = table.current_snapshot().summary
    assert json.loads(summary["finetune.dataset-tables"]) == ["shop.items"]
    assert json.loads(summary["finetune.applied-files"]) == ["20261126-090022000.parquet"]
    assert json.loads(summary["finetune.events"])["I"] == 1
    assert json.loads(summary["finetune.validation"])["passed"] is True
    assert summary["finetune.report"] == "reports/v000002/report.html"
    # The sync position is in the same snapshot: the next sync starts from there.
    assert json.loads(summary["finetune.state.cdc_watermark"]) == "20261126-090022000.parquet"
    assert json.loads(summary["finetune.state.rows"]) == 3 and summary["total-records"] == "3"
    assert store.exists(f"{spec.dataset_prefix}/{summary['finetune.state']}")
    # And the version's record, written once it was published.
    record = json.loads(store.get_bytes(record_key(spec.dataset_prefix, "v000002")))
    assert record["tables"]["shop.items"]["snapshot_id"] == second.tables["shop.items"]["snapshot_id"]


def test_a_lost_version_record_is_written_by_the_next_run(store, spec):
    _base(store)
    run_sync(store, spec, now=NOW)
    store.delete(record_key(spec.dataset_prefix, "v000001"))
    assert run_sync(store, spec, now=NOW).status == "up_to_date"
    assert open_record(store, spec.dataset_prefix, "v000001").row_counts == {"shop.items": 2}


# ---------------------------------------------------------------------------------------------- readers


def test_the_reader_returns_exactly_the_rows_the_sync_published(store, spec):
    _base(store)
    put_cdc(store, item_events([("I", 20, 3, 4, "d", 4, "new"), ("U", 21, 4, 2, "b2", 5, "done")]), 22)
    result = run_sync(store, spec, now=NOW)
    expected = [(1, "a1", 10, "done"), (2, "b2", 5, "done"), (4, "d", 4, "new")]
    version = published(spec, result.version)
    assert _rows(version.tables["shop.items"].to_arrow()) == expected
    # The files the commit added, read as plain Parquet, hold the same rows.
    added = iceberg_table(spec).snapshot_by_name(result.version)
    files = [store.key_of(f) for f in version.tables["shop.items"].files()]
    assert _rows(pa.concat_tables([pq.read_table(store.uri(k)) for k in files])) == expected
    assert added.summary["total-data-files"] == str(len(files))
    # Through the version's record (no catalog), as training nodes read it: the same rows.
    recorded = open_record(store, spec.dataset_prefix, result.version)
    assert _rows(recorded.tables["shop.items"].to_arrow()) == expected


def test_the_training_entrypoint_gets_the_files_of_the_version_it_was_given(store, spec, monkeypatch, capsys,
                                                                          tmp_path):
    _base(store)
    first = run_sync(store, spec, now=NOW)
    put_cdc(store, item_events([("I", 20, 3, 4, "d", 4, "new")]), 22)
    run_sync(store, spec, now=NOW)  # a newer version exists; training must use the one it was launched for
    seen = {}
    trainer = types.ModuleType("fake_trainer")

    def fit(job):
        seen.update(version=job.version, files=job.files, rows=job.read("shop.items").to_pylist())
        return {}

    trainer.fit = fit
    monkeypatch.setitem(sys.modules, "fake_trainer", trainer)
    monkeypatch.setenv("FINETUNE_TRAINER", "fake_trainer")
    monkeypatch.syspath_prepend(str(REPO / "include" / "training"))
    train = importlib.import_module("train")
    dataset = str(store.root / spec.dataset_prefix)
    output = tmp_path / "model"
    assert train.main(["--dataset-uri", dataset, "--dataset-version", first.version, "--output-uri", str(output)]) == 0
    assert seen["version"] == first.version and len(seen["files"]["shop.items"]) == 1
    assert sorted((r["item_id"], r["name"], r["qty"], r["status"]) for r in seen["rows"]) == [
        (1, "a1", 10, "done"), (2, "b", 2, "new")
    ]
    assert "shop.items: 2 rows in 1 files" in capsys.readouterr().out
    assert json.loads((output / "_SUCCESS").read_text())["version"] == first.version


def test_other_engines_read_a_version_from_the_metadata_alone(store, spec):
    """pyiceberg's StaticTable (no catalog) and DuckDB over the files Iceberg plans read the same rows."""
    import duckdb
    from pyiceberg.table import StaticTable

    _base(store)
    first = run_sync(store, spec, now=NOW)
    put_cdc(store, item_events([("I", 20, 3, 4, "d", 4, "new")]), 22)
    run_sync(store, spec, now=NOW)
    ours = _rows(published(spec, first.version).tables["shop.items"].to_arrow())

    static = StaticTable.from_metadata(iceberg_table(spec).metadata_location)  # the newest metadata file
    snapshot = static.snapshot_by_name(first.version)
    assert _rows(static.scan(snapshot_id=snapshot.snapshot_id).to_arrow()) == ours

    planned = static.scan(snapshot_id=snapshot.snapshot_id).plan_files()
    files = [t.file.file_path.removeprefix("file://") for t in planned]
    got = duckdb.sql(f"SELECT item_id, name, qty, status FROM read_parquet({files!r})").fetchall()
    assert sorted(got) == ours


# ---------------------------------------------------------------------------------------------- schema


def test_a_nullable_column_added_to_the_contract_and_older_tags_keep_their_schema(store, spec, contracts_dir):
    _base(store)
    first = run_sync(store, spec, now=NOW)
    path = contracts_dir / "shop.items.yaml"
    path.write_text(path.read_text().replace("  - {name: status", "  - {name: color, type: string}\n  - {name: status"))
    table = item_events([("I", 20, 3, 5, "e", 1, "new")]).append_column("color", pa.array(["red"]))
    put_cdc(store, table, 21)
    second = run_sync(store, spec, now=NOW)
    assert second.published
    iceberg = iceberg_table(spec)
    assert [f.name for f in iceberg.schema().fields][-1] == "color"
    new = published(spec, second.version).tables["shop.items"].to_arrow()
    old = published(spec, first.version).tables["shop.items"].to_arrow()
    assert "color" in new.column_names and "color" not in old.column_names
    assert {r["item_id"]: r["color"] for r in new.to_pylist()} == {1: None, 2: None, 5: "red"}
    snapshot = iceberg.snapshot_by_name(first.version)
    assert snapshot.schema_id != iceberg.snapshot_by_name(second.version).schema_id


def test_a_type_change_fails_naming_the_column_and_commits_nothing(store, spec, contracts_dir):
    _base(store)
    run_sync(store, spec, now=NOW)
    before = iceberg_table(spec).metadata_location
    path = contracts_dir / "shop.items.yaml"
    path.write_text(path.read_text().replace("{name: qty, type: int32", "{name: qty, type: int64"))
    put_cdc(store, item_events([("I", 20, 3, 4, "d", 4, "new")]), 22)
    with pytest.raises(SchemaMismatchError, match="qty: the table has int, the contract needs long"):
        run_sync(store, spec, now=NOW)
    assert iceberg_table(spec).metadata_location == before and versions(spec) == ["v000001"]


def test_an_existing_table_that_does_not_fit_the_contract_is_refused(store, spec):
    from pyiceberg.schema import Schema
    from pyiceberg.types import LongType, NestedField, StringType

    catalog = load(spec.catalog, create_namespace=True)
    catalog.create_table(
        spec.catalog.identifier("shop.items"),
        schema=Schema(NestedField(1, "item_id", LongType()), NestedField(2, "qty", StringType()),
                      NestedField(3, "legacy", StringType())),  # fmt: skip
        location=spec.catalog.table_location("shop.items"),
    )
    _base(store)
    with pytest.raises(SchemaMismatchError) as error:
        run_sync(store, spec, now=NOW)
    message = str(error.value)
    assert "table finetune.shop__items does not fit contract shop.items" in message
    assert "qty: the table has string, the contract needs int" in message
    assert "legacy: in the table but not in the contract" in message
    assert "_bucket: the table must be partitioned by identity(_bucket)" in message
    assert versions(spec) == []


# ---------------------------------------------------------------------------------------------- concurrency


def _race(monkeypatch, store, spec, other_change):
    """Run another complete sync (a change landed after ours listed the landing) just before our commit."""
    real_commit = TableWrite.commit
    raced = []

    def commit(self, **kwargs):
        if not raced:
            raced.append(True)
            monkeypatch.setattr(TableWrite, "commit", real_commit)
            put_cdc(store, item_events([other_change]), other_change[1] + 1)
            other = run_sync(store, spec, now=NOW)
            assert other.published, other.failed_checks
            monkeypatch.setattr(TableWrite, "commit", commit)
        return real_commit(self, **kwargs)

    monkeypatch.setattr(TableWrite, "commit", commit)
    return raced


def test_a_sync_that_loses_the_race_commits_nothing_and_says_so(store, spec, monkeypatch):
    _base(store)
    run_sync(store, spec, now=NOW)
    put_cdc(store, item_events([("I", 20, 3, 4, "mine", 4, "new")]), 22)
    _race(monkeypatch, store, spec, ("U", 30, 9, 2, "theirs", 2, "new"))
    with pytest.raises(SyncConflictError, match="changed while this sync ran"):
        run_sync(store, spec.model_copy(update={"commit_attempts": 1}), now=NOW)
    # The other sync's version stands (it took both files: ours had not committed), and nothing else.
    assert versions(spec) == ["v000001", "v000002"]
    assert len(iceberg_table(spec).snapshots()) == 2
    rows = published_rows(store, spec)
    assert rows[2]["name"] == "theirs" and rows[4]["name"] == "mine"
    assert run_sync(store, spec, now=NOW).status == "up_to_date"


def test_a_sync_that_loses_the_race_retries_without_losing_the_other_change(store, spec, monkeypatch):
    _base(store)
    run_sync(store, spec, now=NOW)
    put_cdc(store, item_events([("I", 20, 3, 4, "mine", 4, "new")]), 22)
    monkeypatch.setattr(sync_module, "discover", _discover_only_first(sync_module.discover))
    raced = _race(monkeypatch, store, spec, ("U", 30, 9, 2, "theirs", 2, "new"))
    result = run_sync(store, spec, now=NOW)
    assert raced and result.published and result.version == "v000003"  # the retry, on top of theirs
    rows = published_rows(store, spec)
    assert rows[2]["name"] == "theirs" and rows[4]["name"] == "mine"
    assert [s.summary["finetune.version"] for s in iceberg_table(spec).snapshots()] == [
        "v000001", "v000002", "v000003"
    ]


def _discover_only_first(real):
    """The other sync takes only its own file, so the retry has ours left to commit."""
    calls = []

    def discover(store, settings, contract, prev):
        found = real(store, settings, contract, prev)
        calls.append(1)
        if len(calls) == 2:  # the racing sync, as if it had listed before our file landed
            found.files = [f for f in found.files if f.key.endswith("090031000.parquet")]
            found.listed = {f.name for f in found.files}
        return found

    return discover


# ---------------------------------------------------------------------------------------------- bad input


def test_an_unreachable_catalog_is_a_clear_error_and_nothing_is_written(store, spec, tmp_path):
    _base(store)
    before = sorted(i.key for i in store.list_after(""))
    unreachable = spec.model_copy(
        update={"catalog": CatalogSpec(uri="postgresql+psycopg://sync:s3cret@127.0.0.1:1/catalog",
                                       warehouse=spec.catalog.warehouse)}  # fmt: skip
    )
    with pytest.raises(CatalogError) as error:
        run_sync(store, unreachable, now=NOW)
    message = str(error.value)
    assert message.startswith("cannot use the sql catalog 'finetune' at postgresql+psycopg://sync:***@127.0.0.1:1/")
    assert "s3cret" not in message
    assert sorted(i.key for i in store.list_after("")) == before  # no quarantine, no state, no report


class _Refusing(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        body = json.dumps({"error": {"message": "The security token included in the request is invalid",
                                     "type": "ForbiddenException", "code": 403}}).encode()  # fmt: skip
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_refused_credentials_are_a_clear_error_and_nothing_is_written(store, spec):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _base(store)
        before = sorted(i.key for i in store.list_after(""))
        refused = spec.model_copy(
            update={"catalog": CatalogSpec(kind="rest", uri=f"http://127.0.0.1:{server.server_port}",
                                           warehouse="finetune")}  # fmt: skip
        )
        access = AwsAccess(region="us-east-1", access_key_id="AKIAEXAMPLE", secret_access_key="wrong-secret")
        with pytest.raises(CatalogError, match=r"cannot use the rest catalog .*Forbidden.*security token") as error:
            run_sync(store, refused, now=NOW, access=access)
        assert "wrong-secret" not in str(error.value)
        assert sorted(i.key for i in store.list_after("")) == before
    finally:
        server.shutdown()


# ---------------------------------------------------------------------------------------------- Glue


def test_sync_and_read_through_the_glue_catalog_on_localaws(boto_client, localaws, tmp_path, spec):
    """The Glue Data Catalog (moto's, over HTTP) holds the tables, the bucket their files."""
    from finetune_pipeline.datasets.store import S3Store

    client = boto_client("s3")
    bucket = f"glue-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    store = S3Store(client, bucket, tmp_dir=tmp_path)
    access = AwsAccess(region="us-east-1", endpoint_url=localaws.endpoint_url, access_key_id="testing",
                       secret_access_key="testing")  # fmt: skip
    glue = spec.model_copy(
        update={"catalog": CatalogSpec(kind="glue", namespace=f"ft_{uuid.uuid4().hex[:8]}",
                                       warehouse=f"s3://{bucket}/datasets/shop/warehouse")}  # fmt: skip
    )
    _base(store)
    first = run_sync(store, glue, now=NOW, access=access)
    assert first.published
    put_cdc(store, item_events([("I", 20, 3, 4, "d", 4, "new")]), 22)
    assert run_sync(store, glue, now=NOW, access=access).version == "v000002"
    table = boto_client("glue").get_table(DatabaseName=glue.catalog.namespace, Name="shop__items")["Table"]
    assert table["Parameters"]["table_type"].upper() == "ICEBERG"
    assert table["Parameters"]["metadata_location"].startswith(f"s3://{bucket}/datasets/shop/warehouse/")
    assert set(published_rows(store, glue, access=access, version="v000001")) == {1, 2}
    assert set(published_rows(store, glue, access=access)) == {1, 2, 4}
