"""The bodies of the DAGs' Python tasks, kept out of DAG files so those stay cheap to parse.

Each function takes the typed config and returns something small and JSON-serialisable (it becomes an
XCom); nothing here ever returns or logs a credential.
"""

from __future__ import annotations

import logging

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from botocore.exceptions import ClientError

from finetune_pipeline.datasets import dms_target
from finetune_pipeline.pipeline import landing
from finetune_pipeline.pipeline.cdc_start import CdcStartError, parse_cdc_start
from finetune_pipeline.pipeline.config import PipelineConfig
from finetune_pipeline.pipeline.export_manifest import ExportManifest, ExportManifestError, read_manifest
from finetune_pipeline.pipeline.planning import plan_transfer

log = logging.getLogger(__name__)


def _s3_client(config: PipelineConfig):
    return S3Hook(aws_conn_id=config.aws.conn_id, region_name=config.storage.region).get_conn()


def _export_manifest(config: PipelineConfig) -> ExportManifest:
    """The export's manifest; an export that does not match it fails the task at once (a retry reads the same)."""
    try:
        return read_manifest(config.snowball.export_dir)
    except ExportManifestError as error:
        raise AirflowFailException(f"{error}\nFix or re-run the export, then clear this task.") from None


def _source_conninfo(conn_id: str, database: str) -> str:
    """A libpq connection string from the Airflow connection (it holds the password: never log it)."""
    from psycopg.conninfo import make_conninfo

    conn = BaseHook.get_connection(conn_id)
    extra = {key: value for key, value in (conn.extra_dejson or {}).items()
             if key in ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout", "options")}
    params = {"host": conn.host, "port": conn.port, "user": conn.login, "password": conn.password,
              "dbname": conn.schema or database, **extra}
    return make_conninfo(**{key: str(value) for key, value in params.items() if value not in (None, "")})


def export_snapshot(config: PipelineConfig) -> dict:
    """Run the consistent export from Airflow, when it reaches the source (``source.export_from_airflow``)."""
    from finetune_pipeline.export.errors import ExportError, PreflightError, SourceUnreachableError
    from finetune_pipeline.export.postgres import ExportSettings, PostgresExport, TableSpec

    source = config.source
    if not source.export_from_airflow:
        raise AirflowSkipException(
            f"source.export_from_airflow is off: the export runs on premises (python -m finetune_pipeline.export) "
            f"into {config.snowball.export_dir}, and read_export checks its manifest"
        )
    if source.engine != "postgres":
        raise AirflowFailException(f"the export task runs PostgreSQL exports; for {source.engine}, run "
                                   "python -m finetune_pipeline.export --engine mysql on premises")
    tables = [TableSpec(t.schema_name, t.name, tuple(t.primary_key)) for t in source.tables]
    settings = ExportSettings(export_dir=config.snowball.export_dir, slot_name=source.slot_name,
                              workers=source.export_workers, wal_retention_days=source.wal_retention_days,
                              wal_bytes_per_day=source.wal_bytes_per_day)
    try:
        result = PostgresExport(_source_conninfo(source.conn_id, source.database), tables, settings).run()
    except SourceUnreachableError:
        raise  # may be passing: retried
    except (PreflightError, ExportError) as error:
        # The source's settings or the target's disk will not change by retrying.
        raise AirflowFailException(f"{error}\nFix it, then clear this task.") from None
    for warning in result.warnings:
        log.warning("export: %s", warning)
    manifest = result.manifest
    return {"status": "reused" if result.reused else "exported", "cdc_start_position": manifest.cdc_start_position,
            "files": len(manifest.files), "bytes": manifest.total_bytes, "rows": result.rows,
            "seconds": round(result.seconds, 2)}


def plan(config: PipelineConfig) -> dict:
    """Plan the route from the export's real size (its manifest), not the config's estimate."""
    manifest = _export_manifest(config)
    transfer, snowball = config.transfer, config.snowball
    result = plan_transfer(
        manifest.total_bytes,
        link=transfer.link,
        link_gbps_value=transfer.link_gbps,
        vpn_tunnels=transfer.vpn_tunnels,
        direct_connect_gbps=transfer.direct_connect_gbps,
        link_utilization=transfer.link_utilization,
        deadline_days=transfer.deadline_days,
        snowball_type=snowball.snowball_type,
        capacity=snowball.capacity,
        shipping_option=snowball.shipping_option,
        shipping_days_each_way=transfer.shipping_days_each_way,
        device_copy_mb_per_s=transfer.device_copy_mb_per_s,
        import_handling_days=transfer.import_handling_days,
        route=transfer.route,
    )
    log.info("transfer plan: %s", result.reason)
    if config.source.size_bytes:
        log.info("the export is %d bytes; the config estimated %d", manifest.total_bytes, config.source.size_bytes)
    if result.mode == "offline" and result.snowball_days > config.source.wal_retention_days:
        log.warning("the Snowball trip takes %.1f days, longer than source.wal_retention_days (%g): the slot must "
                    "keep WAL that long", result.snowball_days, config.source.wal_retention_days)
    return result.as_dict()


def read_export(config: PipelineConfig) -> dict:
    manifest = _export_manifest(config)
    wal = manifest.wal or {}
    log.info("snapshot export: %d files, %d bytes, %s; CDC starts at %s (snapshot %s)", len(manifest.files),
             manifest.total_bytes, ", ".join(f"{name} {t.rows} rows" for name, t in sorted(manifest.tables.items())),
             manifest.cdc_start_position, manifest.snapshot_position)
    if manifest.slot:
        log.info("slot %s retained %s bytes of WAL when the export finished; it keeps WAL until DMS reads it, for "
                 "the whole trip of the device", manifest.slot.name, wal.get("retained_bytes"))
    return {"snapshot_position": manifest.snapshot_position, "cdc_start_position": manifest.cdc_start_position,
            "engine": manifest.engine, "files": len(manifest.files), "bytes": manifest.total_bytes,
            "retained_wal_bytes": wal.get("retained_bytes")}


RETAINED_WAL_SQL = (
    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, wal_status, safe_wal_size, active "
    "FROM pg_replication_slots WHERE slot_name = %s"
)


def log_retained_wal(config: PipelineConfig) -> dict | None:
    """Log how much WAL the export's slot holds back, through ``source.wal_monitor_conn_id``; fail if it is lost.

    A slot past ``max_slot_wal_keep_size`` is invalidated (``wal_status`` lost): CDC can never start at the
    snapshot, so the import on its way is useless, and saying so now saves waiting for it.
    """
    from finetune_pipeline.pipeline.source_counts import SourceCountError, _get_sql_hook

    conn_id = config.source.wal_monitor_conn_id
    if not conn_id or config.source.engine != "postgres":
        return None
    try:
        hook, _, _ = _get_sql_hook(conn_id)
        row = hook.get_first(RETAINED_WAL_SQL, parameters=(config.source.slot_name,))
    except SourceCountError as error:
        log.warning("cannot read the retained WAL: %s", error)
        return None
    except Exception as error:  # noqa: BLE001 - the watch is informative: a passing outage must not fail the run
        log.warning("cannot read the retained WAL through %s: %s", conn_id, type(error).__name__)
        return None
    if row is None:
        raise AirflowFailException(f"replication slot {config.source.slot_name} no longer exists: CDC cannot start "
                                   "at the snapshot on its way; export again")
    retained, wal_status, safe, active = row
    report = {"slot": config.source.slot_name, "retained_bytes": retained, "wal_status": wal_status,
              "safe_wal_size": safe, "active": active}
    log.info("replication slot %s retains %s bytes of WAL (wal_status %s, %s bytes until max_slot_wal_keep_size)",
             config.source.slot_name, retained, wal_status, "unlimited" if safe is None else safe)
    if wal_status == "lost":
        raise AirflowFailException(f"replication slot {config.source.slot_name} was invalidated (wal_status lost): "
                                   "the WAL after the snapshot is gone, so CDC cannot start at it; export again")
    if wal_status == "unreserved":
        log.warning("slot %s is past max_slot_wal_keep_size (wal_status unreserved): it is lost at the next "
                    "checkpoint unless DMS starts reading it", config.source.slot_name)
    return report


def watch_retained_wal(config: PipelineConfig, job_id: str) -> bool:
    """One look while the device travels: log the retained WAL; True once the import is over."""
    from finetune_pipeline.aws.hooks.snowball import SnowballHook

    log_retained_wal(config)
    state = SnowballHook(aws_conn_id=config.aws.conn_id, region_name=config.storage.region).get_job_state(job_id)
    log.info("Snowball job %s is %s", job_id, state)
    return state == "Complete" or state in SnowballHook.FAILED_STATES


def snowball_address(config: PipelineConfig) -> dict:
    """The shipping address in the shape of the Snowball API's ``Address``."""
    address = config.snowball.address
    shape = {
        "Name": address.name,
        "Company": address.company,
        "Street1": address.street1,
        "City": address.city,
        "StateOrProvince": address.state_or_province,
        "PostalCode": address.postal_code,
        "Country": address.country,
        "PhoneNumber": address.phone_number,
    }
    return {key: value for key, value in shape.items() if value is not None}


def copy_online(config: PipelineConfig) -> dict:
    directory = config.snowball.export_dir
    manifest = _export_manifest(config)
    return landing.upload_export(
        _s3_client(config), directory, manifest, config.storage.bucket, config.storage.landing_prefix
    )


def verify_and_publish_snapshot(config: PipelineConfig) -> ExportManifest:
    manifest = _export_manifest(config)
    client = _s3_client(config)
    try:
        landing.verify_landed(client, manifest, config.storage.bucket, config.storage.landing_prefix)
    except landing.LandingError as error:
        # The copy or the import has finished: what is missing now will not appear by retrying this check.
        raise AirflowFailException(
            f"{error}\nCopy the missing files (clear copy_online, or load them with a new import), then clear "
            "this task."
        ) from None
    key = landing.publish_snapshot_manifest(client, manifest, config.storage.bucket, config.storage.landing_prefix)
    log.info("published snapshot manifest s3://%s/%s (CDC starts after %s)",
             config.storage.bucket, key, manifest.snapshot_position)
    return manifest


# How changes are captured after the bulk copy, on both routes: the consistent export (files plus the slot's LSN
# in its manifest) is copied, by Snowball or online, and then a CDC-only task starts at that LSN. The alternative
# for the online route, DMS full-load-and-cdc straight from the source, would load the tables a second way: no
# manifest with row counts and checksums to verify the landed copy by, a full load of the whole database through
# DMS as long as the online copy itself, and a replication path the offline route never exercises. One export and
# one way into CDC keep both routes equal, and each verified the same way.
CDC_MIGRATION_TYPE = "cdc"


def cdc_start(config: PipelineConfig) -> dict:
    """Where CDC starts: DMS's CdcStartPosition and the slot, read from the published snapshot manifest."""
    bucket, key = config.storage.bucket, f"{config.storage.landing_prefix}/{landing.SNAPSHOT_MANIFEST_KEY}"
    try:
        body = _s3_client(config).get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    except ClientError as error:
        if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
            raise AirflowFailException(
                f"no snapshot published at s3://{bucket}/{key}: run finetune_bulk_transfer first"
            ) from None
        raise
    try:
        # The export creates the slot under the configured name; a manifest with another is another export's.
        slot_name = config.source.slot_name if config.source.engine == "postgres" else None
        start = parse_cdc_start(body, f"s3://{bucket}/{key}", config.source.engine, slot_name)
    except CdcStartError as error:
        raise AirflowFailException(str(error)) from None
    log.info("CDC will start at %s%s", start.position, f" from slot {start.slot_name}" if start.slot_name else "")
    return start.as_dict()


def dms_s3_settings(config: PipelineConfig) -> dict:
    """DMS S3 target settings that produce exactly the layout and columns the sync reads."""
    return dms_target.s3_target_settings(
        bucket=config.storage.bucket,
        folder=config.storage.landing_prefix,
        service_access_role_arn=config.dms.service_access_role_arn,
    )


def dms_table_mappings(config: PipelineConfig) -> dict:
    """The CDC task's table mappings: the configured tables, each with the change-sequence column."""
    return dms_target.cdc_table_mappings([(table.schema_name, table.name) for table in config.source.tables])


def triggered_dataset_version(config: PipelineConfig, triggering_asset_events, requested: str | None = None) -> str:
    """The version to train: ``requested`` (the trigger form's), else the one in the newest dataset Asset event,
    else (a manual run) the newest published one. It is opened through the dataset reader: it must be on every
    table of the dataset, or training does not start."""
    from finetune_pipeline.datasets.catalog import NoNamespaceError
    from finetune_pipeline.datasets.reader import VersionNotFound, open_version
    from finetune_pipeline.pipeline.assets import dataset_asset
    from finetune_pipeline.pipeline.catalog import open_catalog

    wanted = requested or None
    for event in reversed(list((triggering_asset_events or {}).get(dataset_asset(config), [])) if not wanted else []):
        if version := (event.extra or {}).get("version"):
            wanted = version
            break
    storage = config.storage
    hook = S3Hook(aws_conn_id=config.aws.conn_id, region_name=storage.region)
    not_yet = (f"no dataset version is published under s3://{storage.bucket}/{storage.dataset_prefix} yet: run "
               "finetune_incremental_sync first")
    try:
        spec, catalog = open_catalog(config.iceberg, hook, storage.bucket, storage.dataset_prefix)
        version = open_version(catalog, spec.namespace, wanted)
    except NoNamespaceError:
        raise AirflowFailException(not_yet) from None
    except VersionNotFound as error:
        raise AirflowFailException(not_yet if wanted is None else str(error)) from None
    origin = "asked for" if requested else "from the Asset event" if wanted else "no Asset event: the newest published"
    log.info("training on dataset version %s (%s)", version.version, origin)
    for name, table in sorted(version.tables.items()):
        log.info("%s: %d rows, snapshot %s of %s", name, table.rows, table.snapshot_id, ".".join(table.identifier))
    return version.version
