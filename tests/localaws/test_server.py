"""The localaws server: control endpoint, pass-through to moto, concurrency, and ``python -m localaws``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
from hyperpod_helpers import upload_trivial_lifecycle

from localaws import control

REPO_ROOT = Path(__file__).resolve().parents[2]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_health(localaws):
    assert _get_json(f"{localaws.endpoint_url}/_localaws/health") == {"status": "ok"}


def test_timing_profile_is_published(localaws):
    timing = control.get_timing(localaws.endpoint_url)
    assert timing["name"] == "realistic"
    assert timing["snowball"]["state_seconds"]["New"] == 3600  # AWS: UpdateJob "usually within 60 minutes"
    assert timing["dms"]["task_creating"] > 0
    assert timing["hyperpod"]["cluster_creating"] >= 600  # provisioning plus lifecycle scripts: minutes
    assert 0 < timing["ssm"]["command_pending"] < timing["ssm"]["command_in_progress"]


def test_unknown_control_path_is_404(localaws):
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{localaws.endpoint_url}/_localaws/nothing-here", timeout=10)
    assert missing.value.code == 404


def test_other_services_go_straight_to_moto(boto_client):
    s3, sqs = boto_client("s3"), boto_client("sqs")
    bucket = f"plain-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"moto")
    assert s3.get_object(Bucket=bucket, Key="a.txt")["Body"].read() == b"moto"
    queue = sqs.create_queue(QueueName=f"q-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody="hello")
    assert sqs.receive_message(QueueUrl=queue)["Messages"][0]["Body"] == "hello"


def test_many_clients_at_once(localaws, boto_client):
    s3, snowball = boto_client("s3"), boto_client("snowball")
    bucket = f"busy-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    barrier = threading.Barrier(16)

    def work(n: int) -> int:
        barrier.wait(timeout=30)  # all threads hit the server together
        s3.put_object(Bucket=bucket, Key=f"k{n}", Body=str(n).encode())
        snowball.list_jobs(MaxResults=1)
        return int(s3.get_object(Bucket=bucket, Key=f"k{n}")["Body"].read())

    with ThreadPoolExecutor(max_workers=16) as pool:
        assert sorted(pool.map(work, range(16))) == list(range(16))
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 16


def test_wait_until_healthy_times_out_on_a_closed_port():
    with pytest.raises(TimeoutError):
        control.wait_until_healthy("http://127.0.0.1:9", timeout=0.3)


@pytest.fixture
def serve_subprocess(tmp_path):
    """``python -m localaws --port 0`` in its own process; yields (process, endpoint_url)."""
    stderr = open(tmp_path / "localaws.log", "wb")  # noqa: SIM115 - closed below, after the child exits
    process = subprocess.Popen(
        [sys.executable, "-m", "localaws", "--port", "0", "--timing", "demo"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=60)
    try:
        assert lines and lines[0].startswith("localaws ready on http://127.0.0.1:"), (
            f"no ready line; stderr: {(tmp_path / 'localaws.log').read_text()[-2000:]}"
        )
        yield process, lines[0].strip().removeprefix("localaws ready on ")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        stderr.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_python_m_localaws_serves_until_signalled(serve_subprocess, signum):
    process, url = serve_subprocess
    control.wait_until_healthy(url, timeout=10)
    assert control.get_timing(url)["name"] == "demo"
    process.send_signal(signum)
    assert process.wait(timeout=20) == 0


def test_moto_reset_also_forgets_snowball_jobs_and_clusters(serve_subprocess):
    _, url = serve_subprocess
    snowball = boto3.client("snowball", region_name="us-east-1", endpoint_url=url)
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=url)
    s3.create_bucket(Bucket="reset-me")
    address = snowball.create_address(
        Address={"Name": "n", "Street1": "s", "City": "c", "Country": "US", "PostalCode": "1"}
    )["AddressId"]
    snowball.create_job(
        JobType="IMPORT",
        Resources={"S3Resources": [{"BucketArn": "arn:aws:s3:::reset-me"}]},
        AddressId=address,
        RoleARN="arn:aws:iam::123456789012:role/r",
        ShippingOption="STANDARD",
    )
    assert len(snowball.list_jobs()["JobListEntries"]) == 1
    sagemaker = boto3.client("sagemaker", region_name="us-east-1", endpoint_url=url)
    group = {
        "InstanceGroupName": "controller",
        "InstanceType": "ml.t3.medium",
        "InstanceCount": 1,
        "LifeCycleConfig": {"SourceS3Uri": "s3://sagemaker-reset/scripts", "OnCreate": "on_create.sh"},
        "ExecutionRole": "arn:aws:iam::123456789012:role/r",
    }
    upload_trivial_lifecycle(s3, "s3://sagemaker-reset/scripts")  # a cluster without its OnCreate fails
    sagemaker.create_cluster(ClusterName="reset-me", InstanceGroups=[group])
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10)
    assert snowball.list_jobs()["JobListEntries"] == []
    assert s3.list_buckets()["Buckets"] == []
    assert sagemaker.list_clusters()["ClusterSummaries"] == []
    upload_trivial_lifecycle(s3, "s3://sagemaker-reset/scripts")
    sagemaker.create_cluster(ClusterName="reset-me", InstanceGroups=[group])  # the name is free again
    assert sagemaker.describe_cluster(ClusterName="reset-me")["ClusterStatus"] == "Creating"
