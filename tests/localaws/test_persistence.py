"""``--state-file``: a localaws restart keeps its AWS state, and what was moving on the clock carries on.

Each test runs ``python -m localaws`` in a process of its own, so that a restart really loses the memory.
"""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime

import boto3
import pytest
from hyperpod_helpers import upload_trivial_lifecycle, wait_for

from localaws import control
from localaws.persistence import FORMAT, RequestGate

ROLE = "arn:aws:iam::123456789012:role/persist"
GROUP = {
    "InstanceGroupName": "controller-machine",
    "InstanceType": "ml.t3.medium",
    "InstanceCount": 1,
    "LifeCycleConfig": {"SourceS3Uri": "s3://sagemaker-persist/scripts", "OnCreate": "on_create.sh"},
    "ExecutionRole": ROLE,
}


def client(server, service: str):
    return boto3.client(service, region_name="us-east-1", endpoint_url=server.url)


@pytest.fixture
def server(localaws_process, tmp_path):
    return localaws_process(
        "--timing", "demo", "--clock-speed", "0", "--state-file", str(tmp_path / "state.pickle"),
        "--state-interval", "0",
    )


def test_a_restart_keeps_every_services_state(server):
    s3, ec2, snowball = client(server, "s3"), client(server, "ec2"), client(server, "snowball")
    sagemaker, ssm, dms, iam = (client(server, name) for name in ("sagemaker", "ssm", "dms", "iam"))
    s3.create_bucket(Bucket="persisted-bucket")
    s3.put_object(Bucket="persisted-bucket", Key="a/b.txt", Body=b"kept", Metadata={"k": "v"})
    upload = s3.create_multipart_upload(Bucket="persisted-bucket", Key="big")["UploadId"]
    s3.upload_part(Bucket="persisted-bucket", Key="big", UploadId=upload, PartNumber=1, Body=b"p" * 10)
    launched = ec2.run_instances(ImageId="ami-03cf127a", MinCount=1, MaxCount=1, ClientToken="persisted-token")
    iam.create_role(RoleName="persisted-role", AssumeRolePolicyDocument="{}")
    address = snowball.create_address(
        Address={"Name": "n", "Street1": "s", "City": "c", "Country": "US", "PostalCode": "1"}
    )["AddressId"]
    job = snowball.create_job(
        JobType="IMPORT",
        Resources={"S3Resources": [{"BucketArn": "arn:aws:s3:::persisted-bucket"}]},
        AddressId=address,
        RoleARN=ROLE,
        ShippingOption="SECOND_DAY",
    )["JobId"]
    upload_trivial_lifecycle(s3, GROUP["LifeCycleConfig"]["SourceS3Uri"])
    sagemaker.create_cluster(ClusterName="persisted-cluster", InstanceGroups=[GROUP])
    command = ssm.send_command(
        InstanceIds=["i-0123456789abcdef0"], DocumentName="AWS-RunShellScript", Parameters={"commands": ["true"]}
    )["Command"]["CommandId"]
    instance = dms.create_replication_instance(
        ReplicationInstanceIdentifier="persisted-ri", ReplicationInstanceClass="dms.t3.medium"
    )["ReplicationInstance"]["ReplicationInstanceArn"]
    control.advance_clock(server.url, 3)
    before = control.get_clock(server.url)["now"]

    assert server.stop(signal.SIGTERM) == 0  # a clean stop saves the state
    server.start()

    assert control.get_clock(server.url)["now"] == before  # frozen clock: exactly where it was
    assert s3.get_object(Bucket="persisted-bucket", Key="a/b.txt")["Body"].read() == b"kept"
    assert s3.head_object(Bucket="persisted-bucket", Key="a/b.txt")["Metadata"] == {"k": "v"}
    parts = s3.list_parts(Bucket="persisted-bucket", Key="big", UploadId=upload)["Parts"]
    assert [part["PartNumber"] for part in parts] == [1]
    again = ec2.run_instances(ImageId="ami-03cf127a", MinCount=1, MaxCount=1, ClientToken="persisted-token")
    assert again["Instances"][0]["InstanceId"] == launched["Instances"][0]["InstanceId"]
    assert iam.get_role(RoleName="persisted-role")["Role"]["RoleName"] == "persisted-role"
    assert snowball.describe_address(AddressId=address)["Address"]["Name"] == "n"
    assert snowball.describe_job(JobId=job)["JobMetadata"]["JobState"] == "New"
    assert sagemaker.describe_cluster(ClusterName="persisted-cluster")["ClusterStatus"] == "Creating"
    assert ssm.list_commands(CommandId=command)["Commands"][0]["Status"] == "Pending"
    statuses = dms.describe_replication_instances()["ReplicationInstances"]
    assert [i["ReplicationInstanceStatus"] for i in statuses if i["ReplicationInstanceArn"] == instance] == [
        "creating"
    ]
    # The simulations carry on along the clock from where they were.
    control.advance_clock(server.url, 30)
    assert snowball.describe_job(JobId=job)["JobMetadata"]["JobState"] != "New"
    # After the restart the node ran OnCreate again (its process was not saved); it takes real time.
    wait_for(lambda: sagemaker.describe_cluster(ClusterName="persisted-cluster")["ClusterStatus"] == "InService",
             what="the cluster InService")
    assert ssm.list_commands(CommandId=command)["Commands"][0]["Status"] == "Success"
    statuses = dms.describe_replication_instances()["ReplicationInstances"]
    assert [i["ReplicationInstanceStatus"] for i in statuses if i["ReplicationInstanceArn"] == instance] == [
        "available"
    ]


def saved_clock(state) -> dict:
    """The clock a state file holds (in its header)."""
    with open(state, "rb") as handle:
        return pickle.load(handle)["clock"]


def test_the_clock_runs_on_while_localaws_is_down(localaws_process, tmp_path):
    state = tmp_path / "state.pickle"
    server = localaws_process("--timing", "demo", "--state-file", str(state))
    control.set_clock_speed(server.url, 100)
    server.stop()
    saved = datetime.fromisoformat(saved_clock(state)["now"])
    time.sleep(1)
    server.start()
    clock = control.get_clock(server.url)
    assert clock["speed"] == 100
    assert (datetime.fromisoformat(clock["now"]) - saved).total_seconds() >= 100


def test_snapshots_are_taken_while_requests_come_in_and_survive_a_hard_kill(localaws_process, tmp_path):
    state = tmp_path / "state.pickle"
    server = localaws_process("--state-file", str(state), "--state-interval", "0.2")
    client(server, "s3").create_bucket(Bucket="snapshotted-bucket")
    deadline = time.monotonic() + 30
    while not state.exists():
        assert time.monotonic() < deadline, "no periodic snapshot was written"
        time.sleep(0.1)
    time.sleep(0.5)  # the snapshot after the create
    server.restart(signal.SIGKILL)  # no save on the way down
    assert "snapshotted-bucket" in {b["Name"] for b in client(server, "s3").list_buckets()["Buckets"]}


def test_a_snapshot_can_be_asked_for(server, tmp_path):
    client(server, "s3").create_bucket(Bucket="asked-for")
    saved = control.save_state(server.url)
    assert saved["state_file"] == str(tmp_path / "state.pickle") and saved["bytes"] > 0
    server.restart(signal.SIGKILL)
    assert "asked-for" in {b["Name"] for b in client(server, "s3").list_buckets()["Buckets"]}


def test_snapshots_asked_for_while_the_periodic_saver_runs_all_succeed(localaws_process, tmp_path):
    server = localaws_process("--state-file", str(tmp_path / "state.pickle"), "--state-interval", "0.01")
    s3 = client(server, "s3")
    for number in range(40):  # each create is new state, so the periodic saver saves alongside every ask
        s3.create_bucket(Bucket=f"raced-{number}")
        assert control.save_state(server.url)["bytes"] > 0
    server.restart(signal.SIGKILL)
    restored = {bucket["Name"] for bucket in client(server, "s3").list_buckets()["Buckets"]}
    assert {f"raced-{number}" for number in range(40)} <= restored


def test_without_a_state_file_a_snapshot_is_refused(localaws):
    with pytest.raises(ValueError, match="409"):
        control.save_state(localaws.endpoint_url)


@pytest.mark.parametrize("content", [b"not a pickle", "foreign"])
def test_a_state_file_localaws_did_not_write_is_refused(tmp_path, content):
    state = tmp_path / "state.pickle"
    if content == "foreign":
        content = pickle.dumps({"format": FORMAT, "moto": "0.0.1", "localaws": "other", "clock": {}})
    state.write_bytes(content)
    result = subprocess.run(
        [sys.executable, "-m", "localaws", "--port", "0", "--state-file", str(state)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "Delete it to start empty" in result.stderr or "delete it to start empty" in result.stderr
    assert state.read_bytes() == content  # left for the user to look at, not overwritten


def test_a_snapshot_waits_for_requests_in_progress_and_holds_new_ones():
    gate, events = RequestGate(), []
    inside, release = threading.Event(), threading.Event()

    def request(name: str, hold: bool) -> None:
        with gate.shared():
            events.append(f"{name} in")
            if hold:
                inside.set()
                release.wait(10)
            events.append(f"{name} out")

    def snapshot() -> None:
        with gate.exclusive():
            events.append("snapshot")

    first = threading.Thread(target=request, args=("first", True))
    first.start()
    assert inside.wait(10)
    taker = threading.Thread(target=snapshot)
    taker.start()
    time.sleep(0.1)
    later = threading.Thread(target=request, args=("later", False))
    later.start()
    time.sleep(0.1)
    assert events == ["first in"]  # the snapshot waits for the first; the later request waits for it
    release.set()
    for thread in (first, taker, later):
        thread.join(10)
    assert events == ["first in", "first out", "snapshot", "later in", "later out"]


def test_control_state_without_post_is_404(localaws):
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{localaws.endpoint_url}/_localaws/state", timeout=10)
    assert missing.value.code == 404
