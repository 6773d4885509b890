"""Fixtures for the AWS layer's tests: resources in localaws, the virtual clock, and running triggers."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import botocore.session
import pytest
from iam_policy import missing_from_policy, recorded_calls

from localaws.control import advance_clock as _advance_clock
from localaws.control import get_timing, set_clock_speed

# Snowball jobs move one state per several virtual hours; stepping 6 hours never skips WithCustomer (7 days).
JOB_STEP_SECONDS = 6 * 3600
ROLE_ARN = "arn:aws:iam::123456789012:role/finetune-test"


# Parts of the AWS layer no DAG of the pipeline uses, so the runner policy rightly does not grant their calls:
# SSM Run Command (HyperPod jobs travel through S3, see operators/sagemaker_hyperpod.py).
OUTSIDE_THE_PIPELINE = frozenset({"test_ssm.py"})


@pytest.fixture(autouse=True)
def _every_call_is_in_the_runner_policy(request):
    """Each call the AWS layer's code sends in a test is an action the runner policy allows (iam_policy)."""
    if request.node.path.name in OUTSIDE_THE_PIPELINE:
        yield
        return
    with recorded_calls(only_the_package=True) as calls:
        yield
    assert not missing_from_policy(calls), f"include/iam/airflow-runner-policy.json lacks {missing_from_policy(calls)}"


@pytest.fixture(scope="package", autouse=True)
def _parse_service_models_once():
    """
    Share one botocore data loader between sessions, so each service model is parsed once per test run.

    Every hook builds its own boto3 session, and each new session re-reads the service's JSON model
    (about a second for EC2 or SageMaker). Sharing the loader only caches those reads: requests, clients
    and credentials are unchanged. Test speed only.
    """
    original = botocore.session.create_loader
    loaders: dict = {}

    def shared_loader(search_path_string=None):
        if search_path_string not in loaders:
            loaders[search_path_string] = original(search_path_string)
        return loaders[search_path_string]

    botocore.session.create_loader = shared_loader
    yield
    botocore.session.create_loader = original


@pytest.fixture(autouse=True)
def _aws_default_is_localaws(aws_conn):
    """Every test here talks to localaws through ``aws_default``; none may fall back to real AWS."""
    return aws_conn


@pytest.fixture
def advance_clock(localaws):
    """Jump localaws' virtual clock forward: ``advance_clock(seconds)``."""

    def advance(seconds: float) -> None:
        _advance_clock(localaws.endpoint_url, seconds)

    return advance


@pytest.fixture(scope="session")
def timing(localaws) -> dict:
    """localaws' timing profile: how many virtual seconds each simulated state lasts."""
    return get_timing(localaws.endpoint_url)


@pytest.fixture
def fast_clock(localaws):
    """Run the virtual clock ``speed`` times real time until the test ends: ``fast_clock(1000)``.

    For blocking (non-deferrable) waits, which cannot advance the clock themselves while they poll.
    """

    def speed_up(speed: float) -> None:
        set_clock_speed(localaws.endpoint_url, speed)

    yield speed_up
    set_clock_speed(localaws.endpoint_url, 1.0)


@pytest.fixture
def unique():
    """Short unique names, so tests sharing one localaws never collide: ``unique("job")``."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def bucket(aws_conn, boto_client, unique) -> str:
    name = unique("ftp-test")
    boto_client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture
def address_id(aws_conn, boto_client, unique) -> str:
    address = {
        "Name": unique("Data Team"),
        "Street1": "410 Terry Ave N",
        "City": "Seattle",
        "StateOrProvince": "WA",
        "PostalCode": "98109",
        "Country": "US",
        "PhoneNumber": "+1-206-555-0100",
    }
    return boto_client("snowball").create_address(Address=address)["AddressId"]


@pytest.fixture
def snowball_job(boto_client, bucket, address_id, unique):
    """Create an IMPORT job straight through boto3 (not through the code under test); returns its ID."""

    def create(description: str | None = None) -> str:
        return boto_client("snowball").create_job(
            JobType="IMPORT",
            Resources={"S3Resources": [{"BucketArn": f"arn:aws:s3:::{bucket}"}]},
            Description=description or unique("test-job"),
            AddressId=address_id,
            RoleARN=ROLE_ARN,
            SnowballCapacityPreference="T80",
            ShippingOption="SECOND_DAY",
            SnowballType="EDGE_S",
        )["JobId"]

    return create


@pytest.fixture
def advance_job_to(boto_client, advance_clock):
    """Advance the virtual clock until the job is in ``state``; returns the number of steps taken."""

    def advance(job_id: str, state: str, max_steps: int = 200) -> int:
        client = boto_client("snowball")
        for step in range(max_steps):
            if client.describe_job(JobId=job_id)["JobMetadata"]["JobState"] == state:
                return step
            advance_clock(JOB_STEP_SECONDS)
        raise AssertionError(f"job {job_id} did not reach {state} in {max_steps} steps")

    return advance


@pytest.fixture
def context(unique):
    """The slice of a task context our operators read: the task instance's identity."""
    ti = SimpleNamespace(dag_id="test_dag", task_id="test_task", run_id=unique("manual"), map_index=-1)
    return {"ti": ti}
