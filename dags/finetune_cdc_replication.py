"""Stage 2: ongoing changes online, with AWS DMS replicating the source into S3 from the snapshot on."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, task

from finetune_pipeline.aws.operators.dms import (
    DmsEnsureEndpointOperator,
    DmsEnsureReplicationInstanceOperator,
    DmsEnsureTaskOperator,
    DmsStartTaskAtPositionOperator,
)
from finetune_pipeline.pipeline import tasks as pipeline_tasks
from finetune_pipeline.pipeline.assets import replication_asset, snapshot_asset
from finetune_pipeline.pipeline.config import load_config
from finetune_pipeline.pipeline.dag_defaults import DEFAULT_ARGS

config = load_config()
dms = config.dms

with DAG(
    dag_id="finetune_cdc_replication",
    description="Set up DMS change data capture into S3, starting exactly where the snapshot ended.",
    doc_md=__doc__
    + """

Runs when a snapshot is published (the snapshot Asset). It makes sure the replication instance, the
source and S3 target endpoints and the CDC task exist (reusing any that a previous try created), then
starts the task at the snapshot's position, so there is no gap and no overlap between the bulk copy and
the change stream. DMS writes change files in its S3 layout under the landing prefix, which the
incremental sync reads. Source credentials come from the Airflow connection named by `source.conn_id`.
""",
    schedule=[snapshot_asset(config)],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["finetune", "cdc", "dms"],
) as dag:

    @task
    def snapshot_position() -> str:
        """Read the position the published snapshot ends at."""
        return pipeline_tasks.snapshot_position(config)

    instance = DmsEnsureReplicationInstanceOperator(
        task_id="ensure_replication_instance",
        replication_instance_identifier=dms.replication_instance_id,
        replication_instance_class=dms.instance_class,
        allocated_storage=dms.allocated_storage_gb,
        waiter_delay=dms.poll_seconds,
        aws_conn_id=config.aws.conn_id,
        region_name=config.storage.region,
        deferrable=True,
    )
    source = DmsEnsureEndpointOperator(
        task_id="ensure_source_endpoint",
        endpoint_identifier=dms.source_endpoint_id,
        endpoint_type="source",
        engine_name=config.source.engine,
        source_conn_id=config.source.conn_id,
        database_name=config.source.database,
        aws_conn_id=config.aws.conn_id,
        region_name=config.storage.region,
    )
    target = DmsEnsureEndpointOperator(
        task_id="ensure_s3_target_endpoint",
        endpoint_identifier=dms.target_endpoint_id,
        endpoint_type="target",
        engine_name="s3",
        s3_settings=pipeline_tasks.dms_s3_settings(config),
        aws_conn_id=config.aws.conn_id,
        region_name=config.storage.region,
    )
    replication_task = DmsEnsureTaskOperator(
        task_id="ensure_cdc_task",
        replication_task_identifier=dms.task_id,
        replication_instance_arn=instance.output,
        source_endpoint_arn=source.output,
        target_endpoint_arn=target.output,
        table_mappings=pipeline_tasks.dms_table_mappings(config),
        waiter_delay=dms.poll_seconds,
        aws_conn_id=config.aws.conn_id,
        region_name=config.storage.region,
        deferrable=True,
    )
    start = DmsStartTaskAtPositionOperator(
        task_id="start_cdc_at_snapshot",
        replication_task_arn=replication_task.output,
        cdc_start_position=snapshot_position(),
        waiter_delay=dms.poll_seconds,
        aws_conn_id=config.aws.conn_id,
        region_name=config.storage.region,
        deferrable=True,
        outlets=[replication_asset(config)],
    )
    [source, target] >> replication_task >> start
