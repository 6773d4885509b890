"""DatasetSyncOperator on localaws: publishes a version from landed seed files, then skips when up to date."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowSkipException

from finetune_pipeline import landing
from finetune_pipeline.config import REPO_ROOT
from finetune_pipeline.export_manifest import read_manifest
from finetune_pipeline.pipeline_tasks import export_dir
from finetune_pipeline.sync_operator import REPORT_URL_XCOM_KEY, DatasetSyncOperator
from localaws.seed import seed_demo, write_change_batch


class RecordingTaskInstance:
    def __init__(self):
        self.xcom = {}

    def xcom_push(self, key, value):
        self.xcom[key] = value


def make_context():
    return {"ti": RecordingTaskInstance(), "outlet_events": defaultdict(lambda: SimpleNamespace(extra=None))}


def make_operator(config, asset):
    storage = config.storage
    return DatasetSyncOperator(
        task_id="sync_dataset", bucket=storage.bucket, landing_prefix=storage.landing_prefix,
        dataset_prefix=storage.dataset_prefix, quarantine_prefix=storage.quarantine_prefix,
        contracts_dir=str(REPO_ROOT / config.sync.contracts_dir), retention=3, outlets=[asset],
    )


@pytest.fixture
def landed(pipeline_config, localaws, boto_client, aws_conn):
    """Seed data in DMS's format: the snapshot copied to the landing prefix and its manifest published."""
    seeded = seed_demo(pipeline_config, localaws.endpoint_url, report=lambda line: None)
    s3 = boto_client("s3")
    storage = pipeline_config.storage
    manifest = read_manifest(export_dir(pipeline_config))
    landing.upload_export(s3, export_dir(pipeline_config), manifest, storage.bucket, storage.landing_prefix)
    landing.publish_snapshot_manifest(s3, manifest, storage.bucket, storage.landing_prefix)
    return SimpleNamespace(s3=s3, tables=seeded["tables"])


def test_sync_skips_until_a_snapshot_is_published(pipeline_config, boto_client, aws_conn):
    boto_client("s3").create_bucket(Bucket=pipeline_config.storage.bucket)
    operator = make_operator(pipeline_config, Asset("s3://x/current"))
    with pytest.raises(AirflowSkipException, match="nothing to sync yet"):
        operator.execute(make_context())


def test_sync_publishes_then_skips_when_nothing_is_new(pipeline_config, landed):
    asset = Asset("s3://x/current")
    operator = make_operator(pipeline_config, asset)
    context = make_context()
    result = operator.execute(context)

    assert result["status"] == "published"
    assert result["row_counts"]["public.tickets"] > 0
    assert context["outlet_events"][asset].extra == {"version": result["version"], "row_counts": result["row_counts"]}
    storage = pipeline_config.storage
    current_key = f"{storage.dataset_prefix}/current"
    current = json.loads(landed.s3.get_object(Bucket=storage.bucket, Key=current_key)["Body"].read())
    assert current["version"] == result["version"]
    url = context["ti"].xcom[REPORT_URL_XCOM_KEY]
    assert url.endswith(result["report_keys"]["html"])
    assert b"<html" in landed.s3.get_object(Bucket=storage.bucket, Key=result["report_keys"]["html"])["Body"].read()

    second = make_context()
    with pytest.raises(AirflowSkipException, match=f"{result['version']} stays current"):
        operator.execute(second)
    assert asset not in second["outlet_events"]


def test_each_new_batch_of_changes_publishes_a_reconciled_version(pipeline_config, landed):
    operator = make_operator(pipeline_config, Asset("s3://x/current"))
    first = operator.execute(make_context())
    keys, _ = write_change_batch(pipeline_config, landed.s3, landed.tables, datetime.now(UTC), seed=101)
    assert keys

    second = operator.execute(make_context())
    assert second["status"] == "published"
    assert second["previous_version"] == first["version"] != second["version"]
    row_count_checks = [check for check in second["checks"] if check["check"] == "row_count"]
    assert row_count_checks and all(check["passed"] for check in row_count_checks)
