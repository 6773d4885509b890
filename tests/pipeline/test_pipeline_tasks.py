"""Small task bodies: where CDC starts (from the published manifest), and training before any dataset exists."""

from __future__ import annotations

import json

import pytest
from airflow.sdk.exceptions import AirflowFailException
from manifest_helpers import make_export

from finetune_pipeline.pipeline.tasks import (
    cdc_start,
    read_export,
    triggered_dataset_version,
    verify_and_publish_snapshot,
)

# The manifest keys the export writes and the CDC stage reads (the interface between the two).
POSTGRES_MANIFEST = {
    "engine": "postgres",
    "cdc_start_position": "0/1AF7CB8",
    "slot": {"name": "finetune_dms", "plugin": "test_decoding"},
    "source": {"system_identifier": "7400000000000000001", "timeline": 1, "database": "appdb"},
    "snapshot_position": "2026-11-26T09:00:00+00:00",
    "tables": {"public.tickets": {"rows": 3}},
    "files": [],
}


def _publish(config, boto_client, manifest: dict | str) -> None:
    s3 = boto_client("s3")
    s3.create_bucket(Bucket=config.storage.bucket)
    body = manifest if isinstance(manifest, str) else json.dumps(manifest)
    s3.put_object(Bucket=config.storage.bucket, Key=f"{config.storage.landing_prefix}/_snapshot/manifest.json",
                  Body=body.encode())  # fmt: skip


def test_cdc_starts_at_the_manifests_lsn_on_its_slot(pipeline_config, boto_client, aws_conn):
    _publish(pipeline_config, boto_client, POSTGRES_MANIFEST)
    assert cdc_start(pipeline_config) == {
        "engine": "postgres",
        "cdc_start_position": "0/1AF7CB8",
        "slot_name": "finetune_dms",
        "plugin_name": "test-decoding",  # DMS's PluginName for a test_decoding slot
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cdc_start_position": None}, "has no cdc_start_position. DMS cannot start PostgreSQL CDC at a time"),
        ({"cdc_start_position": "2026-11-26T09:00:00"}, "is not a PostgreSQL LSN like 0/1AF7CB8"),
        ({"engine": "mysql"}, "is an export of a 'mysql' source, but source.engine is 'postgres'"),
        ({"slot": None}, "names no replication slot"),
        ({"slot": {"name": "s", "plugin": "pgoutput"}}, "was made with 'pgoutput'; DMS reads only test_decoding"),
    ],
)
def test_a_manifest_that_cannot_say_where_cdc_starts_fails_clearly(
    pipeline_config, boto_client, aws_conn, change, message
):
    _publish(pipeline_config, boto_client, {**POSTGRES_MANIFEST, **change})
    with pytest.raises(AirflowFailException, match=message):
        cdc_start(pipeline_config)


def test_no_published_snapshot_is_a_clear_failure(pipeline_config, boto_client, aws_conn):
    boto_client("s3").create_bucket(Bucket=pipeline_config.storage.bucket)
    with pytest.raises(AirflowFailException, match="no snapshot published .* run finetune_bulk_transfer first"):
        cdc_start(pipeline_config)


def test_manual_training_before_any_version_is_a_clear_failure(pipeline_config, boto_client, aws_conn):
    boto_client("s3").create_bucket(Bucket=pipeline_config.storage.bucket)
    with pytest.raises(AirflowFailException, match="no dataset version is published .* run finetune_incremental_sync"):
        triggered_dataset_version(pipeline_config, triggering_asset_events={})


def _export(config) -> None:
    make_export(config.snowball.export_dir, {"public/tickets/LOAD00000001.parquet": b"t" * 512})


def test_an_export_that_does_not_match_its_manifest_fails_without_retry(pipeline_config):
    _export(pipeline_config)
    (pipeline_config.snowball.export_dir / "public" / "tickets" / "LOAD00000001.parquet").write_bytes(b"short")
    # A retry would read the same files: the task fails at once and says what to do.
    with pytest.raises(AirflowFailException, match="does not match its manifest(.|\n)*re-run the export"):
        read_export(pipeline_config)


def test_a_snapshot_that_did_not_land_fails_without_retry(pipeline_config, boto_client, aws_conn):
    _export(pipeline_config)
    boto_client("s3").create_bucket(Bucket=pipeline_config.storage.bucket)
    with pytest.raises(AirflowFailException, match="did not land(.|\n)*clear copy_online"):
        verify_and_publish_snapshot(pipeline_config)
    # Nothing was published: CDC cannot start from a snapshot that is not all there.
    listed = boto_client("s3").list_objects_v2(Bucket=pipeline_config.storage.bucket).get("KeyCount", 0)
    assert listed == 0
