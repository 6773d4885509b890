"""Stage 3: turn landed snapshot and change files into a validated, versioned dataset."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, Param

from finetune_pipeline.pipeline.assets import dataset_asset, replication_asset
from finetune_pipeline.pipeline.config import load_config
from finetune_pipeline.pipeline.dag_defaults import DEFAULT_ARGS
from finetune_pipeline.pipeline.sync_operator import DatasetSyncOperator

config = load_config()
DATASET = dataset_asset(config)
TABLE_NAMES = [table.qualified_name for table in config.source.tables]

with DAG(
    dag_id="finetune_incremental_sync",
    description="Validate the change files landed since the last sync, merge them, publish a dataset version.",
    doc_md=__doc__
    + """

Runs on the schedule in `sync.schedule` (and whenever replication is (re)started). Each run reads only the
files that landed after the last committed watermark, checks them against the table contracts in
`include/contracts/`, quarantines bad files (never deletes them), merges the rest into the touched
buckets of each table, and commits a new version: on every Apache Iceberg table of the dataset (catalog
in the `iceberg` section of the config), one snapshot tagged with the version, holding the data, the
summary and the sync position together. A version is committed only when every blocking check passes;
training is scheduled on the dataset Asset.

Trigger it by hand to sync a subset of tables, or to rebuild every table from the full history.
""",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(config.sync.schedule, timezone="UTC"),
        assets=[replication_asset(config)],
    ),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    # The Params below render as a real list and bool, not their string forms.
    render_template_as_native_obj=True,
    params={
        "tables": Param(
            TABLE_NAMES,
            type="array",
            items={"type": "string", "enum": TABLE_NAMES},
            minItems=1,
            title="Tables",
            description="Which tables to sync.",
        ),
        "full_rebuild": Param(
            False,
            type="boolean",
            title="Full rebuild",
            description="Rebuild every selected table from the snapshot and all change files, not just new ones.",
        ),
    },
    tags=["finetune", "sync", "validation"],
) as dag:

    DatasetSyncOperator(
        task_id="sync_dataset",
        bucket=config.storage.bucket,
        landing_prefix=config.storage.landing_prefix,
        dataset_prefix=config.storage.dataset_prefix,
        quarantine_prefix=config.storage.quarantine_prefix,
        contracts_dir=str(config.sync.contracts_dir),
        retention=config.sync.retention_versions,
        tables="{{ params.tables }}",
        full_rebuild="{{ params.full_rebuild }}",
        replication_task_id=config.dms.task_id if config.sync.reconcile_with_dms else None,
        source_count_conn_id=config.sync.source_count_conn_id,
        late_file_grace_minutes=config.sync.late_file_grace_minutes,
        iceberg=config.iceberg,
        aws_conn_id=config.aws.conn_id,
        region_name=config.storage.region,
        outlets=[DATASET],
    )
