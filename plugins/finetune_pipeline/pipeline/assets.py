"""The Assets that link the pipeline's DAGs: snapshot -> replication -> dataset -> training."""

from __future__ import annotations

from airflow.sdk import Asset

from finetune_pipeline.pipeline.config import PipelineConfig


def snapshot_asset(config: PipelineConfig) -> Asset:
    """The bulk snapshot, landed in S3 with its manifest (position where CDC must start)."""
    return Asset(name=f"{config.project}-snapshot", uri=f"{config.landing_uri}/_snapshot/manifest.json")


def replication_asset(config: PipelineConfig) -> Asset:
    """The DMS change stream into the landing prefix."""
    return Asset(name=f"{config.project}-cdc", uri=f"{config.landing_uri}/")


def dataset_asset(config: PipelineConfig) -> Asset:
    """The validated dataset; each event carries the published version and row counts."""
    storage = config.storage
    return Asset(name=f"{config.project}-dataset", uri=f"s3://{storage.bucket}/{storage.dataset_prefix}/current")
