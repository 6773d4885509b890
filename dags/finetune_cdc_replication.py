"""Stage 2: ongoing changes online, with AWS DMS replicating the source into S3 from the snapshot on."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param, task

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

Runs when a snapshot is published (the snapshot Asset). It reads where CDC starts from the published
manifest (the LSN of the slot the export created, or MySQL's binlog position), makes sure the replication
instance, the source and S3 target endpoints and the CDC-only task exist (reusing what a previous try created,
setting back drifted endpoint settings), then starts the task there: no gap and no overlap between the bulk
copy and the change stream, on the Snowball route and the online one alike. A task that ran before is resumed
(`resume-processing`) where it stopped; `reload_target` starts it over, and says what that costs. DMS writes
change files in its S3 layout under the landing prefix, which the incremental sync reads. Source credentials
come from the Airflow connection `source.conn_id`, through Secrets Manager when `dms.source_secret_id` is set.
""",
    schedule=[snapshot_asset(config)],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["finetune", "cdc", "dms"],
    params={
        "reload_target": Param(
            False,
            type="boolean",
            title="Reload the target",
            description=(
                "Leave off: a task that ran before resumes where it stopped (resume-processing) and nothing is "
                "lost. On: the CDC task starts over at the snapshot's start position and every change since the "
                "snapshot lands again as new files (the dataset merges the duplicates away, the next syncs take "
                "longer). It only works while the source still holds that position: a PostgreSQL slot that has "
                "moved on skips the changes in between, and they are lost. A running task is stopped first."
            ),
        )
    },
) as dag:

    @task(multiple_outputs=True)
    def cdc_start() -> dict:
        """Read where CDC starts (position, slot) from the published snapshot manifest."""
        return pipeline_tasks.cdc_start(config)

    start_at = cdc_start()
    postgres = config.source.engine == "postgres"

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
        # PostgreSQL: the slot the export created, read with test_decoding, kept moving by DMS's heartbeat.
        slot_name=start_at["slot_name"] if postgres else None,
        plugin_name=start_at["plugin_name"] if postgres else None,
        heartbeat_enable=postgres and dms.heartbeat_enable,
        heartbeat_frequency=dms.heartbeat_frequency_minutes,
        secrets_manager_secret_id=dms.source_secret_id,
        secrets_manager_access_role_arn=dms.secrets_manager_access_role_arn,
        create_secret_from_connection=dms.create_source_secret,
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
        migration_type=pipeline_tasks.CDC_MIGRATION_TYPE,
        waiter_delay=dms.poll_seconds,
        aws_conn_id=config.aws.conn_id,
        region_name=config.storage.region,
        deferrable=True,
    )
    start = DmsStartTaskAtPositionOperator(
        task_id="start_cdc_at_snapshot",
        replication_task_arn=replication_task.output,
        cdc_start_position=start_at["cdc_start_position"],
        reload_target="{{ params.reload_target }}",
        waiter_delay=dms.poll_seconds,
        aws_conn_id=config.aws.conn_id,
        region_name=config.storage.region,
        deferrable=True,
        outlets=[replication_asset(config)],
    )
    [source, target] >> replication_task >> start
