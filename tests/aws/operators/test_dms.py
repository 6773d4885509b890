from __future__ import annotations

import json
import logging

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred

from finetune_pipeline.aws.hooks.dms import DmsResourceHook
from finetune_pipeline.aws.operators.dms import (
    DmsEnsureEndpointOperator,
    DmsEnsureReplicationInstanceOperator,
    DmsEnsureTaskOperator,
    DmsStartTaskAtPositionOperator,
)
from finetune_pipeline.aws.triggers.dms import DmsReplicationInstanceAvailableTrigger, DmsTaskStatusTrigger
from finetune_pipeline.datasets.dms_target import cdc_table_mappings

ROLE_ARN = "arn:aws:iam::123456789012:role/finetune-dms-s3"
# The pipeline's own mappings (datasets.dms_target): the operator takes them as the provider's take theirs.
TABLE_MAPPINGS = cdc_table_mappings([("public", "customers"), ("public", "tickets")])
FAST = {"waiter_delay": 0.01, "waiter_max_attempts": 2000}


@pytest.fixture
def hook(aws_conn) -> DmsResourceHook:
    return DmsResourceHook(aws_conn_id=aws_conn)


# DmsEnsureReplicationInstanceOperator


def test_ensure_instance_creates_once_and_waits(hook, context, unique, fast_clock):
    identifier = unique("ri")
    operator = DmsEnsureReplicationInstanceOperator(
        task_id="ri",
        replication_instance_identifier=identifier,
        allocated_storage=50,
        deferrable=False,
        tags={"project": "ftp"},
        **FAST,
    )
    fast_clock(3000)  # creating takes 600 virtual seconds: 0.2 s while the worker blocks on the waiter
    arn = operator.execute(context)
    assert operator.execute(context) == arn  # a retry finds it, now available, and returns at once
    instances = hook.describe_replication_instances(
        [{"Name": "replication-instance-id", "Values": [identifier]}]
    )
    assert [(i["ReplicationInstanceArn"], i["ReplicationInstanceStatus"]) for i in instances] == [
        (arn, "available")
    ]
    assert instances[0]["AllocatedStorage"] == 50


def test_ensure_instance_defers_until_available(hook, context, unique, advance_clock, run_trigger):
    operator = DmsEnsureReplicationInstanceOperator(
        task_id="ri", replication_instance_identifier=unique("ri"), deferrable=True, **FAST
    )
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, DmsReplicationInstanceAvailableTrigger)
    event = run_trigger(trigger, during=lambda: advance_clock(900))
    arn = operator.execute_complete(context, event)
    assert arn == trigger.serialize()[1]["replication_instance_arn"]
    with pytest.raises(AirflowException, match="Waiting for DMS replication instance .* failed: boom"):
        operator.execute_complete(context, {"status": "error", "message": "boom"})


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        ("failed", AirflowFailException, r"is failed and will not become available by itself\. Fix"),
        ("deleting", RuntimeError, "is deleting; wait until it is gone, then retry"),
    ],
)
def test_ensure_instance_in_a_dead_end(context, unique, monkeypatch, status, error, message):
    operator = DmsEnsureReplicationInstanceOperator(
        task_id="ri", replication_instance_identifier=unique("ri"), wait_for_completion=False
    )
    operator.execute(context)
    # localaws never fails or deletes an instance: the description is real, only its status is AWS's.
    found = operator.hook.find_replication_instance(operator.replication_instance_identifier)
    monkeypatch.setattr(
        operator.hook, "find_replication_instance", lambda _: {**found, "ReplicationInstanceStatus": status}
    )
    with pytest.raises(error, match=message):
        operator.execute(context)


# DmsEnsureEndpointOperator


def s3_target(identifier: str, **overrides) -> DmsEnsureEndpointOperator:
    settings = {
        "BucketName": "landing-bucket",
        "BucketFolder": "landing",
        "ServiceAccessRoleArn": ROLE_ARN,
        "CdcPath": "cdc",
        "DataFormat": "parquet",
        "IncludeOpForFullLoad": True,
        "TimestampColumnName": "_dms_ts",
        **overrides,
    }
    return DmsEnsureEndpointOperator(
        task_id="target",
        endpoint_identifier=identifier,
        endpoint_type="target",
        engine_name="s3",
        s3_settings=settings,
    )


def test_ensure_s3_target_creates_once_with_the_settings_given(hook, context, unique):
    identifier = unique("s3")
    arn = s3_target(identifier).execute(context)
    assert s3_target(identifier).execute(context) == arn
    endpoints = hook.describe_endpoints([{"Name": "endpoint-id", "Values": [identifier]}])
    assert [e["EndpointArn"] for e in endpoints] == [arn]
    settings = endpoints[0]["S3Settings"]
    assert settings["BucketName"] == "landing-bucket" and settings["CdcPath"] == "cdc"
    assert (settings["DataFormat"], settings["IncludeOpForFullLoad"], settings["TimestampColumnName"]) == (
        "parquet",
        True,
        "_dms_ts",
    )


def test_ensure_s3_target_refuses_an_endpoint_with_another_bucket(context, unique):
    identifier = unique("s3")
    s3_target(identifier).execute(context)
    with pytest.raises(
        AirflowFailException,
        match=r"already exists but differs: BucketName='landing-bucket' \(wanted 'other'\)",
    ):
        s3_target(identifier, BucketName="other").execute(context)


def test_ensure_s3_target_needs_bucket_and_role(context, unique):
    operator = DmsEnsureEndpointOperator(
        task_id="t",
        endpoint_identifier=unique("s3"),
        endpoint_type="target",
        engine_name="s3",
        s3_settings={"BucketName": "b"},
    )
    with pytest.raises(ValueError, match="s3_settings needs ServiceAccessRoleArn"):
        operator.execute(context)


@pytest.fixture
def source_conn(monkeypatch) -> str:
    conn = {
        "conn_type": "postgres",
        "host": "db.internal",
        "port": 6543,
        "login": "replicator",
        "password": "s3cr3t-Pa55",
        "schema": "appdb",
    }
    monkeypatch.setenv("AIRFLOW_CONN_SOURCE_DB", json.dumps(conn))
    return "source_db"


def test_ensure_postgres_source_reads_the_connection_and_never_logs_the_password(
    hook, source_conn, context, unique, capsys, caplog
):
    identifier = unique("src")
    operator = DmsEnsureEndpointOperator(
        task_id="source",
        endpoint_identifier=identifier,
        endpoint_type="source",
        engine_name="postgres",
        source_conn_id=source_conn,
        engine_settings={"SlotName": "ftp_slot"},
    )
    arn = operator.execute(context)
    assert operator.execute(context) == arn
    endpoint = hook.find_endpoint(identifier)
    assert (endpoint["ServerName"], endpoint["Port"], endpoint["Username"], endpoint["DatabaseName"]) == (
        "db.internal",
        6543,
        "replicator",
        "appdb",
    )
    assert endpoint["PostgreSQLSettings"] == {"SlotName": "ftp_slot"}
    assert "s3cr3t-Pa55" not in arn
    assert "s3cr3t-Pa55" not in capsys.readouterr().out + caplog.text
    assert not any("s3cr3t" in str(value) for value in vars(operator).values())


def postgres_source(identifier: str, conn_id: str, **overrides) -> DmsEnsureEndpointOperator:
    arguments = {
        "task_id": "source",
        "endpoint_identifier": identifier,
        "endpoint_type": "source",
        "engine_name": "postgres",
        "source_conn_id": conn_id,
        "slot_name": "finetune_dms",
        "plugin_name": "test-decoding",
        "heartbeat_enable": True,
        "heartbeat_frequency": 5,
    }
    return DmsEnsureEndpointOperator(**{**arguments, **overrides})


def test_a_postgres_source_names_its_slot_plugin_heartbeat_and_the_connections_ssl_mode(
    hook, monkeypatch, context, unique
):
    conn = {"conn_type": "postgres", "host": "db.internal", "login": "replicator", "password": "pw",
            "schema": "appdb", "extra": {"sslmode": "verify-full"}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_SSL_DB", json.dumps(conn))
    identifier = unique("src")
    postgres_source(identifier, "ssl_db").execute(context)
    endpoint = hook.find_endpoint(identifier)
    assert endpoint["PostgreSQLSettings"] == {
        "SlotName": "finetune_dms",
        "PluginName": "test-decoding",
        "HeartbeatEnable": True,
        "HeartbeatFrequency": 5,
    }
    assert (endpoint["SslMode"], endpoint["Port"]) == ("verify-full", 5432)


@pytest.mark.parametrize(("sslmode", "dms_mode"), [("disable", "none"), ("prefer", "require"), ("require", "require")])
def test_libpq_ssl_modes_map_to_dms_ones(monkeypatch, sslmode, dms_mode):
    monkeypatch.setenv("AIRFLOW_CONN_SSL_DB", json.dumps({"conn_type": "postgres", "extra": {"sslmode": sslmode}}))
    operator = postgres_source("x", "ssl_db")
    assert operator._ssl_mode(operator._source_connection()) == dms_mode


def test_drifted_source_settings_are_set_back(hook, source_conn, context, unique, capsys):
    identifier = unique("src")
    arn = postgres_source(identifier, source_conn).execute(context)
    hook.modify_endpoint(EndpointArn=arn, PostgreSQLSettings={"SlotName": "someone_elses", "HeartbeatEnable": False})
    assert postgres_source(identifier, source_conn).execute(context) == arn
    settings = hook.find_endpoint(identifier)["PostgreSQLSettings"]
    assert (settings["SlotName"], settings["HeartbeatEnable"]) == ("finetune_dms", True)
    assert "HeartbeatEnable, SlotName set back" in capsys.readouterr().out


def test_the_source_password_goes_through_secrets_manager_when_configured(
    hook, source_conn, context, unique, boto_client
):
    identifier, name = unique("src"), unique("dms/source")
    secret_role = "arn:aws:iam::123456789012:role/dms-secrets"
    operator = postgres_source(identifier, source_conn, secrets_manager_secret_id=name,
                               secrets_manager_access_role_arn=secret_role, create_secret_from_connection=True)
    arn = operator.execute(context)
    secrets = boto_client("secretsmanager")
    stored = json.loads(secrets.get_secret_value(SecretId=name)["SecretString"])
    assert stored == {"username": "replicator", "password": "s3cr3t-Pa55", "port": 6543, "host": "db.internal"}
    endpoint = hook.find_endpoint(identifier)
    assert endpoint["PostgreSQLSettings"]["SecretsManagerSecretId"] == secrets.describe_secret(SecretId=name)["ARN"]
    assert endpoint["PostgreSQLSettings"]["SecretsManagerAccessRoleArn"] == secret_role
    assert "ServerName" not in endpoint and "Username" not in endpoint  # one set of credentials, not both
    # A retry reuses the endpoint and the secret; an existing secret is never overwritten (it may be rotating).
    secrets.put_secret_value(SecretId=name, SecretString=json.dumps({**stored, "password": "rotated"}))
    assert postgres_source(identifier, source_conn, secrets_manager_secret_id=name,
                           secrets_manager_access_role_arn=secret_role,
                           create_secret_from_connection=True).execute(context) == arn  # fmt: skip
    assert json.loads(secrets.get_secret_value(SecretId=name)["SecretString"])["password"] == "rotated"


def test_a_missing_secret_is_a_clear_failure_unless_it_may_be_created(source_conn, context, unique):
    operator = postgres_source(unique("src"), source_conn, secrets_manager_secret_id=unique("missing"),
                               secrets_manager_access_role_arn="arn:aws:iam::123456789012:role/r")  # fmt: skip
    with pytest.raises(AirflowFailException, match="does not exist. Create it with the keys username, password"):
        operator.execute(context)


def test_the_password_never_reaches_a_log_even_with_botocore_at_debug(
    hook, source_conn, context, unique, caplog, capsys
):
    """botocore logs each request's body at DEBUG; the calls that carry a password log it redacted."""
    caplog.set_level(logging.DEBUG)
    for name in ("botocore", "urllib3"):
        caplog.set_level(logging.DEBUG, logger=name)
    plain = postgres_source(unique("src"), source_conn)
    plain.execute(context)
    secret = postgres_source(unique("src"), source_conn, secrets_manager_secret_id=unique("dms/source"),
                             secrets_manager_access_role_arn="arn:aws:iam::123456789012:role/r",
                             create_secret_from_connection=True)  # fmt: skip
    secret.execute(context)
    logged = caplog.text + capsys.readouterr().out
    assert "Making request for OperationModel(name=CreateEndpoint)" in logged  # DEBUG was on
    assert "Making request for OperationModel(name=CreateSecret)" in logged
    assert "<redacted" in logged
    assert "s3cr3t-Pa55" not in logged


def test_ensure_source_refuses_an_endpoint_on_another_server(source_conn, monkeypatch, context, unique):
    identifier = unique("src")
    arguments = {
        "task_id": "s",
        "endpoint_identifier": identifier,
        "endpoint_type": "source",
        "engine_name": "postgres",
        "source_conn_id": source_conn,
    }
    DmsEnsureEndpointOperator(**arguments).execute(context)
    moved = {
        "conn_type": "postgres",
        "host": "db2.internal",
        "login": "replicator",
        "password": "p",
        "schema": "appdb",
    }
    monkeypatch.setenv("AIRFLOW_CONN_SOURCE_DB", json.dumps(moved))
    with pytest.raises(AirflowFailException, match=r"ServerName='db.internal' \(wanted 'db2.internal'\)"):
        DmsEnsureEndpointOperator(**arguments).execute(context)


def test_ensure_source_reports_what_the_connection_lacks(monkeypatch, context, unique):
    monkeypatch.setenv(
        "AIRFLOW_CONN_BROKEN_DB", json.dumps({"conn_type": "postgres", "host": "db", "login": "u"})
    )
    operator = DmsEnsureEndpointOperator(
        task_id="s",
        endpoint_identifier=unique("src"),
        endpoint_type="source",
        engine_name="postgres",
        source_conn_id="broken_db",
    )
    with pytest.raises(AirflowFailException, match="'broken_db' lacks password, database"):
        operator.execute(context)


@pytest.mark.parametrize(
    ("endpoint_type", "engine", "message"),
    [
        ("target", "postgres", "can only be a source"),
        ("source", "oracle", "engine 'oracle' is not supported"),
        ("both", "s3", "endpoint_type must be"),
    ],
)
def test_ensure_endpoint_rejects_unsupported_kinds(context, unique, endpoint_type, engine, message):
    operator = DmsEnsureEndpointOperator(
        task_id="e",
        endpoint_identifier=unique("e"),
        endpoint_type=endpoint_type,
        engine_name=engine,
        source_conn_id="unused",
    )
    with pytest.raises(ValueError, match=message):
        operator.execute(context)


# DmsEnsureTaskOperator and DmsStartTaskAtPositionOperator


@pytest.fixture
def pieces(aws_conn, boto_client, unique) -> dict:
    """A replication instance and both endpoints, made straight through boto3."""
    dms = boto_client("dms")
    instance = dms.create_replication_instance(
        ReplicationInstanceIdentifier=unique("ri"), ReplicationInstanceClass="dms.t3.medium"
    )["ReplicationInstance"]["ReplicationInstanceArn"]
    source = dms.create_endpoint(EndpointIdentifier=unique("s"), EndpointType="source", EngineName="postgres")
    target = dms.create_endpoint(EndpointIdentifier=unique("t"), EndpointType="target", EngineName="s3")
    return {
        "replication_instance_arn": instance,
        "source_endpoint_arn": source["Endpoint"]["EndpointArn"],
        "target_endpoint_arn": target["Endpoint"]["EndpointArn"],
    }


def ensure_task(identifier: str, pieces: dict, **overrides) -> DmsEnsureTaskOperator:
    arguments = {
        "task_id": "task",
        "replication_task_identifier": identifier,
        "table_mappings": TABLE_MAPPINGS,
        **pieces,
        **FAST,
    }
    return DmsEnsureTaskOperator(**{**arguments, **overrides})


def test_ensure_task_creates_once_and_waits_until_ready(hook, pieces, context, unique, fast_clock):
    identifier = unique("cdc")
    fast_clock(600)  # creating takes 60 virtual seconds
    arn = ensure_task(identifier, pieces, deferrable=False).execute(context)
    assert ensure_task(identifier, pieces, deferrable=False).execute(context) == arn
    _, tasks = hook.describe_replication_tasks(
        Filters=[{"Name": "replication-task-id", "Values": [identifier]}], WithoutSettings=False
    )
    assert [(t["ReplicationTaskArn"], t["Status"], t["MigrationType"]) for t in tasks] == [
        (arn, "ready", "cdc")
    ]
    assert json.loads(tasks[0]["TableMappings"]) == TABLE_MAPPINGS


def test_ensure_task_defers_and_a_retry_reuses_the_task(
    hook, pieces, context, unique, advance_clock, run_trigger
):
    identifier = unique("cdc")
    operator = ensure_task(identifier, pieces, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, DmsTaskStatusTrigger) and trigger.waiter_name == "replication_task_ready"
    # The worker dies here; the retry finds the task still creating and defers on it again.
    with pytest.raises(TaskDeferred) as retried:
        ensure_task(identifier, pieces, deferrable=True).execute(context)
    assert retried.value.trigger.serialize() == trigger.serialize()
    event = run_trigger(trigger, during=lambda: advance_clock(120))
    arn = operator.execute_complete(context, event)
    _, tasks = hook.describe_replication_tasks(
        Filters=[{"Name": "replication-task-id", "Values": [identifier]}]
    )
    assert [t["ReplicationTaskArn"] for t in tasks] == [arn]


def test_ensure_task_refuses_a_task_with_other_tables(pieces, context, unique):
    identifier = unique("cdc")
    ensure_task(identifier, pieces, wait_for_completion=False).execute(context)
    with pytest.raises(
        AirflowFailException, match=f"{identifier} already exists with a different TableMappings"
    ):
        other_tables = cdc_table_mappings([("public", "customers")])
        ensure_task(identifier, pieces, table_mappings=other_tables, wait_for_completion=False).execute(context)


def test_ensure_task_execute_complete_raises_on_failure(pieces, context):
    with pytest.raises(AirflowException, match="Waiting for DMS replication task cdc-x failed: it failed"):
        ensure_task("cdc-x", pieces).execute_complete(context, {"status": "error", "message": "it failed"})


@pytest.fixture
def ready_task(pieces, context, unique, advance_clock) -> str:
    arn = ensure_task(unique("cdc"), pieces, wait_for_completion=False).execute(context)
    advance_clock(120)
    return arn


LSN = "0/1AF7CB8"


def start_task(arn: str, **overrides) -> DmsStartTaskAtPositionOperator:
    arguments = {"task_id": "start", "replication_task_arn": arn, "cdc_start_position": LSN}
    return DmsStartTaskAtPositionOperator(**{**arguments, **FAST, **overrides})


@pytest.fixture
def starts(hook, monkeypatch) -> list[dict]:
    """Every StartReplicationTask the operators make, with its arguments (they still reach localaws)."""
    calls: list[dict] = []
    original = DmsResourceHook.start_replication_task

    def recording(self, replication_task_arn, start_replication_task_type, **kwargs):
        calls.append({"type": start_replication_task_type, **kwargs})
        return original(self, replication_task_arn, start_replication_task_type, **kwargs)

    monkeypatch.setattr(DmsResourceHook, "start_replication_task", recording)
    return calls


def test_start_at_position_defers_then_a_retry_reuses_the_running_task(
    hook, ready_task, context, advance_clock, run_trigger, capsys, starts
):
    operator = start_task(ready_task, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    assert deferred.value.trigger.waiter_name == "replication_task_running"
    task = hook.get_task_description(ready_task)
    assert (task["Status"], task["CdcStartPosition"]) == ("starting", LSN)
    assert starts == [{"type": "start-replication", "CdcStartPosition": LSN}]  # a first start: at the position
    event = run_trigger(deferred.value.trigger, during=lambda: advance_clock(120))
    assert operator.execute_complete(context, event) == ready_task
    # A retry (e.g. the worker died after the trigger fired) finds it running and does not start it again.
    assert start_task(ready_task, deferrable=True).execute(context) == ready_task
    assert "is already running; not starting it again" in capsys.readouterr().out
    assert hook.get_task_description(ready_task)["Status"] == "running"
    assert len(starts) == 1


def test_start_at_position_waits_in_the_worker(hook, ready_task, context, fast_clock):
    fast_clock(600)  # starting takes 60 virtual seconds
    assert start_task(ready_task, deferrable=False).execute(context) == ready_task
    assert hook.get_task_status(ready_task) == "running"


def _stop(hook, arn: str, advance_clock) -> None:
    hook.stop_replication_task(replication_task_arn=arn)
    advance_clock(60)
    assert hook.get_task_status(arn) == "stopped"


def test_a_stopped_task_resumes_where_it_stopped(hook, ready_task, context, advance_clock, starts, fast_clock):
    fast_clock(600)
    start_task(ready_task, deferrable=False).execute(context)
    _stop(hook, ready_task, advance_clock)
    assert start_task(ready_task, deferrable=False).execute(context) == ready_task
    assert [call["type"] for call in starts] == ["start-replication", "resume-processing"]
    assert "CdcStartPosition" not in starts[1]  # DMS resumes from the task's recovery checkpoint


@pytest.mark.parametrize("reload_target", ["True", True])
def test_reload_restarts_a_cdc_task_at_the_position_stopping_it_first(
    hook, ready_task, context, starts, fast_clock, reload_target
):
    fast_clock(600)
    start_task(ready_task, deferrable=False).execute(context)
    assert start_task(ready_task, deferrable=False, reload_target=reload_target).execute(context) == ready_task
    # A CDC-only task reloads by starting again at the position (DMS: "For a cdc only task, to start from a
    # specific position, you must use start-replication").
    assert starts[-1] == {"type": "start-replication", "CdcStartPosition": LSN}
    assert hook.get_task_status(ready_task) == "running"


def test_reload_of_a_full_load_and_cdc_task_is_reload_target(
    hook, pieces, context, unique, advance_clock, starts, fast_clock
):
    arn = ensure_task(unique("flc"), pieces, migration_type="full-load-and-cdc", wait_for_completion=False).execute(
        context
    )
    advance_clock(120)
    fast_clock(600)
    start_task(arn, deferrable=False).execute(context)
    _stop(hook, arn, advance_clock)
    start_task(arn, deferrable=False, reload_target="true").execute(context)
    assert [call["type"] for call in starts] == ["start-replication", "reload-target"]


def test_reload_deferred_stops_then_starts(hook, ready_task, context, advance_clock, run_trigger, fast_clock):
    fast_clock(600)
    start_task(ready_task, deferrable=False).execute(context)
    fast_clock(0)
    operator = start_task(ready_task, deferrable=True, reload_target=True)
    with pytest.raises(TaskDeferred) as stopping:
        operator.execute(context)
    assert stopping.value.trigger.waiter_name == "replication_task_stopped"
    assert stopping.value.method_name == "execute_after_stop"
    event = run_trigger(stopping.value.trigger, during=lambda: advance_clock(60))
    with pytest.raises(TaskDeferred) as starting:
        operator.execute_after_stop(context, event)
    assert starting.value.trigger.waiter_name == "replication_task_running"


def test_start_at_position_refuses_a_task_being_created(pieces, context, unique):
    arn = ensure_task(unique("cdc"), pieces, wait_for_completion=False).execute(context)
    with pytest.raises(
        RuntimeError, match=f"{arn} is creating; it can be started only when failed, ready, stopped"
    ):
        start_task(arn).execute(context)


def test_a_first_start_needs_a_position_and_a_task(ready_task, context):
    with pytest.raises(AirflowFailException, match="cdc_start_position is empty"):
        start_task(ready_task, cdc_start_position="").execute(context)
    with pytest.raises(AirflowFailException, match="task:NOPE does not exist"):
        start_task("arn:aws:dms:us-east-1:123456789012:task:NOPE").execute(context)


def test_a_time_start_position_is_refused_for_a_postgresql_source(ready_task, context):
    # DMS: "PostgreSQL as a source doesn't support a custom CDC start time" (localaws refuses it the same way).
    with pytest.raises(Exception, match="PostgreSQL as a source doesn't support a custom CDC start time"):
        start_task(ready_task, cdc_start_position="2026-01-31T12:00:00").execute(context)


def test_reload_target_must_be_a_boolean(ready_task):
    with pytest.raises(ValueError, match="reload_target must be true or false"):
        _ = start_task(ready_task, reload_target="maybe").reloading


def test_start_at_position_execute_complete_raises_on_failure(context):
    with pytest.raises(AirflowException, match="Starting DMS replication task arn:t failed: stopped"):
        start_task("arn:t").execute_complete(context, {"status": "error", "message": "stopped"})
