"""DatasetSyncOperator on localaws: publishes a version of the dataset's Iceberg tables (SQL catalog on
SQLite, warehouse in the bucket) from landed seed files, then skips when up to date."""

from __future__ import annotations

import json
import shutil
import urllib.request
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import yaml
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from botocore.exceptions import ClientError
from landed_changes import last_commit, seed_demo, write_change_batch, write_live_batch
from source_db_helpers import wait_for

from devstack.config import TEMPLATE_PATH
from finetune_pipeline.aws.hooks.dms import DmsResourceHook
from finetune_pipeline.datasets import dms_target
from finetune_pipeline.datasets.dms_format import OP, SEQ, TS, cdc_file_name, cdc_name_time
from finetune_pipeline.datasets.reader import open_record, open_version, published_versions
from finetune_pipeline.datasets.store import S3Store
from finetune_pipeline.pipeline import landing
from finetune_pipeline.pipeline.catalog import aws_access, open_catalog
from finetune_pipeline.pipeline.export_manifest import read_manifest
from finetune_pipeline.pipeline.sync_operator import REPORT_URL_XCOM_KEY, DatasetSyncOperator
from finetune_pipeline.pipeline.tasks import dms_s3_settings, dms_table_mappings
from localaws import control

SHIPPED_CONTRACTS = TEMPLATE_PATH.parent.parent / "contracts"
# The synthetic landed files cover these two tables; ticket_messages comes from the real demo source only.
SYNTHETIC_TABLES = ("public.customers", "public.tickets")


def synthetic_contracts(folder) -> str:
    """The shipped contracts of the tables the synthetic files cover."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in SYNTHETIC_TABLES:
        shutil.copy(SHIPPED_CONTRACTS / f"{name}.yaml", folder / f"{name}.yaml")
    return str(folder)


class RecordingTaskInstance:
    def __init__(self):
        self.xcom = {}

    def xcom_push(self, key, value):
        self.xcom[key] = value


def make_context():
    return {"ti": RecordingTaskInstance(), "outlet_events": defaultdict(lambda: SimpleNamespace(extra=None))}


def make_operator(config, asset, **kwargs):
    storage = config.storage
    kwargs.setdefault("contracts_dir", synthetic_contracts(config.snowball.export_dir.parent / "contracts"))
    return DatasetSyncOperator(
        task_id="sync_dataset", bucket=storage.bucket, landing_prefix=storage.landing_prefix,
        dataset_prefix=storage.dataset_prefix, quarantine_prefix=storage.quarantine_prefix,
        retention=3, iceberg=config.iceberg, outlets=[asset], **kwargs,
    )


def catalog_of(config):
    """The dataset's catalog, opened as the operator opens it (the Airflow AWS connection's credentials)."""
    hook = S3Hook(aws_conn_id=config.aws.conn_id, region_name=config.storage.region)
    return open_catalog(config.iceberg, hook, config.storage.bucket, config.storage.dataset_prefix)


def published_of(config) -> list[str]:
    spec, catalog = catalog_of(config)
    return published_versions(catalog, spec.namespace)


@pytest.fixture
def landed(pipeline_config, localaws, boto_client, aws_conn):
    """Seed data in DMS's format: the snapshot copied to the landing prefix and its manifest published."""
    seeded = seed_demo(pipeline_config, localaws.endpoint_url, report=lambda line: None)
    s3 = boto_client("s3")
    storage = pipeline_config.storage
    manifest = read_manifest(pipeline_config.snowball.export_dir)
    landing.upload_export(s3, pipeline_config.snowball.export_dir, manifest, storage.bucket, storage.landing_prefix)
    landing.publish_snapshot_manifest(s3, manifest, storage.bucket, storage.landing_prefix)
    return SimpleNamespace(s3=s3, tables=seeded["tables"], cdc_keys=seeded["cdc_keys"])


def test_sync_skips_until_a_snapshot_is_published(pipeline_config, boto_client, aws_conn):
    boto_client("s3").create_bucket(Bucket=pipeline_config.storage.bucket)
    operator = make_operator(pipeline_config, Asset("s3://x/current"))
    with pytest.raises(AirflowSkipException, match="nothing to sync yet"):
        operator.execute(make_context())


def test_sync_publishes_then_skips_when_nothing_is_new(pipeline_config, landed):
    asset = Asset("s3://x/current")
    operator = make_operator(pipeline_config, asset)
    context = make_context()
    result = operator.execute(context)

    assert result["status"] == "published" and result["version"] == "v000001"
    assert result["row_counts"]["public.tickets"] > 0
    # The event names the tag and each table's Iceberg identifier and tagged snapshot.
    extra = context["outlet_events"][asset].extra
    assert extra["version"] == extra["tag"] == result["version"] and extra["row_counts"] == result["row_counts"]
    assert set(extra["tables"]) == {"public.customers", "public.tickets"}
    spec, catalog = catalog_of(pipeline_config)
    published = open_version(catalog, spec.namespace)
    assert published.version == result["version"] and published.row_counts == result["row_counts"]
    for name, table in extra["tables"].items():
        assert table == {"identifier": f"finetune.{name.replace('.', '__')}",
                         "snapshot_id": published.tables[name].snapshot_id}  # fmt: skip
    # The table files are in the bucket (the warehouse), and the version's record opens without the catalog.
    storage = pipeline_config.storage
    recorded = open_record(S3Store(landed.s3, storage.bucket), storage.dataset_prefix, result["version"],
                           aws_access(S3Hook(aws_conn_id="aws_default")))  # fmt: skip
    assert recorded.row_counts == result["row_counts"]
    assert all(f.startswith(f"s3://{storage.bucket}/{storage.dataset_prefix}/warehouse/") for f in recorded.files())
    # The "Validation report" link opens in a browser: presigned, so no credentials are needed.
    url = context["ti"].xcom[REPORT_URL_XCOM_KEY]
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=604800" in url
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/html")
        assert b"<html" in response.read()

    second = make_context()
    with pytest.raises(AirflowSkipException, match=f"{result['version']} stays current"):
        operator.execute(second)
    assert asset not in second["outlet_events"]


def test_each_new_batch_of_changes_publishes_a_reconciled_version(pipeline_config, landed, tmp_path):
    """The demo's live batches, synced as they land: every version holds exactly the source's rows."""
    operator = make_operator(pipeline_config, Asset("s3://x/current"),
                             contracts_dir=strict_contracts(tmp_path, tolerance=0.0))  # fmt: skip
    previous = operator.execute(make_context())
    tables, newest = landed.tables, last_commit(landed.cdc_keys)
    for batch in range(3):
        keys, tables, newest = write_live_batch(pipeline_config, landed.s3, tables, newest, seed=101 + batch)
        assert keys
        result = operator.execute(make_context())
        assert result["status"] == "published"
        assert result["previous_version"] == previous["version"] != result["version"]
        assert result["row_counts"] == {name: table.num_rows for name, table in tables.items()}
        assert all(check["passed"] for check in checks_of(result, "row_count").values())
        previous = result


# ---------------------------------------------------------------- reconciliation with DMS and the source


def checks_of(result: dict, kind: str) -> dict[str, dict]:
    return {check["table"]: check for check in result["checks"] if check["check"] == kind}


SOURCE_SCHEMA = """
CREATE TABLE customers (customer_id bigint PRIMARY KEY, name text NOT NULL, tier text, created_at timestamptz);
CREATE TABLE tickets (ticket_id bigint PRIMARY KEY, customer_id bigint NOT NULL, subject text NOT NULL, body text,
                      status text, priority integer, updated_at timestamptz);
"""


@pytest.fixture
def replicated(pipeline_config, landed, source, boto_client, localaws):
    """The seeded snapshot in a real source database, replicated by a running CDC task into the landing prefix.

    The seed's own change files are removed: what changes from here on is what the test commits in the source,
    and what localaws's DMS writes, and counts in its table statistics, from the slot made after the snapshot.
    """
    storage = pipeline_config.storage
    for key in landed.cdc_keys:
        landed.s3.delete_object(Bucket=storage.bucket, Key=key)
    source.execute(SOURCE_SCHEMA)
    with source.connect() as conn:
        for table in ("customers", "tickets"):
            load = pq.read_table(pipeline_config.snowball.export_dir / "public" / table / "LOAD00000001.parquet")
            columns = [name for name in load.column_names if name not in (OP, TS, SEQ)]
            with conn.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in load.select(columns).to_pylist():
                    copy.write_row(list(row.values()))
    lsn = source.create_slot("finetune_dms")
    dms = boto_client("dms")
    suffix = uuid.uuid4().hex[:8]
    instance = dms.create_replication_instance(
        ReplicationInstanceIdentifier=f"ri-{suffix}", ReplicationInstanceClass="dms.t3.medium"
    )["ReplicationInstance"]["ReplicationInstanceArn"]
    src = dms.create_endpoint(EndpointIdentifier=f"src-{suffix}", EndpointType="source",
                              **source.endpoint(SlotName="finetune_dms", PluginName="test-decoding"))  # fmt: skip
    tgt = dms.create_endpoint(EndpointIdentifier=f"tgt-{suffix}", EndpointType="target", EngineName="s3",
                              S3Settings=dms_s3_settings(pipeline_config))["Endpoint"]["EndpointArn"]  # fmt: skip
    task_id = f"cdc-{suffix}"
    arn = dms.create_replication_task(
        ReplicationTaskIdentifier=task_id, SourceEndpointArn=src["Endpoint"]["EndpointArn"], TargetEndpointArn=tgt,
        ReplicationInstanceArn=instance, MigrationType="cdc",
        TableMappings=json.dumps(dms_table_mappings(pipeline_config)),
    )["ReplicationTask"]["ReplicationTaskArn"]  # fmt: skip
    timing = control.get_timing(localaws.endpoint_url)["dms"]
    control.advance_clock(localaws.endpoint_url, timing["task_creating"])
    dms.start_replication_task(ReplicationTaskArn=arn, StartReplicationTaskType="start-replication",
                               CdcStartPosition=lsn)  # fmt: skip
    control.advance_clock(localaws.endpoint_url, timing["task_starting"])

    def commit(statements: str) -> None:
        """Commit in the source, then let DMS write it (CdcMaxBatchInterval passes on the virtual clock)."""
        before = sum(e["Inserts"] + e["Updates"] + e["Deletes"] for e in _statistics(dms, arn))
        source.execute(statements)
        lsn_now = source.current_lsn()
        wait_for(lambda: source.decoded_up_to(lsn_now), what="DMS to decode the commit")
        control.advance_clock(localaws.endpoint_url, dms_target.CDC_MAX_BATCH_INTERVAL_SECONDS + 1)
        wait_for(lambda: sum(e["Inserts"] + e["Updates"] + e["Deletes"] for e in _statistics(dms, arn)) > before,
                 what="DMS to write the change files")  # fmt: skip

    yield SimpleNamespace(task_id=task_id, arn=arn, commit=commit)
    dms.stop_replication_task(ReplicationTaskArn=arn)
    control.advance_clock(localaws.endpoint_url, timing["task_stopping"])


def _statistics(dms, arn: str) -> list[dict]:
    return dms.describe_table_statistics(ReplicationTaskArn=arn)["TableStatistics"]


CHANGES = """
INSERT INTO customers VALUES (100001, 'New Co', 'pro', now());
UPDATE tickets SET status = 'closed', updated_at = now() WHERE ticket_id IN (SELECT ticket_id FROM tickets LIMIT 3);
DELETE FROM tickets WHERE ticket_id = (SELECT max(ticket_id) FROM tickets);
INSERT INTO tickets VALUES (900001, 100001, 'Cannot log in', 'Since this morning', 'open', 2, now());
"""


def _move_file_back(config, s3, minutes: float = 30) -> str:
    """Rename the newest tickets change file to ``minutes`` earlier: a file that landed long after it was named
    (DMS names a file when it opens it), behind the last sync's watermark."""
    prefix = f"{config.storage.landing_prefix}/public/tickets/"
    newest = max(o["Key"] for o in s3.list_objects_v2(Bucket=config.storage.bucket, Prefix=prefix)["Contents"]
                 if not o["Key"].rsplit("/", 1)[-1].startswith("LOAD"))  # fmt: skip
    late = prefix + cdc_file_name(cdc_name_time(newest) - timedelta(minutes=minutes))
    s3.copy_object(Bucket=config.storage.bucket, Key=late, CopySource={"Bucket": config.storage.bucket, "Key": newest})
    s3.delete_object(Bucket=config.storage.bucket, Key=newest)
    return late


@pytest.fixture
def new_cdc_task(pipeline_config, boto_client, localaws):
    """A CDC task whose S3 target is the landing prefix (as the CDC DAG creates it), started or not; its id."""
    return lambda start: _create_cdc_task(pipeline_config, boto_client("dms"), localaws.endpoint_url, start)


def _create_cdc_task(pipeline_config, dms, endpoint_url: str, start: bool) -> str:
    suffix = uuid.uuid4().hex[:8]
    instance = dms.create_replication_instance(
        ReplicationInstanceIdentifier=f"ri-{suffix}", ReplicationInstanceClass="dms.t3.medium"
    )["ReplicationInstance"]["ReplicationInstanceArn"]
    source = dms.create_endpoint(
        EndpointIdentifier=f"src-{suffix}", EndpointType="source", EngineName="postgres",
        ServerName="db.internal", Port=5432, DatabaseName="appdb", Username="replicator", Password="x",
    )["Endpoint"]["EndpointArn"]  # fmt: skip
    target = dms.create_endpoint(
        EndpointIdentifier=f"tgt-{suffix}", EndpointType="target", EngineName="s3",
        S3Settings=dms_s3_settings(pipeline_config),
    )["Endpoint"]["EndpointArn"]  # fmt: skip
    task_id = f"cdc-{suffix}"
    mappings = {"rules": [{"rule-type": "selection", "rule-id": "1", "rule-name": "public",
                           "rule-action": "include", "object-locator": {"schema-name": "public", "table-name": "%"}}]}
    arn = dms.create_replication_task(
        ReplicationTaskIdentifier=task_id, SourceEndpointArn=source, TargetEndpointArn=target,
        ReplicationInstanceArn=instance, MigrationType="cdc", TableMappings=json.dumps(mappings),
    )["ReplicationTask"]["ReplicationTaskArn"]  # fmt: skip
    timing = control.get_timing(endpoint_url)["dms"]
    control.advance_clock(endpoint_url, timing["task_creating"])
    if start:
        dms.start_replication_task(ReplicationTaskArn=arn, StartReplicationTaskType="start-replication")
        control.advance_clock(endpoint_url, timing["task_starting"])
    return task_id


def strict_contracts(tmp_path, **row_count) -> str:
    """The shipped contracts with row_count settings replaced and the reconciliation checks blocking."""
    folder = tmp_path / "strict-contracts"
    synthetic_contracts(folder)
    for path in folder.glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        data["row_count"] = row_count
        data.setdefault("severity", {}).update(row_count_dms="blocking", row_count_source="blocking")
        path.write_text(yaml.safe_dump(data))
    return str(folder)


def test_rows_reconciled_with_dms_statistics_of_the_cdc_task(pipeline_config, replicated, capfd):
    replicated.commit(CHANGES)
    cdc_task = replicated.task_id
    operator = make_operator(pipeline_config, Asset("s3://x/current"), replication_task_id=cdc_task)
    result = operator.execute(make_context())

    dms_checks = checks_of(result, "row_count_dms")
    assert set(dms_checks) == {"public.customers", "public.tickets"}
    for table, check in dms_checks.items():
        assert check["passed"], check["detail"]
        assert f"{result['row_counts'][table]} rows vs {result['row_counts'][table]} from DMS task {cdc_task}" in (
            check["detail"]
        )
    # The operator logs through Airflow's structlog (stdout), which caplog does not see.
    logged = capfd.readouterr().out
    assert "DMS public.tickets:" in logged and "inserts" in logged
    assert "public.tickets: row_count_dms passed" in logged


def test_a_change_file_landing_after_the_grace_window_is_taken_and_said_so(
    pipeline_config, landed, replicated, tmp_path, capfd
):
    """DMS counted an insert whose file landed after the grace window behind the watermark: the next sync
    takes it (issue 10, item 10: it used to be skipped, and only the DMS check showed the gap), says so in
    a warning, and its rows agree with DMS's statistics."""
    cdc_task = replicated.task_id
    contracts = strict_contracts(tmp_path, tolerance=0.0)
    operator = make_operator(pipeline_config, Asset("s3://x/current"), replication_task_id=cdc_task,
                             contracts_dir=contracts)  # fmt: skip
    replicated.commit(CHANGES)
    first = operator.execute(make_context())
    assert first["status"] == "published"
    replicated.commit("INSERT INTO tickets VALUES (900002, 100001, 'Late', 'landed late', 'open', 3, now())")
    late = _move_file_back(pipeline_config, landed.s3)
    replicated.commit("UPDATE customers SET tier = 'enterprise' WHERE customer_id = 100001")

    capfd.readouterr()
    result = operator.execute(make_context())
    logged = capfd.readouterr().out
    assert result["status"] == "published"
    assert "public.tickets: check late_file failed (warning)" in logged and late in logged
    assert result["row_counts"]["public.tickets"] == first["row_counts"]["public.tickets"] + 1  # the late insert
    assert all(check["passed"] for check in checks_of(result, "row_count_dms").values())
    [warning] = [c for c in result["checks"] if c["check"] == "late_file"]
    assert warning["table"] == "public.tickets" and late in warning["detail"]

    rebuild = make_operator(pipeline_config, Asset("s3://x/current"), replication_task_id=cdc_task,
                            contracts_dir=contracts, full_rebuild=True)  # fmt: skip
    rebuilt = rebuild.execute(make_context())
    assert rebuilt["status"] == "published" and rebuilt["row_counts"] == result["row_counts"]


@pytest.fixture
def count_db(landed, monkeypatch):
    """A real PostgreSQL database holding the source tables as the seed's changes left them."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres",
                                connect_timeout=5, autocommit=True)  # fmt: skip
    except psycopg.OperationalError as error:
        pytest.skip(f"no PostgreSQL reachable at 127.0.0.1:5432: {error}")
    name = f"ftp_source_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname=name, autocommit=True) as db:
                for table, rows in landed.tables.items():
                    db.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY)")
                    db.execute(f"INSERT INTO {table} SELECT generate_series(1, {rows.num_rows})")
                monkeypatch.setenv("AIRFLOW_CONN_SOURCE_COUNTS", json.dumps(
                    {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres", "schema": name}
                ))  # fmt: skip
                yield SimpleNamespace(conn_id="source_counts", db=db)
        finally:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_rows_reconciled_with_a_count_in_the_source_database(pipeline_config, landed, count_db, tmp_path, capfd):
    source_db = count_db
    operator = make_operator(pipeline_config, Asset("s3://x/current"), source_count_conn_id=source_db.conn_id)
    result = operator.execute(make_context())
    source_checks = checks_of(result, "row_count_source")
    assert all(check["passed"] for check in source_checks.values()), source_checks
    assert "counted in the source through connection source_counts" in source_checks["public.tickets"]["detail"]

    # New changes land, but the source holds 50 tickets the change files never brought (lost events): with
    # the check blocking, nothing is published.
    _, now_tables = write_change_batch(pipeline_config, landed.s3, landed.tables, datetime.now(UTC), seed=303)
    extra = {"public.customers": 0, "public.tickets": 50}
    for table, rows in now_tables.items():
        source_db.db.execute(f"TRUNCATE {table}")
        source_db.db.execute(f"INSERT INTO {table} SELECT generate_series(1, {rows.num_rows + extra[table]})")
    strict = make_operator(pipeline_config, Asset("s3://x/current"), source_count_conn_id=source_db.conn_id,
                           contracts_dir=strict_contracts(tmp_path, tolerance=0.05))  # fmt: skip
    capfd.readouterr()
    with pytest.raises(AirflowFailException, match="dataset not published: 1 check"):
        strict.execute(make_context())
    assert "public.tickets: check row_count_source failed (blocking)" in capfd.readouterr().out


def test_an_unreachable_source_is_a_failed_check_not_a_crash(pipeline_config, landed, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SOURCE_COUNTS", json.dumps(
        {"conn_type": "postgres", "host": "127.0.0.1", "port": 1, "login": "u", "password": "s3cret-pw", "schema": "db"}
    ))  # fmt: skip
    operator = make_operator(pipeline_config, Asset("s3://x/current"), source_count_conn_id="source_counts")
    result = operator.execute(make_context())
    assert result["status"] == "published"  # row_count_source is a warning unless the contract says blocking
    detail = checks_of(result, "row_count_source")["public.tickets"]["detail"]
    assert detail.startswith("not compared:") and "source_counts" in detail and "s3cret-pw" not in detail


def test_a_missing_dms_task_skips_the_dms_check(pipeline_config, landed, capfd):
    operator = make_operator(pipeline_config, Asset("s3://x/current"), replication_task_id="no-such-task")
    result = operator.execute(make_context())
    assert result["status"] == "published" and not checks_of(result, "row_count_dms")
    assert "DMS task no-such-task not found in us-east-1" in capfd.readouterr().out


def test_a_dms_task_not_started_yet_skips_the_dms_check(pipeline_config, landed, new_cdc_task, capfd):
    task_id = new_cdc_task(start=False)
    operator = make_operator(pipeline_config, Asset("s3://x/current"), replication_task_id=task_id)
    result = operator.execute(make_context())
    assert result["status"] == "published" and not checks_of(result, "row_count_dms")
    assert f"DMS task {task_id} has not started yet (ready)" in capfd.readouterr().out


def test_a_wider_grace_window_picks_up_the_late_file(pipeline_config, landed, replicated, tmp_path):
    contracts = strict_contracts(tmp_path, tolerance=0.0)
    operator = make_operator(pipeline_config, Asset("s3://x/current"), replication_task_id=replicated.task_id,
                             contracts_dir=contracts, late_file_grace_minutes=120)  # fmt: skip
    replicated.commit(CHANGES)
    first = operator.execute(make_context())
    replicated.commit("INSERT INTO tickets VALUES (900002, 100001, 'Late', 'landed late', 'open', 3, now())")
    _move_file_back(pipeline_config, landed.s3)
    replicated.commit("UPDATE customers SET tier = 'enterprise' WHERE customer_id = 100001")

    result = operator.execute(make_context())
    assert result["status"] == "published"
    assert result["row_counts"]["public.tickets"] == first["row_counts"]["public.tickets"] + 1  # the late insert
    assert all(check["passed"] for check in checks_of(result, "row_count_dms").values())


def test_a_dms_api_error_is_a_failed_check_not_a_crash(pipeline_config, landed, replicated, monkeypatch):
    cdc_task = replicated.task_id
    replicated.commit(CHANGES)

    def denied(self, arn):
        error = {"Error": {"Code": "AccessDeniedFault", "Message": "not authorized"}}
        raise ClientError(error, "DescribeTableStatistics")

    monkeypatch.setattr(DmsResourceHook, "table_statistics", denied)
    operator = make_operator(pipeline_config, Asset("s3://x/current"), replication_task_id=cdc_task)
    result = operator.execute(make_context())
    assert result["status"] == "published"  # row_count_dms is a warning unless the contract says blocking
    check = checks_of(result, "row_count_dms")["public.tickets"]
    assert not check["passed"] and check["severity"] == "warning"
    assert check["detail"].startswith(f"not compared: DMS table statistics of task {cdc_task} unavailable")
    assert "AccessDeniedFault" in check["detail"]


# ---------------------------------------------------------------- training's version, through the reader


def test_training_opens_the_version_of_the_asset_event_or_the_newest(pipeline_config, landed):
    from finetune_pipeline.pipeline.assets import dataset_asset
    from finetune_pipeline.pipeline.tasks import triggered_dataset_version

    first = make_operator(pipeline_config, Asset("s3://x/current")).execute(make_context())
    write_live_batch(pipeline_config, landed.s3, landed.tables, last_commit(landed.cdc_keys), seed=7)
    second = make_operator(pipeline_config, Asset("s3://x/current")).execute(make_context())
    assert (first["version"], second["version"]) == ("v000001", "v000002")
    event = SimpleNamespace(extra={"version": first["version"]})
    assert triggered_dataset_version(pipeline_config, {dataset_asset(pipeline_config): [event]}) == "v000001"
    assert triggered_dataset_version(pipeline_config, {}) == "v000002"
    missing = SimpleNamespace(extra={"version": "v000009"})
    with pytest.raises(AirflowFailException, match="no dataset version v000009"):
        triggered_dataset_version(pipeline_config, {dataset_asset(pipeline_config): [missing]})


def test_an_empty_contracts_folder_fails_without_publishing(pipeline_config, landed, tmp_path):
    empty = tmp_path / "no-contracts"
    empty.mkdir()
    operator = make_operator(pipeline_config, Asset("s3://x/current"), contracts_dir=str(empty))
    with pytest.raises(AirflowFailException, match="no contracts"):
        operator.execute(make_context())
    storage = pipeline_config.storage
    listed = landed.s3.list_objects_v2(Bucket=storage.bucket, Prefix=f"{storage.dataset_prefix}/")
    assert listed.get("KeyCount", 0) == 0  # nothing published, nothing written
