"""Fixtures for the localaws tests: shape-checked boto3 clients, DMS tasks, Snowball jobs, and clock moves
over HTTP.

The ``localaws`` server is shared by the whole session, so nothing here assumes a fresh clock or an empty
account: each test makes its own resources (unique names) and moves the clock relative to them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import uuid
from datetime import datetime

import pytest

from localaws import control

SNOWBALL_STATES = (
    "New",
    "PreparingAppliance",
    "PreparingShipment",
    "InTransitToCustomer",
    "WithCustomer",
    "InTransitToAWS",
    "WithAWSSortingFacility",
    "WithAWS",
    "InProgress",
    "Complete",
)


def check_shape(value, shape, path: str = "$", lenient_strings: bool = False) -> None:
    """
    Assert that raw JSON fits a botocore shape: no unmodelled keys, right types, enums and patterns.

    ``lenient_strings``: skip string patterns and let ``""`` through length and enum checks, for services
    whose own answers break their model there (SSM sends empty strings for unset enums, and ``PT0.094S``
    for ``ExecutionElapsedTime``, whose model reuses a date pattern).
    """
    kind = shape.type_name
    if kind == "structure":
        assert isinstance(value, dict), f"{path}: expected an object, got {value!r}"
        unknown = set(value) - set(shape.members)
        assert not unknown, f"{path}: members not in {shape.name}: {sorted(unknown)}"
        missing = set(shape.required_members) - set(value)
        assert not missing, f"{path}: required members of {shape.name} missing: {sorted(missing)}"
        for name, member in value.items():
            check_shape(member, shape.members[name], f"{path}.{name}", lenient_strings)
    elif kind == "list":
        assert isinstance(value, list), f"{path}: expected a list, got {value!r}"
        for index, item in enumerate(value):
            check_shape(item, shape.member, f"{path}[{index}]", lenient_strings)
    elif kind == "map":
        assert isinstance(value, dict), f"{path}: expected a map, got {value!r}"
    elif kind == "string":
        assert isinstance(value, str), f"{path}: expected a string, got {value!r}"
        if lenient_strings and value == "":
            return
        if shape.enum:
            assert value in shape.enum, f"{path}: {value!r} is not one of {shape.enum}"
        meta = shape.metadata
        assert meta.get("min", 0) <= len(value) <= meta.get("max", len(value)), (
            f"{path}: bad length {value!r}"
        )
        if "pattern" in meta and not lenient_strings:
            assert re.fullmatch(meta["pattern"], value), f"{path}: {value!r} does not match {meta['pattern']}"
    elif kind in ("integer", "long"):
        assert isinstance(value, int) and not isinstance(value, bool), (
            f"{path}: expected an integer, got {value!r}"
        )
    elif kind in ("double", "float"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{path}: expected a number"
    elif kind == "boolean":
        assert isinstance(value, bool), f"{path}: expected a boolean, got {value!r}"
    elif kind == "timestamp":
        # AWS JSON sends epoch seconds; moto's own DMS answers use ISO 8601, which botocore also accepts.
        if isinstance(value, str):
            datetime.fromisoformat(value)
        else:
            assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{path}: bad timestamp"
    elif kind == "blob":
        base64.b64decode(value, validate=True)


@pytest.fixture(autouse=True)
def frozen_clock(localaws):
    """Freeze virtual time for each test (tests move it explicitly), whatever speed others left behind."""
    speed = control.get_clock(localaws.endpoint_url)["speed"]
    control.set_clock_speed(localaws.endpoint_url, 0)
    yield
    control.set_clock_speed(localaws.endpoint_url, speed)


@pytest.fixture
def shape_checker():
    return check_shape


@pytest.fixture
def checked_client(boto_client):
    """A boto3 client whose every raw JSON answer is checked against the botocore model before parsing."""

    def make(
        service: str, region_name: str = "us-east-1", check_errors: bool = True, lenient_strings: bool = False
    ):
        client = boto_client(service, region_name=region_name)

        def check(operation_model, response_dict, **_):
            body = json.loads(response_dict["body"] or b"{}")
            if response_dict["status_code"] < 300:
                check_shape(body, operation_model.output_shape, operation_model.name, lenient_strings)
            elif check_errors:
                modelled = {error.name for error in operation_model.error_shapes}
                assert body["__type"] in modelled, (
                    f"{operation_model.name} raised unmodelled {body['__type']}"
                )
                check_shape(
                    {"Message": body["Message"]}, operation_model.service_model.shape_for(body["__type"])
                )

        client.meta.events.register(
            f"before-parse.{client.meta.service_model.service_id.hyphenize()}.*", check
        )
        return client

    return make


@pytest.fixture
def dms(checked_client):
    return checked_client("dms", check_errors=False)


@pytest.fixture
def dms_timing(localaws) -> dict:
    return control.get_timing(localaws.endpoint_url)["dms"]


@pytest.fixture
def make_task(dms):
    """CreateReplicationTask between fresh endpoints on a fresh instance; returns the task ARN.

    ``s3_settings`` are added to the target endpoint's (bucket ``landing``); ``table_mappings`` is the
    TableMappings document (no rules by default); ``engine`` is the source's (a MySQL server that does not exist,
    unless the test says otherwise).
    """

    def make(
        migration_type: str = "cdc",
        s3_settings: dict | None = None,
        table_mappings: dict | None = None,
        engine: str = "mysql",
        **extra,
    ) -> str:
        suffix = uuid.uuid4().hex[:10]
        instance = dms.create_replication_instance(
            ReplicationInstanceIdentifier=f"ri-{suffix}", ReplicationInstanceClass="dms.t3.medium"
        )["ReplicationInstance"]
        # A MySQL source by default: localaws replicates PostgreSQL only, so these tasks just change status.
        source = dms.create_endpoint(
            EndpointIdentifier=f"src-{suffix}",
            EndpointType="source",
            EngineName=engine,
            ServerName="db.internal",
            Port=3306 if engine == "mysql" else 5432,
            DatabaseName="appdb",
            Username="replicator",
            Password="secret",
        )["Endpoint"]
        target = dms.create_endpoint(
            EndpointIdentifier=f"tgt-{suffix}",
            EndpointType="target",
            EngineName="s3",
            S3Settings={
                "BucketName": "landing",
                "ServiceAccessRoleArn": "arn:aws:iam::123456789012:role/dms",
                **(s3_settings or {}),
            },
        )["Endpoint"]
        return dms.create_replication_task(
            ReplicationTaskIdentifier=f"task-{suffix}",
            SourceEndpointArn=source["EndpointArn"],
            TargetEndpointArn=target["EndpointArn"],
            ReplicationInstanceArn=instance["ReplicationInstanceArn"],
            MigrationType=migration_type,
            TableMappings=json.dumps(table_mappings or {"rules": []}),
            **extra,
        )["ReplicationTask"]["ReplicationTaskArn"]

    return make


@pytest.fixture
def ready_task(dms, make_task, advance, dms_timing):
    """make_task, then the clock moved until the task is ``ready``; returns the task ARN."""

    def make(migration_type: str = "cdc", **kwargs) -> str:
        arn = make_task(migration_type, **kwargs)
        advance(dms_timing["task_creating"])
        dms.get_waiter("replication_task_ready").wait(
            Filters=[{"Name": "replication-task-arn", "Values": [arn]}], WaiterConfig={"Delay": 0.01, "MaxAttempts": 3}
        )
        return arn

    return make


@pytest.fixture
def replication(dms, s3, localaws, dms_timing, source):
    """make_task from replication_helpers, on this test's source database: returns a Task. Tasks still running at
    the end are stopped, so that no replication thread outlives its test."""
    from replication_helpers import make_task

    tasks = []

    def make(**kwargs):
        tasks.append(make_task(dms, s3, localaws, dms_timing, source, **kwargs))
        return tasks[-1]

    yield make
    for task in tasks:
        with contextlib.suppress(Exception):  # deleted, or not running
            if task.status() in ("starting", "running"):
                task.stop()


@pytest.fixture
def snowball(checked_client):
    return checked_client("snowball")


@pytest.fixture
def s3(boto_client):
    return boto_client("s3")


@pytest.fixture
def advance(localaws):
    """Move the shared virtual clock forward by n seconds, over HTTP."""
    return lambda seconds: control.advance_clock(localaws.endpoint_url, seconds)


@pytest.fixture
def snowball_timing(localaws) -> dict:
    return control.get_timing(localaws.endpoint_url)["snowball"]


@pytest.fixture
def address_id(snowball) -> str:
    return snowball.create_address(
        Address={
            "Name": "Data Platform Team",
            "Company": "Example Corp",
            "Street1": "410 Terry Ave N",
            "City": "Seattle",
            "StateOrProvince": "WA",
            "PostalCode": "98109",
            "Country": "US",
            "PhoneNumber": "+1-206-555-0100",
        }
    )["AddressId"]


@pytest.fixture
def make_bucket(s3):
    def make() -> str:
        name = f"sb-target-{uuid.uuid4().hex[:12]}"
        s3.create_bucket(Bucket=name)
        return name

    return make


@pytest.fixture
def create_job(snowball, address_id):
    """CreateJob for an IMPORT into the given S3Resources; returns the JobId."""

    def create(s3_resources: list[dict], **extra) -> str:
        return snowball.create_job(
            JobType="IMPORT",
            Resources={"S3Resources": s3_resources},
            AddressId=address_id,
            RoleARN="arn:aws:iam::123456789012:role/snowball-import",
            ShippingOption="SECOND_DAY",
            SnowballType="EDGE_S",
            SnowballCapacityPreference="T98",
            **extra,
        )["JobId"]

    return create


@pytest.fixture
def advance_job_to(localaws, snowball, snowball_timing, advance):
    """Advance the clock until ``job_id`` is a little way into ``state`` (InProgress: its first seconds)."""
    durations = snowball_timing["state_seconds"]

    def go(job_id: str, state: str) -> None:
        created = snowball.describe_job(JobId=job_id)["JobMetadata"]["CreationDate"]
        now = datetime.fromisoformat(control.get_clock(localaws.endpoint_url)["now"])
        elapsed = (now - created).total_seconds()
        start = sum(durations[s] for s in SNOWBALL_STATES[: SNOWBALL_STATES.index(state)] if s in durations)
        # A little way into the state; for Complete, far past any InProgress the tests' few bytes need.
        into = 30 * 86_400 if state == "Complete" else min(durations.get(state, 2.0) / 2, 2.0)
        target = start + into
        assert target >= elapsed, f"job {job_id} is already past the start of {state}"
        advance(target - elapsed)

    return go
