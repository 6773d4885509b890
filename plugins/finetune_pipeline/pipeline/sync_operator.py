"""The incremental sync as an operator: discover, validate, merge, commit a version of the dataset's Iceberg
tables, and link the report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.providers.common.compat.sdk import BaseOperatorLink, XCom
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from botocore.exceptions import BotoCoreError, ClientError

from finetune_pipeline.aws.hooks.dms import DmsResourceHook
from finetune_pipeline.datasets import sync_defaults
from finetune_pipeline.pipeline import landing
from finetune_pipeline.pipeline.config import IcebergConfig

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import TaskInstanceKey

    from finetune_pipeline.datasets.reconcile import OutsideCounts

REPORT_URL_XCOM_KEY = "report_url"


class DatasetReportLink(BaseOperatorLink):
    """The HTML validation report of the version, shown as a button on the task: a presigned URL, so a
    browser opens it without AWS credentials (see :func:`report_url` for how long it stays valid)."""

    name = "Validation report"

    def get_link(self, operator, *, ti_key: TaskInstanceKey) -> str:
        return XCom.get_value(key=REPORT_URL_XCOM_KEY, ti_key=ti_key) or ""


def report_url(hook: S3Hook, bucket: str, key: str, expiry: timedelta = sync_defaults.REPORT_LINK_EXPIRY) -> str:
    """A presigned GetObject URL of the report, SigV4, valid for ``expiry`` (at most 7 days, SigV4's limit).

    Signed with the connection's credentials: temporary ones (an instance role, an assumed role) end the
    URL's life when they expire, which is often sooner. An unsigned object URL answers 403.

    .. seealso:: https://docs.aws.amazon.com/AmazonS3/latest/userguide/ShareObjectPreSignedURL.html
    """
    from botocore.config import Config

    client = hook.get_session().client(
        "s3",
        region_name=hook.conn_region_name,
        endpoint_url=hook.conn_config.endpoint_url or None,
        config=Config(signature_version="s3v4"),
    )
    return client.generate_presigned_url(
        "get_object",
        Params={"Bucket": bucket, "Key": key, "ResponseContentType": "text/html; charset=utf-8"},
        ExpiresIn=int(min(expiry, timedelta(days=7)).total_seconds()),
    )


class DatasetSyncOperator(AwsBaseOperator[S3Hook]):
    """
    Sync the files landed since the last watermark into a new, validated dataset version.

    Reads the snapshot position from the published snapshot manifest, runs
    :func:`finetune_pipeline.datasets.sync.run_sync` on the bucket and the Iceberg catalog, and commits the
    version (one tagged snapshot per table) only when every blocking check passes; a file quarantined under
    ``quarantine_and_stop`` fails every run until an operator releases or discards it (the error says how).
    Skips (no Asset event)
    when there is no snapshot yet or nothing new; fails without retrying when a blocking check fails or a
    table does not fit its contract, since retrying cannot fix either. An unreachable catalog fails the try
    (nothing committed), and the task's retries try again.

    :param bucket: The data bucket.
    :param landing_prefix: Where the snapshot and DMS's change files land.
    :param dataset_prefix: Where the dataset's state, reports and version records are kept (and, for the SQL
        and Glue catalogs, the warehouse of its tables).
    :param quarantine_prefix: Where bad change files are moved, with a report beside each.
    :param contracts_dir: Folder of the per-table YAML contracts.
    :param retention: How many published versions to keep.
    :param tables: Tables to sync (``schema.table``); all contracts when None (templated).
    :param full_rebuild: Rebuild from the snapshot and every change file (templated).
    :param replication_task_id: The DMS CDC task whose table statistics each table's rows are reconciled
        with; None skips that check.
    :param late_file_grace_minutes: How far behind the watermark to look again for late change files.
    :param source_count_conn_id: Airflow connection (any SQL provider) to count each table's rows in the
        source, or a replica of it; None skips that check.
    :param iceberg: The catalog settings (the config's ``iceberg`` section); its defaults when None.
    """

    aws_hook_class = S3Hook
    template_fields: Sequence[str] = aws_template_fields("tables", "full_rebuild")
    operator_extra_links = (DatasetReportLink(),)

    def __init__(
        self,
        *,
        bucket: str,
        landing_prefix: str,
        dataset_prefix: str,
        quarantine_prefix: str,
        contracts_dir: str,
        retention: int,
        tables: list[str] | str | None = None,
        full_rebuild: bool | str = False,
        replication_task_id: str | None = None,
        source_count_conn_id: str | None = None,
        late_file_grace_minutes: float = sync_defaults.LATE_FILE_GRACE / timedelta(minutes=1),
        iceberg: IcebergConfig | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bucket = bucket
        self.landing_prefix = landing_prefix
        self.dataset_prefix = dataset_prefix
        self.quarantine_prefix = quarantine_prefix
        self.contracts_dir = contracts_dir
        self.retention = retention
        self.tables = tables
        self.full_rebuild = full_rebuild
        self.replication_task_id = replication_task_id
        self.source_count_conn_id = source_count_conn_id
        self.late_file_grace_minutes = late_file_grace_minutes
        self.iceberg = iceberg or IcebergConfig()

    def execute(self, context: Context) -> dict:
        # Imported here: the data logic (pyarrow and friends) is not needed to parse the DAG.
        from finetune_pipeline.datasets.contracts import ContractError
        from finetune_pipeline.datasets.iceberg_tables import SchemaMismatchError
        from finetune_pipeline.datasets.store import S3Store
        from finetune_pipeline.datasets.sync import SyncSpec, run_sync
        from finetune_pipeline.pipeline.catalog import aws_access, catalog_spec

        client = self.hook.conn
        try:
            snapshot = landing.read_snapshot_manifest(client, self.bucket, self.landing_prefix)
        except landing.LandingError as error:
            raise AirflowSkipException(f"nothing to sync yet: {error}") from None
        spec = SyncSpec(
            landing_prefix=self.landing_prefix,
            dataset_prefix=self.dataset_prefix,
            quarantine_prefix=self.quarantine_prefix,
            contracts_dir=Path(self.contracts_dir),
            catalog=catalog_spec(self.iceberg, self.bucket, self.dataset_prefix),
            snapshot_position=snapshot.snapshot_position,
            retention=self.retention,
            orphan_file_grace=timedelta(hours=self.iceberg.orphan_file_grace_hours),
            late_file_grace=timedelta(minutes=self.late_file_grace_minutes),
        )
        full_rebuild = self.full_rebuild in (True, "True", "true")
        self.log.info("syncing %s (full rebuild: %s) after snapshot %s into the %s",
                      self.tables or "all tables", full_rebuild, snapshot.snapshot_position, spec.catalog.describe())
        try:
            result = run_sync(
                S3Store(client, self.bucket),
                spec,
                tables=self.tables or None,
                full_rebuild=full_rebuild,
                outside_counts=self._outside_counts,
                access=aws_access(self.hook),
            )
        except SchemaMismatchError as error:
            # The table in the catalog does not fit its contract: a retry meets the same table.
            raise AirflowFailException(f"{error}\nFix the contract or the table, then clear this task.") from None
        except ContractError as error:
            # A missing, empty or invalid contracts folder: a retry reads the same files.
            raise AirflowFailException(f"{error}\nFix the contracts, then clear this task.") from None

        for check in result.checks:
            if not check.passed:
                self.log.warning("%s: check %s failed (%s): %s", check.table, check.check, check.severity, check.detail)
            elif check.check.startswith("row_count"):
                self.log.info("%s: %s passed: %s", check.table, check.check, check.detail)
        for item in result.quarantined:
            self.log.warning("quarantined %s", item.to_dict())
        if html_key := result.report_keys.get("html"):
            url = report_url(self.hook, self.bucket, html_key)
            context["ti"].xcom_push(key=REPORT_URL_XCOM_KEY, value=url)
            until = datetime.now(UTC) + sync_defaults.REPORT_LINK_EXPIRY
            # The query string is a signature, not a credential; still, log the object, not the link.
            self.log.info("validation report s3://%s/%s, linked on the task (link valid until %s at most)",
                          self.bucket, html_key, until.isoformat(timespec="minutes"))

        if result.status == "blocked":
            held = [c for c in result.failed_checks
                    if c.check in ("quarantine_hold", "bad_file") and c.blocking_failure]  # fmt: skip
            waiting = (
                f"; {len(held)} file(s) quarantined under quarantine_and_stop hold every run until an operator "
                f"releases or discards them: python -m finetune_pipeline.datasets quarantine list --landing "
                f"s3://{self.bucket}/{self.landing_prefix} --dataset s3://{self.bucket}/{self.dataset_prefix} "
                f"--quarantine s3://{self.bucket}/{self.quarantine_prefix}"
                if held else ""
            )  # fmt: skip
            raise AirflowFailException(
                f"dataset not published: {len(result.failed_checks)} check(s) failed; "
                f"see the report at s3://{self.bucket}/{result.report_keys.get('html', '?')}{waiting}"
            )
        if result.status == "up_to_date":
            # Skipped, not succeeded: no dataset Asset event, so training does not start again.
            raise AirflowSkipException(f"nothing new since the last sync: {result.version} stays current")
        self.log.info("published dataset %s: %s", result.version, result.row_counts)
        for name, table in result.tables.items():
            self.log.info("%s: %s snapshot %s tagged %s", name, table["identifier"], table["snapshot_id"],
                          result.version)
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = {
                "version": result.version,
                "tag": result.version,
                "row_counts": result.row_counts,
                "tables": {
                    name: {"identifier": t["identifier"], "snapshot_id": t["snapshot_id"]}
                    for name, t in result.tables.items()
                },
            }
        return result.to_dict()

    def _outside_counts(self, tables: list[str]) -> OutsideCounts | None:
        """DMS's table statistics and source row counts; the sync asks only when something new landed."""
        from finetune_pipeline.datasets.reconcile import OutsideCounts

        if not self.replication_task_id and not self.source_count_conn_id:
            return None
        counts = OutsideCounts()
        if self.replication_task_id:
            counts = replace(counts, **self._dms_counts(self.replication_task_id))
        if self.source_count_conn_id:
            counts = replace(counts, **self._source_counts(self.source_count_conn_id, tables))
        return counts

    def _dms_counts(self, task_id: str) -> dict[str, Any]:
        hook = DmsResourceHook(
            aws_conn_id=self.aws_conn_id, region_name=self.region_name, verify=self.verify, config=self.botocore_config
        )
        try:
            task = hook.find_replication_task(task_id)
            if task is None:
                self.log.warning("DMS task %s not found in %s: rows are not reconciled with DMS this run",
                                 task_id, hook.conn_region_name)
                return {}
            if "StartDate" not in task.get("ReplicationTaskStats", {}):
                # Statistics count from the task's first start; before it, DMS has captured nothing to compare.
                self.log.warning("DMS task %s has not started yet (%s): rows are not reconciled with DMS this run",
                                 task_id, task.get("Status"))
                return {}
            entries = hook.table_statistics(task["ReplicationTaskArn"])
        except (ClientError, BotoCoreError) as error:
            # Reported as the row_count_dms check (blocking or not, as the contract says), not a crash.
            self.log.warning("DMS table statistics of task %s unavailable: %s", task_id, error)
            return {"dms_task": task_id, "dms_error": f"DMS table statistics of task {task_id} unavailable: {error}"}
        for entry in entries:
            self.log.info(
                "DMS %s.%s: %s inserts, %s updates, %s deletes captured",
                entry["SchemaName"], entry["TableName"], entry.get("Inserts", 0), entry.get("Updates", 0),
                entry.get("Deletes", 0),
            )
        from finetune_pipeline.datasets.reconcile import OutsideCounts

        return {"dms": OutsideCounts.from_dms_statistics(entries, task=task_id).dms, "dms_task": task_id}

    def _source_counts(self, conn_id: str, tables: list[str]) -> dict[str, Any]:
        from finetune_pipeline.pipeline.source_counts import SourceCountError, count_source_rows

        try:
            counted = count_source_rows(conn_id, tables)
            return {"source": counted, "source_name": conn_id, "taken_at": datetime.now(UTC)}
        except SourceCountError as error:
            # Reported as the row_count_source check (blocking or not, as the contract says), not a crash.
            self.log.warning("source row counts unavailable: %s", error)
            return {"source": {}, "source_name": conn_id, "source_error": str(error)}
