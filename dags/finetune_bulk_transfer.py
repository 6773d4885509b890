"""Stage 1: the initial bulk copy of a consistent snapshot, offline on Snowball or online."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, task, task_group

from finetune_pipeline.aws.operators.snowball import (
    SnowballCreateAddressOperator,
    SnowballCreateJobOperator,
    SnowballLoadDeviceOperator,
)
from finetune_pipeline.aws.sensors.snowball import SnowballJobStateSensor
from finetune_pipeline.pipeline import tasks as pipeline_tasks
from finetune_pipeline.pipeline.assets import snapshot_asset
from finetune_pipeline.pipeline.config import load_config
from finetune_pipeline.pipeline.dag_defaults import DEFAULT_ARGS, DEVICE_DELIVERY, DEVICE_IMPORT, beyond

config = load_config()
SNAPSHOT = snapshot_asset(config)
BUCKET_ARN = f"arn:aws:s3:::{config.storage.bucket}"
SNAPSHOT_POSITION = "{{ ti.xcom_pull(task_ids='read_export')['snapshot_position'] }}"

with DAG(
    dag_id="finetune_bulk_transfer",
    description="Plan the bulk copy, ship the snapshot on Snowball (or copy it online), verify it landed.",
    doc_md=__doc__
    + """

Trigger it once per source. `export_snapshot` runs the consistent export when Airflow reaches the source
(`source.export_from_airflow`); otherwise the export runs on premises (`python -m finetune_pipeline.export`)
and the task is skipped. `read_export` checks the export against its manifest, and the planner weighs the
export's real size against the link (`transfer` in `include/config/pipeline.yaml`): the **offline** route (an
AWS Snowball import job) or the **online** route (a direct copy). Either way every exported file is verified
in S3 by checksum before the snapshot Asset is updated, which starts CDC replication at the snapshot's LSN.

The export's replication slot keeps the source's WAL from the snapshot until DMS reads it: for the whole
trip of the device, days to weeks. While the device travels, `snowball.watch_retained_wal` logs how much WAL
the slot holds (through `source.wal_monitor_conn_id`) and fails if PostgreSQL invalidated the slot.
Waiting for the device (days) is deferred to the triggerer and holds no worker slot.
""",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["finetune", "bulk-transfer", "snowball"],
) as dag:

    # A consistent export of a large database streams every row once: hours to days.
    @task(multiple_outputs=False, execution_timeout=timedelta(days=7))
    def export_snapshot() -> dict:
        """Export a consistent snapshot and create the slot CDC starts from (skipped when run on premises)."""
        return pipeline_tasks.export_snapshot(config)

    @task(multiple_outputs=False, trigger_rule="none_failed")
    def read_export() -> dict:
        """Check the snapshot export against its manifest."""
        return pipeline_tasks.read_export(config)

    @task(multiple_outputs=False)
    def plan_transfer() -> dict:
        """Decide offline (Snowball) or online from the export's real size and the link."""
        return pipeline_tasks.plan(config)

    @task.branch
    def choose_route(plan: dict) -> str:
        return "snowball.create_address" if plan["mode"] == "offline" else "copy_online"

    @task_group(group_id="snowball")
    def snowball_import():
        address = SnowballCreateAddressOperator(
            task_id="create_address",
            address=pipeline_tasks.snowball_address(config),
            aws_conn_id=config.aws.conn_id,
        )
        job = SnowballCreateJobOperator(
            task_id="create_job",
            address_id=address.output,
            bucket_arn=BUCKET_ARN,
            # Every key under "<landing>/" sorts between "<landing>/" and "<landing>0" ("0" follows "/").
            key_range={"BeginMarker": f"{config.storage.landing_prefix}/",
                       "EndMarker": f"{config.storage.landing_prefix}0"},
            role_arn=config.snowball.role_arn,
            kms_key_arn=config.snowball.kms_key_arn,
            snowball_type=config.snowball.snowball_type,
            capacity=config.snowball.capacity,
            shipping_option=config.snowball.shipping_option,
            # One job per snapshot: a retry, or a re-run for the same snapshot, reuses it.
            description_key=f"{config.project}-snapshot-{SNAPSHOT_POSITION}",
            aws_conn_id=config.aws.conn_id,
        )
        device_arrived = SnowballJobStateSensor(
            task_id="wait_for_device",
            job_id=job.output,
            target_state="WithCustomer",
            # A re-run for a snapshot whose device already shipped skips loading; the import is still
            # awaited, and publish_snapshot verifies every file landed.
            skip_when_past=True,
            poke_interval=config.snowball.poll_seconds,
            timeout=DEVICE_DELIVERY.total_seconds(),
            execution_timeout=beyond(DEVICE_DELIVERY),
            deferrable=True,
            aws_conn_id=config.aws.conn_id,
        )
        load = SnowballLoadDeviceOperator(
            task_id="load_device",
            job_id=job.output,
            source_dir=str(config.snowball.export_dir),
            bucket=config.storage.bucket,
            key_prefix=config.storage.landing_prefix,
            device_endpoint_url=config.snowball.device_endpoint_url,
            device_aws_conn_id=config.snowball.device_conn_id,
            # Terabytes at a device's few hundred MB/s: a day or more; a retry resumes where it stopped.
            execution_timeout=timedelta(days=3),
            aws_conn_id=config.aws.conn_id,
        )
        imported = SnowballJobStateSensor(
            task_id="wait_for_import",
            job_id=job.output,
            target_state="Complete",
            # Runs after a loaded device, or when the device steps were skipped on a re-run; never on
            # the online route, where create_job itself was skipped.
            trigger_rule="none_failed_min_one_success",
            poke_interval=config.snowball.poll_seconds,
            timeout=DEVICE_IMPORT.total_seconds(),
            execution_timeout=beyond(DEVICE_IMPORT),
            deferrable=True,
            aws_conn_id=config.aws.conn_id,
        )
        # Not deferrable: each look queries the source. Between looks it holds no worker slot (reschedule).

        @task.sensor(poke_interval=config.source.wal_monitor_minutes * 60, timeout=DEVICE_IMPORT.total_seconds(),
                     mode="reschedule")
        def watch_retained_wal(job_id: str) -> bool:
            """Log the WAL the export's slot retains while the device travels, until the import is over."""
            return pipeline_tasks.watch_retained_wal(config, job_id)

        address >> job >> device_arrived >> load >> imported
        job >> imported
        watch_retained_wal(job.output)

    # The planner chose the link only if the copy fits the deadline; allow that, and a day's margin.
    @task(multiple_outputs=False, execution_timeout=timedelta(days=config.transfer.deadline_days + 1))
    def copy_online() -> dict:
        """Copy the export straight to the landing prefix (resumes where a retry left off)."""
        return pipeline_tasks.copy_online(config)

    @task(trigger_rule="none_failed_min_one_success", outlets=[SNAPSHOT], multiple_outputs=False)
    def publish_snapshot(plan: dict, outlet_events=None) -> str:
        """Verify every exported file landed, then publish the manifest and the snapshot Asset."""
        manifest = pipeline_tasks.verify_and_publish_snapshot(config)
        outlet_events[SNAPSHOT].extra = {"snapshot_position": manifest.snapshot_position, "mode": plan["mode"],
                                         "files": len(manifest.files), "bytes": manifest.total_bytes}
        return manifest.snapshot_position

    export = read_export()
    export_snapshot() >> export
    plan = plan_transfer()
    export >> plan
    route = choose_route(plan)
    snowball = snowball_import()
    online = copy_online()
    route >> [snowball, online]
    [snowball, online] >> publish_snapshot(plan)
