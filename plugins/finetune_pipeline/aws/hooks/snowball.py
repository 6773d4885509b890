"""AWS Snowball: the job API (``boto3.client("snowball")``) and the S3 adapter of a delivered device."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from airflow.sdk.log import mask_secret
from botocore.config import Config

from finetune_pipeline.aws.utils.retries import SingleAttemptClientMixin
from finetune_pipeline.aws.waiters import waiter_file


class SnowballHook(SingleAttemptClientMixin, AwsBaseHook):
    """
    Interact with AWS Snowball jobs; a thin wrapper around ``boto3.client("snowball")``.

    ``CreateAddress`` and ``CreateJob`` take no client token, so they are sent once, without botocore's
    retries: a retry after a lost answer would order a second device. Callers look for what they meant to
    create before trying again (``finetune_pipeline.aws.utils.retries.create_once``).

    Additional arguments (such as ``aws_conn_id``) are passed down to ``AwsBaseHook``.

    .. seealso::
        https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/snowball.html
    """

    # The order an IMPORT job moves through (``JobState`` in the service model).
    IMPORT_JOB_STATES: tuple[str, ...] = (
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
    FAILED_STATES = frozenset({"Cancelled"})
    # The states a job can be waited for; each has a waiter in waiters/snowball.json.
    WAITABLE_STATES: dict[str, str] = {"WithCustomer": "job_with_customer", "Complete": "job_complete"}

    def __init__(self, *args, **kwargs) -> None:
        kwargs["client_type"] = "snowball"
        super().__init__(*args, **kwargs)

    @cached_property
    def waiter_path(self) -> Path:
        return waiter_file("snowball")

    @classmethod
    def states_after(cls, state: str) -> frozenset[str]:
        """IMPORT job states that come after ``state``: a job in one of them has already passed it."""
        return frozenset(cls.IMPORT_JOB_STATES[cls.IMPORT_JOB_STATES.index(state) + 1 :])

    def create_address(self, address: dict[str, Any]) -> str:
        """
        Create a shipping address; return its ``AddressId``. Sent once, without botocore's retries.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/snowball/client/create_address.html
        """
        return self.single_attempt_conn.create_address(Address=address)["AddressId"]

    def describe_address(self, address_id: str) -> dict[str, Any]:
        """
        Describe one shipping address.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/snowball/client/describe_address.html
        """
        return self.conn.describe_address(AddressId=address_id)["Address"]

    def describe_addresses(self) -> list[dict[str, Any]]:
        """
        List every shipping address of the account (all pages).

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/snowball/client/describe_addresses.html
        """
        paginator = self.conn.get_paginator("describe_addresses")
        return [address for page in paginator.paginate() for address in page.get("Addresses", [])]

    def create_job(self, **kwargs: Any) -> str:
        """
        Create a job from ``CreateJob`` keyword arguments; return its ``JobId``. Sent once, without
        botocore's retries.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/snowball/client/create_job.html
        """
        return self.single_attempt_conn.create_job(**kwargs)["JobId"]

    def describe_job(self, job_id: str) -> dict[str, Any]:
        """
        Return the job's ``JobMetadata`` (state, resources, transfer progress).

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/snowball/client/describe_job.html
        """
        return self.conn.describe_job(JobId=job_id)["JobMetadata"]

    def get_job_state(self, job_id: str) -> str:
        """Return the job's ``JobState``."""
        return self.describe_job(job_id)["JobState"]

    def list_jobs(self) -> list[dict[str, Any]]:
        """
        List every job of the account (all pages) as ``JobListEntry`` dicts.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/snowball/client/list_jobs.html
        """
        paginator = self.conn.get_paginator("list_jobs")
        return [job for page in paginator.paginate() for job in page.get("JobListEntries", [])]

    def update_job(self, job_id: str, **kwargs: Any) -> None:
        """
        Update a job that has not shipped yet.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/snowball/client/update_job.html
        """
        self.conn.update_job(JobId=job_id, **kwargs)

    def cancel_job(self, job_id: str) -> None:
        """
        Cancel a job that has not shipped yet.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/snowball/client/cancel_job.html
        """
        self.conn.cancel_job(JobId=job_id)

    def get_job_manifest(self, job_id: str) -> str:
        """
        Return the presigned URL of the job's manifest file (needed to unlock the device).

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/snowball/client/get_job_manifest.html
        """
        url = self.conn.get_job_manifest(JobId=job_id)["ManifestURI"]
        # The presigned URL is a credential for the manifest: keep it out of the task logs.
        mask_secret(url)
        return url

    def get_job_unlock_code(self, job_id: str) -> str:
        """
        Return the job's unlock code (masked in logs: with the manifest it unlocks the device).

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/snowball/client/get_job_unlock_code.html
        """
        code = self.conn.get_job_unlock_code(JobId=job_id)["UnlockCode"]
        mask_secret(code)
        return code

    def find_jobs_by_description(self, description: str) -> list[dict[str, Any]]:
        """
        Return the ``JobListEntry`` of every job whose description is exactly ``description``.

        ``CreateJob`` has no client token, so operators give each job a deterministic description and
        look for it before creating another.
        """
        return [job for job in self.list_jobs() if job.get("Description") == description]

    def find_live_jobs_by_description(self, description: str) -> list[dict[str, Any]]:
        """The jobs with this description that are not cancelled, oldest first (``CreationDate``, then ID)."""
        live = [
            job
            for job in self.find_jobs_by_description(description)
            if job.get("JobState") not in self.FAILED_STATES
        ]
        return sorted(live, key=lambda job: (job["CreationDate"], job["JobId"]))


class SnowballDeviceHook(AwsBaseHook):
    """
    The S3 API of a Snowball device's S3 adapter: a ``boto3.client("s3")`` at the device's own endpoint.

    The adapter is reached on the local network at ``device_endpoint_url``, with
    path-style addressing. Its credentials come from the Airflow connection ``aws_conn_id`` (on a real
    device: the access key that ``snowballEdge list-access-keys`` shows).

    :param device_endpoint_url: URL of the device's S3 adapter, e.g. ``https://192.168.1.20:8443``.
    :param device_verify: TLS verification for the device (a path to its certificate bundle, or a bool);
        ``None`` uses the connection's setting.
    """

    def __init__(self, *args, device_endpoint_url: str, device_verify: bool | str | None = None, **kwargs):
        kwargs["client_type"] = "s3"
        super().__init__(*args, **kwargs)
        self.device_endpoint_url = device_endpoint_url
        self.device_verify = device_verify

    @cached_property
    def conn(self):
        """A boto3 S3 client at the device's endpoint (not the account's S3 endpoint)."""
        config = self.config.merge(Config(s3={"addressing_style": "path"}))
        return self.get_session(region_name=self.region_name).client(
            "s3",
            endpoint_url=self.device_endpoint_url,
            config=self._get_config(config),
            verify=self.verify if self.device_verify is None else self.device_verify,
        )

    def list_objects(self, bucket: str, prefix: str) -> dict[str, dict[str, Any]]:
        """
        Return ``{key: {"Size": ..., "ETag": ...}}`` for every object under ``prefix`` (all pages).

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/s3/client/list_objects_v2.html
        """
        paginator = self.conn.get_paginator("list_objects_v2")
        objects: dict[str, dict[str, Any]] = {}
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                objects[item["Key"]] = {"Size": item["Size"], "ETag": item["ETag"].strip('"')}
        return objects

    def upload_file(self, path: str, bucket: str, key: str, transfer_config, callback=None) -> None:
        """
        Upload one file with the boto3 transfer manager (multipart above the configured threshold).

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/s3/client/upload_file.html
        """
        self.conn.upload_file(
            Filename=path, Bucket=bucket, Key=key, Config=transfer_config, Callback=callback
        )
