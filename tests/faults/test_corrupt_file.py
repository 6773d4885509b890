"""A corrupt landed file under ``quarantine_and_stop``: no version is published, in this run or the next ones,
until an operator releases the file (fixed) or discards it; then the next run publishes, no row lost."""

from __future__ import annotations

import uuid
from collections import defaultdict
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowFailException
from fault_helpers import Figures
from landed_changes import _apply, last_commit, seed_demo, write_live_batch

from devstack.config import demo_config
from finetune_pipeline.datasets.cli import main as datasets_cli
from finetune_pipeline.datasets.reader import open_version, published_versions
from finetune_pipeline.pipeline import landing
from finetune_pipeline.pipeline.catalog import open_catalog
from finetune_pipeline.pipeline.export_manifest import read_manifest
from finetune_pipeline.pipeline.sync_operator import DatasetSyncOperator

HELD_RUNS = 3
DONE = {"release": "released (fixed)", "discard": "discarded"}


def _context():
    return {"ti": SimpleNamespace(xcom_push=lambda **_: None),
            "outlet_events": defaultdict(lambda: SimpleNamespace(extra=None))}  # fmt: skip


def _published(config) -> tuple[list[str], dict[str, dict]]:
    """The published versions, and the newest one's rows of each table by primary key."""
    hook = S3Hook(aws_conn_id=config.aws.conn_id, region_name=config.storage.region)
    spec, catalog = open_catalog(config.iceberg, hook, config.storage.bucket, config.storage.dataset_prefix)
    keys = {t.qualified_name: t.primary_key for t in config.source.tables}
    rows: dict[str, dict] = {}
    for name, table in open_version(catalog, spec.namespace).tables.items():
        rows[name] = {}
        for row in table.to_arrow().to_pylist():
            rows[name].setdefault(tuple(row[k] for k in keys[name]), []).append(row)
    return published_versions(catalog, spec.namespace), rows


def _lost_and_duplicated(config, expected, published) -> tuple[int, int]:
    """Rows of ``expected`` missing or different in ``published``, and keys published more than once."""
    keys = {t.qualified_name: t.primary_key for t in config.source.tables}
    lost = duplicated = 0
    for name, table in expected.items():
        for row in table.to_pylist():
            found = published.get(name, {}).get(tuple(row[k] for k in keys[name]), [])
            duplicated += max(0, len(found) - 1)
            if not found or any(found[0][c] != v for c, v in row.items()):
                lost += 1
    return lost, duplicated


@pytest.mark.parametrize("action", ["release", "discard"])
def test_a_corrupt_landed_file_under_quarantine_and_stop_holds_until_the_operator_acts(
    localaws, aws_conn, tmp_path, boto_client, record, action
):
    config = demo_config(home=tmp_path, localaws_url=localaws.endpoint_url,
                         overrides={"storage": {"bucket": f"ft-faults-{uuid.uuid4().hex[:12]}"}})  # fmt: skip
    seeded = seed_demo(config, localaws.endpoint_url, report=lambda line: None)
    s3, storage = boto_client("s3"), config.storage
    manifest = read_manifest(config.snowball.export_dir)
    landing.upload_export(s3, config.snowball.export_dir, manifest, storage.bucket, storage.landing_prefix)
    landing.publish_snapshot_manifest(s3, manifest, storage.bucket, storage.landing_prefix)
    contracts = tmp_path / "contracts"
    contracts.mkdir()
    for name in seeded["tables"]:
        data = yaml.safe_load((config.sync.contracts_dir / f"{name}.yaml").read_text())
        data["bad_file_policy"] = "quarantine_and_stop"
        (contracts / f"{name}.yaml").write_text(yaml.safe_dump(data))
    operator = DatasetSyncOperator(
        task_id="sync_dataset", bucket=storage.bucket, landing_prefix=storage.landing_prefix,
        dataset_prefix=storage.dataset_prefix, quarantine_prefix=storage.quarantine_prefix, retention=20,
        contracts_dir=str(contracts), outlets=[Asset("s3://x/current")], tables=sorted(seeded["tables"]),
    )  # fmt: skip
    runs = completed = 0

    def sync(expect: str) -> dict | None:
        nonlocal runs, completed
        runs += 1
        try:
            result = operator.execute(_context())
        except AirflowFailException as error:
            completed += expect == "blocked"
            assert expect == "blocked", error
            assert "hold every run until an operator releases or discards them" in str(error)
            assert f"quarantine list --landing s3://{storage.bucket}/{storage.landing_prefix}" in str(error)
            return None
        completed += expect == result["status"]
        assert result["status"] == expect
        return result

    first = sync("published")
    tables, newest = seeded["tables"], last_commit(seeded["cdc_keys"])
    keys, after, newest = write_live_batch(config, s3, tables, newest, seed=501)
    corrupt = sorted(k for k in keys if "/tickets/" in k)[1]
    original = s3.get_object(Bucket=storage.bucket, Key=corrupt)["Body"].read()
    events = {k: pq.read_table(pa.BufferReader(s3.get_object(Bucket=storage.bucket, Key=k)["Body"].read()))
              for k in keys}  # fmt: skip
    s3.put_object(Bucket=storage.bucket, Key=corrupt, Body=original[: len(original) // 2])  # the fault
    for _ in range(HELD_RUNS):
        sync("blocked")
    # More changes land while the file is held: they wait too.
    more, after_more, newest = write_live_batch(config, s3, after, newest, seed=502)
    events.update({k: pq.read_table(pa.BufferReader(s3.get_object(Bucket=storage.bucket, Key=k)["Body"].read()))
                   for k in more})  # fmt: skip
    sync("blocked")
    held_versions, _ = _published(config)
    assert held_versions == [first["version"]]  # nothing published while held

    where = ["--endpoint-url", localaws.endpoint_url, "quarantine", action,
             "--landing", f"s3://{storage.bucket}/{storage.landing_prefix}",
             "--dataset", f"s3://{storage.bucket}/{storage.dataset_prefix}",
             "--quarantine", f"s3://{storage.bucket}/{storage.quarantine_prefix}"]  # fmt: skip
    name = corrupt.rsplit("/", 1)[-1]
    if action == "release":
        fixed = tmp_path / name
        fixed.write_bytes(original)
        assert datasets_cli([*where, name, "--fixed", str(fixed)]) == 0
        kept = sorted(events)
    else:
        assert datasets_cli([*where, name, "--reason", "fault suite"]) == 0
        kept = sorted(k for k in events if k != corrupt)
    final = sync("published")

    keys_by_table = {t.qualified_name: t.primary_key for t in config.source.tables}
    expected = {}
    for table, rows in seeded["tables"].items():
        schema_name, table_name = table.split(".", 1)
        files = [(k, events[k]) for k in kept if f"/{schema_name}/{table_name}/" in k]
        expected[table] = _apply(rows, files, keys_by_table[table])
    versions, published = _published(config)
    lost, duplicated = _lost_and_duplicated(config, expected, published)
    record(
        Figures(
            f"corrupt landed file under quarantine_and_stop, {DONE[action]} by the operator",
            1,
            completed,
            runs,
            duplicated,
            lost,
            notes=[f"{HELD_RUNS + 1} runs held", f"{len(held_versions) - 1} versions published while held",
                   f"then {final['version']}"],
        )
    )  # fmt: skip
    assert completed == runs and lost == 0 and duplicated == 0
    assert versions == [first["version"], final["version"]]
    if action == "release":
        assert final["row_counts"] == {n: t.num_rows for n, t in after_more.items()}
