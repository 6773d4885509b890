"""Fault injection: AWS's failure shapes per service and operation, switched through the control endpoint."""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
import uuid

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from localaws import control

NO_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 1})
ADDRESS = {"Name": "Fault Team", "Street1": "1 Main St", "City": "Seattle", "Country": "US", "PostalCode": "98109"}


@pytest.fixture
def client(localaws):
    """A boto3 client at localaws; ``config`` defaults to no retries, so each fault reaches the test."""

    def make(service: str, config: Config | None = NO_RETRIES):
        return boto3.client(service, region_name="us-east-1", endpoint_url=localaws.endpoint_url, config=config)

    return make


def error_of(excinfo) -> tuple[str, int]:
    response = excinfo.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def bucket_name() -> str:
    return f"faults-{uuid.uuid4().hex[:12]}"


@pytest.mark.parametrize(
    ("service", "call", "code", "status"),
    [
        ("snowball", lambda c: c.list_jobs(), "ThrottlingException", 400),
        ("ssm", lambda c: c.list_commands(), "ThrottlingException", 400),
        ("sagemaker", lambda c: c.list_clusters(), "ThrottlingException", 400),
        ("dms", lambda c: c.describe_replication_tasks(), "ThrottlingException", 400),
        ("ec2", lambda c: c.describe_instances(), "RequestLimitExceeded", 503),
        ("iam", lambda c: c.list_roles(), "Throttling", 400),
        ("s3", lambda c: c.list_buckets(), "SlowDown", 503),
    ],
)
def test_throttling_has_each_protocols_shape(faults, client, service, call, code, status):
    faults({"service": service, "kind": "throttle"})
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        call(client(service))
    assert error_of(refused) == (code, status)


@pytest.mark.parametrize(
    ("service", "status", "code"),
    [
        ("snowball", 500, "InternalFailure"),
        ("snowball", 503, "ServiceUnavailable"),
        ("ec2", 500, "InternalError"),
        ("ec2", 503, "Unavailable"),
        ("s3", 500, "InternalError"),
        ("s3", 503, "ServiceUnavailable"),
    ],
)
def test_server_errors_have_each_protocols_shape(faults, client, service, status, code):
    faults({"service": service, "kind": "error", "status": status})
    call = {"snowball": "list_jobs", "ec2": "describe_instances", "s3": "list_buckets"}[service]
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        getattr(client(service), call)()
    assert error_of(refused) == (code, status)


def test_botocore_retries_every_injected_fault_in_both_modes(faults, client, localaws):
    for mode in ("legacy", "standard"):
        faults(
            {"service": "snowball", "operation": "ListJobs", "kind": "throttle", "limit": 1},
            {"service": "snowball", "operation": "ListJobs", "kind": "error", "limit": 1},
            {"service": "snowball", "operation": "ListJobs", "kind": "drop", "limit": 1},
        )
        answer = client("snowball", Config(retries={"mode": mode, "total_max_attempts": 5})).list_jobs()
        assert answer["ResponseMetadata"]["RetryAttempts"] == 3, mode
        control.clear_faults(localaws.endpoint_url)


def test_a_refused_call_never_reaches_the_service(faults, client, localaws):
    s3 = client("s3")
    faults({"service": "s3", "operation": "CreateBucket", "kind": "error"})
    bucket = bucket_name()
    with pytest.raises(botocore.exceptions.ClientError):
        s3.create_bucket(Bucket=bucket)
    control.clear_faults(localaws.endpoint_url)
    faults({"service": "s3", "operation": "CreateBucket", "kind": "drop"})
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        s3.create_bucket(Bucket=bucket)
    assert bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}


@pytest.mark.parametrize("mode", ["error", "drop"])
def test_a_lost_response_comes_after_the_change_is_committed(faults, client, mode):
    snowball = client("snowball")
    faults({"service": "snowball", "operation": "CreateAddress", "kind": "lost_response", "mode": mode})
    name = f"Lost {uuid.uuid4().hex[:8]}"
    expected = botocore.exceptions.ConnectionClosedError if mode == "drop" else botocore.exceptions.ClientError
    with pytest.raises(expected):
        snowball.create_address(Address={**ADDRESS, "Name": name})
    assert [a for a in snowball.describe_addresses()["Addresses"] if a["Name"] == name]


def test_a_lost_create_without_token_runs_twice_under_botocores_own_retry(faults, client):
    """The failure the exactly-once operators exist for: botocore re-sends a create that had committed."""
    snowball = client("snowball", config=None)  # botocore's default retries
    faults({"service": "snowball", "operation": "CreateAddress", "kind": "lost_response", "limit": 1})
    name = f"Twice {uuid.uuid4().hex[:8]}"
    snowball.create_address(Address={**ADDRESS, "Name": name})
    assert len([a for a in snowball.describe_addresses()["Addresses"] if a["Name"] == name]) == 2


def test_rules_match_their_service_and_operation_only(faults, client):
    faults({"service": "snowball", "operation": "CreateJob", "kind": "throttle"})
    client("snowball").list_jobs()
    client("s3").list_buckets()
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        client("snowball").create_job(JobType="IMPORT")
    assert error_of(refused) == ("ThrottlingException", 400)


def test_s3_operations_are_named_from_method_and_path(faults, client, localaws):
    s3 = client("s3")
    bucket = bucket_name()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a/b.txt", Body=b"x")
    s3.get_object(Bucket=bucket, Key="a/b.txt")
    s3.head_object(Bucket=bucket, Key="a/b.txt")
    s3.list_objects_v2(Bucket=bucket)
    s3.delete_object(Bucket=bucket, Key="a/b.txt")
    calls = control.get_faults(localaws.endpoint_url)["calls"]
    for operation in ("CreateBucket", "PutObject", "GetObject", "HeadObject", "ListObjectsV2", "DeleteObject"):
        assert calls.get(f"s3.{operation}") == 1, (operation, calls)


def test_a_share_of_calls_is_hit_reproducibly_from_the_seed(faults, client, localaws):
    def run() -> list[bool]:
        control.clear_faults(localaws.endpoint_url)
        faults({"service": "sagemaker", "operation": "ListClusters", "kind": "throttle", "rate": 0.3, "seed": 42})
        sagemaker, hits = client("sagemaker"), []
        for _ in range(60):
            try:
                sagemaker.list_clusters()
                hits.append(False)
            except botocore.exceptions.ClientError:
                hits.append(True)
        return hits

    first, second = run(), run()
    draws = random.Random(42)
    assert first == second == [draws.random() < 0.3 for _ in range(60)]
    (rule,) = control.get_faults(localaws.endpoint_url)["rules"]
    assert (rule["matched"], rule["injected"]) == (60, sum(first))


def test_limit_caps_the_faults_injected(faults, client):
    faults({"service": "ssm", "kind": "throttle", "limit": 2})
    ssm = client("ssm")
    for _ in range(2):
        with pytest.raises(botocore.exceptions.ClientError):
            ssm.list_commands()
    ssm.list_commands()


def test_latency_before_delays_the_call(faults, client):
    faults({"service": "sts", "kind": "latency", "seconds": 0.5, "phase": "before"})
    started = time.monotonic()
    client("sts").get_caller_identity()
    assert time.monotonic() - started >= 0.5


def test_latency_after_holds_a_committed_answer_until_cleared(faults, client, localaws):
    faults({"service": "s3", "operation": "CreateBucket", "kind": "latency", "seconds": 60})
    bucket, answered = bucket_name(), threading.Event()

    def create() -> None:
        client("s3", Config(read_timeout=120)).create_bucket(Bucket=bucket)
        answered.set()

    threading.Thread(target=create, daemon=True).start()
    deadline = time.monotonic() + 20
    while control.get_faults(localaws.endpoint_url)["injected"].get("s3.CreateBucket.latency") != 1:
        assert time.monotonic() < deadline, "the held call was never counted"
        time.sleep(0.05)
    # Counted once processed: the bucket exists while its creator still waits for the answer.
    assert bucket in {b["Name"] for b in client("s3").list_buckets()["Buckets"]}
    assert not answered.is_set()
    control.clear_faults(localaws.endpoint_url)  # wakes the held call
    assert answered.wait(10)


def test_the_view_counts_calls_and_faults_and_clear_resets_it(faults, client, localaws):
    faults({"service": "snowball", "operation": "ListJobs", "kind": "throttle", "rate": 1, "limit": 1})
    snowball = client("snowball")
    with pytest.raises(botocore.exceptions.ClientError):
        snowball.list_jobs()
    snowball.list_jobs()
    view = control.get_faults(localaws.endpoint_url)
    assert view["calls"]["snowball.ListJobs"] == 2
    assert view["injected"] == {"snowball.ListJobs.throttle": 1}
    assert view["rules"][0]["matched"] == 2 and view["rules"][0]["injected"] == 1
    final = control.clear_faults(localaws.endpoint_url)
    assert final["injected"] == {"snowball.ListJobs.throttle": 1}
    assert control.get_faults(localaws.endpoint_url) == {"rules": [], "calls": {}, "injected": {}}


def test_the_control_endpoint_is_never_faulted(faults, localaws):
    faults({"service": "*", "kind": "drop"})
    assert control.get_clock(localaws.endpoint_url)["speed"] == 0


@pytest.mark.parametrize(
    "rule",
    [
        {"kind": "explode"},
        {"kind": "throttle", "rate": 1.5},
        {"kind": "error", "status": 404},
        {"kind": "latency"},
        {"kind": "throttle", "when": "now"},
        {"kind": "lost_response", "mode": "maybe"},
        {"kind": "throttle", "service": ""},
    ],
)
def test_bad_rules_are_refused_with_a_reason(localaws, rule):
    request = urllib.request.Request(
        f"{localaws.endpoint_url}/_localaws/faults",
        data=json.dumps({"rules": [rule]}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400
    assert json.loads(refused.value.read())["error"]
    assert control.get_faults(localaws.endpoint_url)["rules"] == []
