"""The CLI: merge, read, versions, validate and report on local folders and s3:// URIs, with clear errors and
exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pyarrow.parquet as pq
import pytest
from ds_helpers import REPO, T0, item_events, item_load, put_cdc, put_load

from finetune_pipeline.datasets.cli import main
from finetune_pipeline.datasets.store import LocalStore, S3Store

NOW = "2026-11-26T10:00:00+00:00"


@pytest.fixture
def landing(tmp_path):
    store = LocalStore(tmp_path / "lake")
    put_load(store, item_load([(1, "a", 1, "new"), (2, "b", 2, "new")]))
    put_cdc(store, item_events([("U", 3, 1, 1, "a2", 5, "done")]), 4)
    return store


def _merge(tmp_path, contracts_dir, *extra):
    return main(
        [
            "merge",
            "--landing",
            str(tmp_path / "lake" / "landing"),
            "--dataset",
            str(tmp_path / "lake" / "datasets"),
            "--contracts",
            str(contracts_dir),
            "--snapshot-position",
            T0.isoformat(),
            "--now",
            NOW,
            *extra,
        ]
    )


def test_merge_then_up_to_date(tmp_path, contracts_dir, landing, capsys):
    assert _merge(tmp_path, contracts_dir) == 0
    out = capsys.readouterr().out
    assert out.startswith("published: version v000001 (previous None)") and "shop.items: 2 rows" in out
    assert "shop.items: finetune.shop__items snapshot " in out
    assert _merge(tmp_path, contracts_dir, "--json") == 0
    assert json.loads(capsys.readouterr().out)["status"] == "up_to_date"
    # A local dataset folder holds its whole dataset: the catalog file and the warehouse.
    assert (tmp_path / "lake" / "datasets" / "catalog.db").is_file()
    assert (tmp_path / "lake" / "datasets" / "warehouse" / "finetune" / "shop__items" / "metadata").is_dir()


def test_merge_blocked_exits_1(tmp_path, contracts_dir, landing, capsys):
    put_cdc(landing, item_events([("U", 5, 2, 2, "b", 5000, "new")]), 6)
    assert _merge(tmp_path, contracts_dir) == 1
    out = capsys.readouterr().out
    assert out.startswith("blocked:") and "FAILED [blocking] shop.items range:qty" in out


def test_read_and_versions(tmp_path, contracts_dir, landing, capsys):
    dataset = str(tmp_path / "lake" / "datasets")
    assert _merge(tmp_path, contracts_dir) == 0
    put_cdc(landing, item_events([("U", 5, 2, 2, "b2", 5, "new")]), 6)
    assert _merge(tmp_path, contracts_dir) == 0
    capsys.readouterr()
    assert main(["versions", "--dataset", dataset]) == 0
    assert capsys.readouterr().out.split() == ["v000001", "v000002"]
    assert main(["read", "--dataset", dataset, "--json", "--files"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["version"] == described["tag"] == "v000002"
    table = described["tables"]["shop.items"]
    assert table["identifier"] == "finetune.shop__items" and table["rows"] == 2 and len(table["files"]) == 1
    out = tmp_path / "items.parquet"
    assert main(["read", "--dataset", dataset, "--version", "v000001", "--table", "shop.items", "--out", str(out)]) == 0
    assert "wrote 2 rows of shop.items at v000001" in capsys.readouterr().out
    assert sorted(pq.read_table(out).column("name").to_pylist()) == ["a2", "b"]
    assert main(["read", "--dataset", dataset, "--version", "v000009"]) == 1
    assert "no dataset version v000009" in capsys.readouterr().err


def test_validate_published_data_and_report(tmp_path, contracts_dir, landing, capsys):
    assert _merge(tmp_path, contracts_dir) == 0
    capsys.readouterr()
    dataset = str(tmp_path / "lake" / "datasets")
    contract = str(contracts_dir / "shop.items.yaml")
    assert main(["validate", dataset, "--version", "v000001", "--contract", contract]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["passed"] and result["rows"] == 2 and result["files"] == 1
    html = tmp_path / "report.html"
    assert (
        main(
            [
                "report",
                "--dataset",
                str(tmp_path / "lake" / "datasets"),
                "--format",
                "html",
                "--out",
                str(html),
            ]
        )
        == 0
    )
    assert "<svg" in html.read_text()
    assert main(["report", "--dataset", str(tmp_path / "lake" / "datasets")]) == 0
    assert "shop.items: 2 rows" in capsys.readouterr().out


def test_validate_dms_landing_files(tmp_path, contracts_dir, landing, capsys):
    put_cdc(landing, item_events([("Z", 5, 2, 2, "b", 5, "new")]), 6)
    code = main(
        [
            "validate",
            "--dms",
            str(tmp_path / "lake" / "landing" / "shop" / "items"),
            "--contract",
            str(contracts_dir / "shop.items.yaml"),
        ]
    )
    assert code == 1
    files = {f["key"].rsplit("/", 1)[-1]: f for f in json.loads(capsys.readouterr().out)["files"]}
    assert {name: f["ok"] for name, f in files.items()} == {
        "LOAD00000001.parquet": True,
        "20261126-090004000.parquet": True,
        "20261126-090006000.parquet": False,
    }
    assert files["20261126-090006000.parquet"]["reason"] == "bad_op"


def test_errors_are_one_line_with_exit_2(tmp_path, contracts_dir, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "shop.items.yaml").write_text("table: shop.items\nprimary_key: [id]\ncolumns: []\n")
    assert main(["validate", str(tmp_path), "--contract", str(bad / "shop.items.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "columns" in err
    assert (
        main(["merge", "--landing", "s3://a/x", "--dataset", "s3://b/y", "--contracts", str(contracts_dir)])
        == 2
    )
    assert "same bucket" in capsys.readouterr().err
    assert main(["report", "--dataset", str(tmp_path / "empty")]) == 2
    assert "nothing published" in capsys.readouterr().err
    assert main(["merge", "--landing", "s3://a/x", "--dataset", "s3://a/y", "--contracts", str(contracts_dir)]) == 2
    assert "needs --catalog-uri" in capsys.readouterr().err
    assert (
        main(
            [
                "merge",
                "--landing",
                str(tmp_path / "l"),
                "--dataset",
                str(tmp_path / "d"),
                "--contracts",
                str(tmp_path / "nope"),
            ]
        )
        == 2
    )
    assert "contracts folder not found" in capsys.readouterr().err


def test_merge_on_s3_with_endpoint_url(boto_client, localaws, tmp_path, contracts_dir, capsys):
    """The warehouse in the bucket (written through pyiceberg's FileIO), the catalog a local SQLite file."""
    client = boto_client("s3")
    bucket = f"cli-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    store = S3Store(client, bucket)
    put_load(store, item_load([(1, "a", 1, "new")]))
    catalog = ["--catalog-uri", f"sqlite:///{tmp_path}/catalog.db"]
    code = main(
        [
            "--endpoint-url",
            localaws.endpoint_url,
            "merge",
            "--landing",
            f"s3://{bucket}/landing",
            "--dataset",
            f"s3://{bucket}/datasets/shop",
            "--contracts",
            str(contracts_dir),
            "--now",
            NOW,
            *catalog,
        ]
    )
    assert code == 0, capsys.readouterr()
    capsys.readouterr()
    listed = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="datasets/shop/warehouse/")["Contents"]]
    assert any(k.endswith(".parquet") for k in listed) and any(k.endswith(".metadata.json") for k in listed)
    assert main(["--endpoint-url", localaws.endpoint_url, "read", "--limit", "1", *catalog]) == 0
    out = capsys.readouterr().out
    assert out.startswith("v000001\n  shop.items: 1 rows") and "'name': 'a'" in out


def test_module_entry_point(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "finetune_pipeline.datasets", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO / "plugins",
        timeout=60,
    )
    assert proc.returncode == 0 and "merge" in proc.stdout and "validate" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "finetune_pipeline.datasets", "merge"],
        capture_output=True,
        text=True,
        cwd=REPO / "plugins",
        timeout=60,
    )
    assert proc.returncode == 2 and "--landing" in proc.stderr


def test_merge_refuses_an_empty_contracts_folder(tmp_path, landing, capsys):
    empty = tmp_path / "no-contracts"
    empty.mkdir()
    assert _merge(tmp_path, empty) == 2
    err = capsys.readouterr().err
    assert "no contracts" in err and str(empty) in err
    assert not (tmp_path / "lake" / "datasets" / "versions").exists()  # nothing published


def _quarantine(tmp_path, *args):
    lake = tmp_path / "lake"
    return main(["quarantine", args[0], "--landing", str(lake / "landing"), "--dataset", str(lake / "datasets"),
                 *args[1:]])  # fmt: skip


def test_quarantine_list_release_and_discard(tmp_path, contracts_dir, landing, capsys):
    """The operator's commands for files quarantined under quarantine_and_stop: the merge stays blocked
    until each held file is released or discarded."""
    path = contracts_dir / "shop.items.yaml"
    path.write_text(path.read_text().replace("quarantine_and_continue", "quarantine_and_stop"))
    assert _merge(tmp_path, contracts_dir) == 0
    bad = put_cdc(landing, item_events([("I", 20, 3, 7, "x", 1, "new")]).drop_columns(["item_id"]), 21)
    other = put_cdc(landing, item_events([("X", 30, 4, 8, "y", 1, "new")]), 31)
    assert _merge(tmp_path, contracts_dir) == 1
    capsys.readouterr()
    assert _merge(tmp_path, contracts_dir) == 1  # held, in the next run too
    out = capsys.readouterr().out
    assert out.startswith("blocked:") and "quarantine_hold" in out and bad in out

    assert _quarantine(tmp_path, "list") == 0
    out = capsys.readouterr().out
    name = bad.rsplit("/", 1)[-1]
    assert f"HOLDS     datasets/quarantine/shop/items/{name}" in out
    assert "missing_column: primary key column 'item_id' missing" in out
    assert "1 open or released file(s)" in out and "1 hold(s) publishing" in out
    assert "quarantine release KEY" in out and "quarantine discard KEY --reason" in out

    fixed = tmp_path / "fixed.parquet"
    pq.write_table(item_events([("I", 20, 3, 7, "x-fixed", 1, "new")]), fixed)
    assert _quarantine(tmp_path, "release", name, "--fixed", str(fixed), "--note", "key restored") == 0
    out = capsys.readouterr().out
    assert f"released datasets/quarantine/shop/items/{name} -> " in out and "nothing holds publishing" in out
    assert _quarantine(tmp_path, "release", name) == 2
    assert "already released" in capsys.readouterr().err

    # The released file is read again; the other file (bad Op) holds now.
    assert _merge(tmp_path, contracts_dir) == 1
    capsys.readouterr()
    assert _quarantine(tmp_path, "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["status"] for e in listed if e["source_key"] == bad] == ["released"]  # not applied: not published
    [held] = [e for e in listed if e["holds"]]
    assert held["source_key"] == other and held["holds"]
    with pytest.raises(SystemExit) as usage:  # --reason is required
        _quarantine(tmp_path, "discard", other.rsplit("/", 1)[-1])
    assert usage.value.code == 2
    capsys.readouterr()
    assert _quarantine(tmp_path, "discard", other, "--reason", "test rows, never wanted") == 0
    assert "its changes are accepted as lost" in capsys.readouterr().out
    assert _merge(tmp_path, contracts_dir) == 0
    assert "published: version v000002" in capsys.readouterr().out
    assert _quarantine(tmp_path, "list", "--all", "--json") == 0
    assert sorted(e["status"] for e in json.loads(capsys.readouterr().out)) == ["applied", "discarded"]
