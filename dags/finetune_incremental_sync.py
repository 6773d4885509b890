"""Stage 3: turn landed snapshot and change files into a validated, versioned dataset."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, Param, task

from finetune_pipeline import pipeline_tasks
from finetune_pipeline.assets import dataset_asset, replication_asset
from finetune_pipeline.config import load_config
from finetune_pipeline.dag_defaults import DEFAULT_ARGS

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
`include/contracts/`, quarantines bad files (never deletes them), merges the rest into each table's
current state, and publishes a new version by writing the `current` manifest last. A version is
published only when every blocking check passes; training is scheduled on the dataset Asset.

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

    @task(outlets=[DATASET], multiple_outputs=False)
    def sync_dataset(params: dict | None = None, outlet_events=None) -> dict:
        """Discover, validate, merge and publish; fail (nothing published) if a blocking check fails."""
        result = pipeline_tasks.sync(config, tables=params["tables"], full_rebuild=params["full_rebuild"])
        outlet_events[DATASET].extra = {"version": result["version"], "row_counts": result["row_counts"]}
        return result

    sync_dataset()
