"""Shared by the fault suite: the creates under test, counting what they made, and the figures table."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import boto3

from finetune_pipeline.aws.operators.snowball import job_description
from localaws import control

ROLE_ARN = "arn:aws:iam::123456789012:role/finetune-faults"
IMAGE_ID = "ami-03cf127a"  # one of the AMIs moto ships
LIFECYCLE_URI = "s3://sagemaker-ftp-lifecycle/scripts"
CONTROLLER = {"InstanceGroupName": "controller", "InstanceType": "ml.t3.medium", "InstanceCount": 1}
FAST_WAIT = {"waiter_delay": 0.05, "waiter_max_attempts": 4000}


@dataclass
class Figures:
    """One scenario's row in the figures table."""

    scenario: str
    faults_injected: int
    runs_completed: int
    runs: int
    duplicates: int
    rows_lost: int | None = None
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        rows = "n/a" if self.rows_lost is None else str(self.rows_lost)
        return (
            f"{self.scenario:<72} faults={self.faults_injected:<5} runs={self.runs_completed}/{self.runs:<3} "
            f"duplicates={self.duplicates:<3} rows_lost={rows}"
            + (f"  ({'; '.join(self.notes)})" if self.notes else "")
        )


FIGURES: list[Figures] = []


def faults_injected(endpoint_url: str) -> int:
    return sum(control.get_faults(endpoint_url)["injected"].values())


def client(endpoint_url: str, service: str, region: str = "us-east-1"):
    """A plain boto3 client for counting (botocore's default retries; faults are off when it counts)."""
    return boto3.client(service, region_name=region, endpoint_url=endpoint_url)


# Counting what a create made: every resource with the create's marker, cancelled ones included.


def addresses_named(endpoint_url: str, name: str) -> int:
    pages = client(endpoint_url, "snowball").get_paginator("describe_addresses").paginate()
    return sum(1 for page in pages for address in page.get("Addresses", []) if address.get("Name") == name)


def jobs_with_key(endpoint_url: str, key: str) -> int:
    description = job_description(key)
    pages = client(endpoint_url, "snowball").get_paginator("list_jobs").paginate()
    return sum(1 for page in pages for job in page["JobListEntries"] if job.get("Description") == description)


def clusters_named(endpoint_url: str, name: str) -> int:
    summaries = client(endpoint_url, "sagemaker").list_clusters(NameContains=name)["ClusterSummaries"]
    return sum(1 for summary in summaries if summary["ClusterName"] == name)


def job_specs(endpoint_url: str, bucket: str, job_key: str) -> int:
    """HyperPod job specs written for ``job_key`` (a second one under the key cannot exist; a failed write can
    leave none)."""
    listing = client(endpoint_url, "s3").list_objects_v2(Bucket=bucket, Prefix=f"hyperpod/jobs/{job_key}.json")
    return listing.get("KeyCount", 0)


def instances_with_token(endpoint_url: str, token: str) -> int:
    from finetune_pipeline.aws.operators.ec2 import LAUNCH_TOKEN_TAG

    pages = client(endpoint_url, "ec2").get_paginator("describe_instances").paginate(
        Filters=[{"Name": f"tag:{LAUNCH_TOKEN_TAG}", "Values": [token]}]
    )
    return sum(len(reservation["Instances"]) for page in pages for reservation in page["Reservations"])


def dms_resources(endpoint_url: str, kind: str, identifier: str) -> int:
    dms = client(endpoint_url, "dms")
    call, key, filter_name = {
        "instance": ("describe_replication_instances", "ReplicationInstances", "replication-instance-id"),
        "endpoint": ("describe_endpoints", "Endpoints", "endpoint-id"),
        "task": ("describe_replication_tasks", "ReplicationTasks", "replication-task-id"),
    }[kind]
    try:
        return len(getattr(dms, call)(Filters=[{"Name": filter_name, "Values": [identifier]}])[key])
    except dms.exceptions.ResourceNotFoundFault:
        return 0


def upload_lifecycle(endpoint_url: str) -> None:
    """An OnCreate that exits 0 at LIFECYCLE_URI: without one, localaws (as AWS) fails the cluster."""
    from hyperpod_helpers import upload_trivial_lifecycle

    upload_trivial_lifecycle(client(endpoint_url, "s3"), LIFECYCLE_URI)


def in_service_cluster(endpoint_url: str, name: str, creating_seconds: float) -> str:
    """A HyperPod cluster made straight through boto3, moved InService on the clock; returns its name."""
    upload_lifecycle(endpoint_url)
    group = {
        **CONTROLLER,
        "LifeCycleConfig": {"SourceS3Uri": LIFECYCLE_URI, "OnCreate": "on_create.sh"},
        "ExecutionRole": ROLE_ARN,
    }
    sagemaker = client(endpoint_url, "sagemaker")
    sagemaker.create_cluster(ClusterName=name, InstanceGroups=[group])
    control.advance_clock(endpoint_url, creating_seconds)
    # InService once its OnCreate has exited, which takes the real time a process takes.
    deadline = time.monotonic() + 30
    while sagemaker.describe_cluster(ClusterName=name)["ClusterStatus"] == "Creating":
        assert time.monotonic() < deadline, f"cluster {name} did not come into service"
        time.sleep(0.02)
    return name


# The creates that must happen exactly once, each as an operator run and a count of what it made.

CREATES = {
    "CreateAddress": "snowball",
    "CreateJob": "snowball",
    "CreateCluster": "sagemaker",
    "PutObject": "s3",  # the HyperPod job spec (If-None-Match: *)
    "RunInstances": "ec2",
    "CreateReplicationInstance": "dms",
    "CreateEndpoint": "dms",
    "CreateReplicationTask": "dms",
}
DMS_OPERATORS = "finetune_pipeline.aws.operators.dms"


@dataclass
class CreateCase:
    """One create step: the operator (dotted path and arguments) and how many resources it has made."""

    service: str
    operation: str
    operator: str
    arguments: dict
    count: Callable[[], int]

    def build(self):
        module, _, name = self.operator.rpartition(".")
        return getattr(importlib.import_module(module), name)(**self.arguments)


def create_case(operation: str, endpoint_url: str, unique: Callable[[str], str], ti, timing: dict) -> CreateCase:
    """The operator run whose create is ``operation``, with what it needs made beforehand (no faults yet)."""
    service = CREATES[operation]
    if operation == "CreateAddress":
        name = unique("Faults Team")
        address = {"Name": name, "Street1": "1 Main St", "City": "Seattle", "Country": "US", "PostalCode": "98101"}
        return CreateCase(service, operation, "finetune_pipeline.aws.operators.snowball.SnowballCreateAddressOperator",
                          {"task_id": "address", "address": address},
                          lambda: addresses_named(endpoint_url, name))  # fmt: skip
    if operation == "CreateJob":
        bucket = unique("faults-landing")
        client(endpoint_url, "s3").create_bucket(Bucket=bucket)
        address_id = client(endpoint_url, "snowball").create_address(
            Address={"Name": unique("Team"), "Street1": "s", "City": "c", "Country": "US", "PostalCode": "1"}
        )["AddressId"]
        key = unique("bulk")
        arguments = {"task_id": "job", "description_key": key, "bucket_arn": f"arn:aws:s3:::{bucket}",
                     "role_arn": ROLE_ARN, "address_id": address_id}  # fmt: skip
        return CreateCase(service, operation, "finetune_pipeline.aws.operators.snowball.SnowballCreateJobOperator",
                          arguments, lambda: jobs_with_key(endpoint_url, key))  # fmt: skip
    if operation == "CreateCluster":
        upload_lifecycle(endpoint_url)
        name = unique("hp")
        arguments = {"task_id": "cluster", "cluster_name": name, "instance_groups": [CONTROLLER],
                     "execution_role_arn": ROLE_ARN, "lifecycle_s3_uri": LIFECYCLE_URI,
                     "wait_for_completion": False}  # fmt: skip
        return CreateCase(service, operation,
                          "finetune_pipeline.aws.operators.sagemaker_hyperpod.HyperPodEnsureClusterOperator",
                          arguments, lambda: clusters_named(endpoint_url, name))  # fmt: skip
    if operation == "PutObject":
        cluster = in_service_cluster(endpoint_url, unique("hp"), timing["hyperpod"]["cluster_creating"])
        bucket, job_key = unique("faults-jobs"), unique("ftp-train")
        client(endpoint_url, "s3").create_bucket(Bucket=bucket)
        arguments = {"task_id": "submit", "cluster_name": cluster, "job_key": job_key,
                     "jobs_uri": f"s3://{bucket}/hyperpod", "bundle_uri": f"s3://{bucket}/code/training.zip",
                     "controller_group": "controller", "entrypoint": "train.py",
                     "wait_for_completion": False}  # fmt: skip
        return CreateCase(service, operation,
                          "finetune_pipeline.aws.operators.sagemaker_hyperpod.HyperPodSubmitJobOperator",
                          arguments, lambda: job_specs(endpoint_url, bucket, job_key))  # fmt: skip
    if service == "dms":
        return _dms_case(operation, endpoint_url, unique)
    from finetune_pipeline.aws.operators.ec2 import launch_token_base

    token = f"{launch_token_base(ti.dag_id, ti.task_id, ti.run_id, ti.map_index)}-0"
    arguments = {"task_id": "launch", "image_id": IMAGE_ID, "instance_type": "g5.2xlarge",
                 "wait_for_completion": False}  # fmt: skip
    return CreateCase(service, operation, "finetune_pipeline.aws.operators.ec2.Ec2LaunchTrainingInstancesOperator",
                      arguments, lambda: instances_with_token(endpoint_url, token))  # fmt: skip


def _dms_case(operation: str, endpoint_url: str, unique: Callable[[str], str]) -> CreateCase:
    from finetune_pipeline.datasets.dms_target import cdc_table_mappings

    name = unique("faults")
    if operation == "CreateReplicationInstance":
        return CreateCase("dms", operation, f"{DMS_OPERATORS}.DmsEnsureReplicationInstanceOperator",
                          {"task_id": "instance", "replication_instance_identifier": name,
                           "wait_for_completion": False},
                          lambda: dms_resources(endpoint_url, "instance", name))  # fmt: skip
    if operation == "CreateEndpoint":
        settings = {"BucketName": unique("faults-landing"), "ServiceAccessRoleArn": ROLE_ARN,
                    "DataFormat": "parquet", "IncludeOpForFullLoad": True, "TimestampColumnName": "_dms_ts"}
        return CreateCase("dms", operation, f"{DMS_OPERATORS}.DmsEnsureEndpointOperator",
                          {"task_id": "endpoint", "endpoint_identifier": name, "endpoint_type": "target",
                           "engine_name": "s3", "s3_settings": settings},
                          lambda: dms_resources(endpoint_url, "endpoint", name))  # fmt: skip
    dms = client(endpoint_url, "dms")
    instance = dms.create_replication_instance(
        ReplicationInstanceIdentifier=unique("ri"), ReplicationInstanceClass="dms.t3.medium"
    )["ReplicationInstance"]["ReplicationInstanceArn"]
    source = dms.create_endpoint(EndpointIdentifier=unique("s"), EndpointType="source", EngineName="postgres")
    target = dms.create_endpoint(EndpointIdentifier=unique("t"), EndpointType="target", EngineName="s3")
    arguments = {"task_id": "task", "replication_task_identifier": name, "wait_for_completion": False,
                 "table_mappings": cdc_table_mappings([("public", "tickets")]), "replication_instance_arn": instance,
                 "source_endpoint_arn": source["Endpoint"]["EndpointArn"],
                 "target_endpoint_arn": target["Endpoint"]["EndpointArn"]}
    return CreateCase("dms", operation, f"{DMS_OPERATORS}.DmsEnsureTaskOperator", arguments,
                      lambda: dms_resources(endpoint_url, "task", name))
