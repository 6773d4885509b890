"""Small task bodies: the CDC start position DMS understands, and training before any dataset exists."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from finetune_pipeline.pipeline.tasks import dms_cdc_position, triggered_dataset_version


@pytest.mark.parametrize(
    ("snapshot", "expected"),
    [
        ("2026-11-26T09:26:59+00:00", "2026-11-26T09:26:59"),
        ("2026-11-26T09:26:59.123456Z", "2026-11-26T09:26:59"),
        ("2026-11-26T10:26:59+01:00", "2026-11-26T09:26:59"),
    ],
)
def test_cdc_position_uses_dms_date_form_in_utc(snapshot, expected):
    assert dms_cdc_position(snapshot) == expected


def test_manual_training_before_any_version_is_a_clear_failure(pipeline_config, boto_client, aws_conn):
    boto_client("s3").create_bucket(Bucket=pipeline_config.storage.bucket)
    with pytest.raises(AirflowFailException, match="no dataset version is published .* run finetune_incremental_sync"):
        triggered_dataset_version(pipeline_config, triggering_asset_events={})
