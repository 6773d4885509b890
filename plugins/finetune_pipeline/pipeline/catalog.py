"""The dataset's Iceberg catalog, from the pipeline config and the Airflow connections.

The AWS credentials the catalog and its FileIO use are the ones the S3 hook resolves for ``aws.conn_id``
(role assumption included), with its endpoint override (localaws); nothing here logs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from finetune_pipeline.datasets.catalog import AwsAccess, CatalogSpec

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from finetune_pipeline.pipeline.config import IcebergConfig


def default_sqlite_uri(bucket: str, dataset_prefix: str) -> str:
    """The embedded catalog: a SQLite file under ``$AIRFLOW_HOME``, one per dataset location. Only for a
    deployment whose Airflow workers all run on this machine."""
    from airflow.configuration import AIRFLOW_HOME

    folder = Path(AIRFLOW_HOME) / "iceberg" / bucket / dataset_prefix
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'catalog.db'}"


def _sql_uri(iceberg: IcebergConfig, bucket: str, dataset_prefix: str) -> str:
    if iceberg.sql_uri:
        return iceberg.sql_uri
    if iceberg.sql_conn_id:
        from airflow.sdk import BaseHook

        uri = BaseHook.get_connection(iceberg.sql_conn_id).get_uri()
        # SQLAlchemy names the driver; Airflow's URIs say postgres:// (psycopg comes with the Postgres provider).
        for prefix in ("postgres://", "postgresql://"):
            if uri.startswith(prefix):
                return "postgresql+psycopg://" + uri[len(prefix) :]
        return uri
    return default_sqlite_uri(bucket, dataset_prefix)


def catalog_spec(iceberg: IcebergConfig, bucket: str, dataset_prefix: str) -> CatalogSpec:
    """The catalog the config names, its warehouse defaulting to the dataset bucket. Call it where the sync
    or a reader runs (a connection may be looked up, the SQLite folder created), never at parse time."""
    warehouse = iceberg.warehouse
    if warehouse is None and iceberg.catalog in ("sql", "glue"):
        warehouse = f"s3://{bucket}/{dataset_prefix}/warehouse"
    return CatalogSpec(
        kind=iceberg.catalog,
        name=iceberg.catalog_name,
        namespace=iceberg.namespace,
        uri=_sql_uri(iceberg, bucket, dataset_prefix) if iceberg.catalog == "sql" else iceberg.rest_uri,
        warehouse=warehouse,
        properties=dict(iceberg.properties),
    )


def aws_access(hook: S3Hook) -> AwsAccess:
    """The hook's session credentials, region and endpoint (localaws), for the catalog and its FileIO."""
    return AwsAccess.from_session(
        hook.get_session(), region=hook.conn_region_name, endpoint_url=hook.conn_config.endpoint_url or None
    )


def open_catalog(iceberg: IcebergConfig, hook: S3Hook, bucket: str, dataset_prefix: str, *, create: bool = False):
    """(spec, loaded catalog) for the sync (``create``: the namespace too) or a reader."""
    from finetune_pipeline.datasets.catalog import load

    spec = catalog_spec(iceberg, bucket, dataset_prefix)
    return spec, load(spec, aws_access(hook), create_namespace=create)
