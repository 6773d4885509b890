"""The Assets that link the pipeline's DAGs: snapshot -> replication -> dataset -> training -> model."""

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
    """The validated dataset: the Iceberg tables of one catalog namespace. Each event carries the published
    version (the tag on every table), the row counts, and each table's identifier and tagged snapshot id."""
    iceberg = config.iceberg
    return Asset(name=f"{config.project}-dataset", uri=f"iceberg://{iceberg.catalog_name}/{iceberg.namespace}")


def model_asset(config: PipelineConfig) -> Asset:
    """The fine-tuned models, one folder per dataset version. Each event carries the version, the model's URI
    and its metrics (held-out accuracy and the baselines)."""
    return Asset(name=f"{config.project}-model", uri=f"s3://{config.storage.bucket}/{config.training.models_prefix}/")
