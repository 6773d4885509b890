"""Operators for an AWS Snowball IMPORT: the shipping address, the job, and loading the delivered device."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from s3transfer.utils import ChunksizeAdjuster

from finetune_pipeline.aws.hooks.snowball import SnowballDeviceHook, SnowballHook
from finetune_pipeline.aws.utils.retries import create_once

# Every job this package creates carries this description prefix plus the caller's key, so a retry can
# find the job the first try created (CreateJob takes no client token).
JOB_DESCRIPTION_PREFIX = "finetune-pipeline:"
MIB = 1024 * 1024


def job_description(description_key: str) -> str:
    """The deterministic ``Description`` of the job for ``description_key``."""
    return f"{JOB_DESCRIPTION_PREFIX}{description_key}"


def _normalized(value: Any) -> str:
    return " ".join(str(value).split()).casefold()


class SnowballCreateAddressOperator(AwsBaseOperator[SnowballHook]):
    """
    Return the ``AddressId`` of a shipping address, creating it only if no identical one exists.

    An existing address matches when every field given here has the same value (ignoring case and
    extra whitespace), so retries and later runs reuse one address. Snowball has no ``DeleteAddress``, so
    a duplicate could never be removed: ``CreateAddress`` is sent once, and after any error the address is
    looked for again before another is sent.

    :param address: The ``Address`` shape of ``CreateAddress`` (Name, Company, Street1, City,
        StateOrProvince, PostalCode, Country, PhoneNumber, ...), templated.
    """

    aws_hook_class = SnowballHook
    template_fields: Sequence[str] = aws_template_fields("address")
    template_fields_renderers = {"address": "json"}

    def __init__(self, *, address: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.address = address

    def _matching_address(self, wanted: dict[str, str]) -> str | None:
        for existing in self.hook.describe_addresses():
            if all(_normalized(existing.get(key, "")) == value for key, value in wanted.items()):
                return existing["AddressId"]
        return None

    def execute(self, context: Context) -> str:
        wanted = {
            key: _normalized(value)
            for key, value in self.address.items()
            if key != "AddressId" and value not in (None, "")
        }
        if not wanted:
            raise AirflowFailException(
                "SnowballCreateAddressOperator needs a non-empty address (Name, Street1, ...)."
            )
        existing = self._matching_address(wanted)
        if existing:
            self.log.info("Reusing Snowball shipping address %s.", existing)
            return existing
        address_id = create_once(
            lambda: self.hook.create_address(self.address),
            lambda: self._matching_address(wanted),
            what="the Snowball shipping address",
            log=self.log,
        )
        self.log.info("Created Snowball shipping address %s.", address_id)
        return address_id


class SnowballCreateJobOperator(AwsBaseOperator[SnowballHook]):
    """
    Create an IMPORT job into an S3 bucket (``CreateJob``) and return its ``JobId``; reuse it on retries.

    The job's description is ``finetune-pipeline:<description_key>``. If a job that is not cancelled
    already has it, that job is returned instead of ordering a second device.

    ``CreateJob`` takes no client token, and a second job ships a second device, so it is sent once,
    without botocore's retries; after any error the job is looked for by its description before another
    is sent. Tries that ran at once (a zombie worker) can still have made two: then the oldest is kept and
    the others are cancelled while they are ``New`` (``CancelJob`` works only then); one past ``New``
    fails the task for a person to decide.

    :param description_key: Identifies this job across retries, e.g. ``"<project>-bulk-{{ run_id }}"``.
    :param bucket_arn: ARN of the bucket the device's data is imported into.
    :param role_arn: IAM role Snowball assumes to write the bucket.
    :param address_id: Shipping address (see ``SnowballCreateAddressOperator``).
    :param key_range: Optional ``KeyRange`` (``BeginMarker``/``EndMarker``) of the S3 resource.
    :param kms_key_arn: Optional KMS key that encrypts the job's data.
    :param shipping_option: ``SECOND_DAY`` | ``NEXT_DAY`` | ``EXPRESS`` | ``STANDARD``.
    :param snowball_type: Device type, e.g. ``EDGE_S`` (Snowball Edge Storage Optimized).
    :param capacity: ``SnowballCapacityPreference``, e.g. ``T80`` or ``NoPreference``.
    :param notification: Optional ``Notification`` (SNS topic, states to notify on).
    :param create_job_kwargs: Further ``CreateJob`` arguments, passed as they are.
    """

    aws_hook_class = SnowballHook
    template_fields: Sequence[str] = aws_template_fields(
        "description_key",
        "bucket_arn",
        "role_arn",
        "address_id",
        "key_range",
        "kms_key_arn",
        "shipping_option",
        "snowball_type",
        "capacity",
        "create_job_kwargs",
    )
    template_fields_renderers = {"key_range": "json", "create_job_kwargs": "json"}

    def __init__(
        self,
        *,
        description_key: str,
        bucket_arn: str,
        role_arn: str,
        address_id: str,
        key_range: dict[str, str] | None = None,
        kms_key_arn: str | None = None,
        shipping_option: str = "SECOND_DAY",
        snowball_type: str = "EDGE_S",
        capacity: str = "NoPreference",
        notification: dict[str, Any] | None = None,
        create_job_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.description_key = description_key
        self.bucket_arn = bucket_arn
        self.role_arn = role_arn
        self.address_id = address_id
        self.key_range = key_range
        self.kms_key_arn = kms_key_arn
        self.shipping_option = shipping_option
        self.snowball_type = snowball_type
        self.capacity = capacity
        self.notification = notification
        self.create_job_kwargs = create_job_kwargs or {}

    def _create_job_arguments(self, description: str) -> dict[str, Any]:
        s3_resource: dict[str, Any] = {"BucketArn": self.bucket_arn}
        if self.key_range:
            s3_resource["KeyRange"] = self.key_range
        arguments: dict[str, Any] = {
            "JobType": "IMPORT",
            "Resources": {"S3Resources": [s3_resource]},
            "Description": description,
            "AddressId": self.address_id,
            "RoleARN": self.role_arn,
            "SnowballCapacityPreference": self.capacity,
            "ShippingOption": self.shipping_option,
            "SnowballType": self.snowball_type,
        }
        if self.kms_key_arn:
            arguments["KmsKeyARN"] = self.kms_key_arn
        if self.notification:
            arguments["Notification"] = self.notification
        return {**arguments, **self.create_job_kwargs}

    def _live_job(self, description: str) -> str | None:
        """The one live job with ``description``: the oldest, once any later duplicates are cancelled."""
        live = self.hook.find_live_jobs_by_description(description)
        if not live:
            return None
        keep, stuck = live[0]["JobId"], []
        for duplicate in (job["JobId"] for job in live[1:]):
            try:
                self.hook.cancel_job(duplicate)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "InvalidJobStateException":
                    raise
                # Cancelled already (a retried CancelJob), or past New: only the latter is stuck.
                if self.hook.get_job_state(duplicate) not in SnowballHook.FAILED_STATES:
                    stuck.append(duplicate)
                    continue
            self.log.warning("Cancelled Snowball job %s: a duplicate of %s (%s).", duplicate, keep, description)
        if stuck:
            raise AirflowFailException(
                f"Snowball jobs {', '.join(stuck)} duplicate job {keep} ({description!r}) and can no longer be "
                "cancelled: they are past New, so a device may be on its way for each. Decide which job to "
                "keep, have the other cancelled (AWS Support), then clear this task."
            )
        return keep

    def execute(self, context: Context) -> str:
        if not self.bucket_arn.startswith("arn:"):
            raise AirflowFailException(
                f"bucket_arn must be an S3 bucket ARN (arn:aws:s3:::name), got {self.bucket_arn!r}."
            )
        description = job_description(self.description_key)
        job_id = self._live_job(description)
        if job_id is None:
            created = create_once(
                lambda: self.hook.create_job(**self._create_job_arguments(description)),
                lambda: self._live_job(description),
                what=f"the Snowball job {description!r}",
                log=self.log,
            )
            # Another try may have created one at the same moment: settle on the oldest.
            job_id = self._live_job(description) or created
            self.log.info("Created Snowball IMPORT job %s (%s) into %s.", job_id, description, self.bucket_arn)
        job = self.hook.describe_job(job_id)
        buckets = [item.get("BucketArn") for item in job.get("Resources", {}).get("S3Resources", [])]
        if self.bucket_arn not in buckets:
            raise AirflowFailException(
                f"Snowball job {job_id} already has the description {description!r} but imports into "
                f"{buckets}, not {self.bucket_arn}. Use another description_key, or cancel that job."
            )
        self.log.info("Snowball job %s (%s) is %s.", job_id, description, job["JobState"])
        return job_id


class _TransferProgress:
    """boto3 transfer callback that logs every 10% of one large file (called from transfer threads)."""

    def __init__(self, log, key: str, size: int) -> None:
        self._log, self._key, self._size = log, key, size
        self._sent = 0
        self._next_step = 10
        self._lock = threading.Lock()

    def __call__(self, bytes_amount: int) -> None:
        with self._lock:
            self._sent += bytes_amount
            percent = 100 * self._sent // self._size if self._size else 100
            if percent >= self._next_step:
                self._log.info("  %s: %d%% (%d of %d bytes)", self._key, percent, self._sent, self._size)
                self._next_step = (percent // 10 + 1) * 10


def local_s3_etag(path: Path, size: int, transfer_config: TransferConfig) -> str:
    """The ETag S3 gives ``path`` when uploaded with ``transfer_config`` (MD5, or MD5 of part MD5s)."""
    if size < transfer_config.multipart_threshold:
        digest = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(8 * MIB), b""):
                digest.update(block)
        return digest.hexdigest()
    # s3transfer adjusts the part size the same way, so the parts (and the ETag) match what it uploads.
    part_size = ChunksizeAdjuster().adjust_chunksize(transfer_config.multipart_chunksize, size)
    part_digests = []
    with path.open("rb") as handle:
        for part in iter(lambda: handle.read(part_size), b""):
            part_digests.append(hashlib.md5(part, usedforsecurity=False).digest())
    combined = hashlib.md5(b"".join(part_digests), usedforsecurity=False).hexdigest()
    return f"{combined}-{len(part_digests)}"


class SnowballLoadDeviceOperator(AwsBaseOperator[SnowballHook]):
    """
    Copy a local export folder onto a delivered Snowball device through its S3 adapter.

    Files go to ``s3://<bucket>/<key_prefix>/<relative path>`` on the device, in sorted order, and the
    manifest goes last, so a manifest on the device means the copy is complete. Objects already on the
    device with the same size and ETag are skipped, so a retry resumes where the last try stopped. Large
    files are uploaded in parts by the boto3 transfer manager. The job must be ``WithCustomer``.

    :param job_id: The Snowball job whose device is loaded (templated).
    :param source_dir: The local export folder (templated).
    :param bucket: Bucket on the device; defaults to the job's (first) S3 resource. Must be one of them.
    :param key_prefix: Key prefix on the device (templated); the layout under it is kept.
    :param device_endpoint_url: The unlocked device's S3 adapter on the local network, e.g.
        ``https://192.168.1.20:8443`` (templated: it is known only once the device is on site, so it is
        often read from a Variable).
    :param device_verify: TLS verification for the device: path to its certificate bundle, or a bool.
    :param device_aws_conn_id: Connection with the device's access key; defaults to ``aws_conn_id``.
    :param manifest_name: The manifest file in ``source_dir``; it is required and uploaded last.
    :param multipart_threshold: Files at least this big are uploaded in parts.
    :param multipart_chunksize: Part size.
    :param max_concurrency: Parallel part uploads per file.
    :return: ``{"bucket", "key_prefix", "files", "bytes", "uploaded", "skipped"}``
    """

    aws_hook_class = SnowballHook
    template_fields: Sequence[str] = aws_template_fields(
        "job_id", "source_dir", "bucket", "key_prefix", "device_endpoint_url"
    )

    def __init__(
        self,
        *,
        job_id: str,
        source_dir: str,
        bucket: str | None = None,
        key_prefix: str = "",
        device_endpoint_url: str,
        device_verify: bool | str | None = None,
        device_aws_conn_id: str | None = None,
        manifest_name: str = "manifest.json",
        multipart_threshold: int = 64 * MIB,
        multipart_chunksize: int = 64 * MIB,
        max_concurrency: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job_id = job_id
        self.source_dir = source_dir
        self.bucket = bucket
        self.key_prefix = key_prefix
        self.device_endpoint_url = device_endpoint_url
        self.device_verify = device_verify
        self.device_aws_conn_id = device_aws_conn_id
        self.manifest_name = manifest_name
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize
        self.max_concurrency = max_concurrency

    def _job_bucket(self, job: dict[str, Any]) -> str:
        buckets = [
            item["BucketArn"].split(":::", 1)[-1] for item in job.get("Resources", {}).get("S3Resources", [])
        ]
        if not buckets:
            raise ValueError(f"Snowball job {self.job_id} has no S3 resource to load data for.")
        if self.bucket is None:
            return buckets[0]
        if self.bucket not in buckets:
            raise AirflowFailException(
                f"Bucket {self.bucket!r} is not a resource of Snowball job {self.job_id} ({buckets}): "
                "data loaded there would never be imported."
            )
        return self.bucket

    def _device_endpoint(self) -> str:
        endpoint = (self.device_endpoint_url or "").strip()
        if not endpoint.startswith(("https://", "http://")):
            raise ValueError(
                f"device_endpoint_url must be the S3 adapter of the unlocked device, e.g. "
                f"https://192.168.1.20:8443; got {self.device_endpoint_url!r}."
            )
        return endpoint

    def _local_files(self) -> list[tuple[Path, str]]:
        """``(path, relative key)`` pairs, data files sorted, the manifest last."""
        root = Path(self.source_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"Export folder {root} does not exist or is not a folder.")
        manifest = root / self.manifest_name
        if not manifest.is_file():
            raise FileNotFoundError(
                f"Export folder {root} has no {self.manifest_name}: the export is incomplete, not loading it."
            )
        data = sorted(p for p in root.rglob("*") if p.is_file() and p != manifest)
        return [(path, path.relative_to(root).as_posix()) for path in [*data, manifest]]

    def _key(self, relative: str) -> str:
        prefix = self.key_prefix.strip("/")
        return f"{prefix}/{relative}" if prefix else relative

    def execute(self, context: Context) -> dict[str, Any]:
        job = self.hook.describe_job(self.job_id)
        state = job["JobState"]
        if state != "WithCustomer":
            problem = (
                f"Snowball job {self.job_id} is {state}; its device can only be loaded while the job is "
                "WithCustomer."
            )
            if state in SnowballHook.FAILED_STATES:
                raise AirflowFailException(f"{problem} Create a new job to ship another device.")
            if state in SnowballHook.states_after("WithCustomer"):
                raise AirflowFailException(
                    f"{problem} The device has left: if an earlier try finished loading it, mark this task "
                    "successful."
                )
            # Still on its way: a later try may find it delivered.
            raise RuntimeError(
                f"{problem} Wait for it with SnowballJobStateSensor(target_state='WithCustomer')."
            )
        bucket = self._job_bucket(job)
        files = self._local_files()
        device = SnowballDeviceHook(
            aws_conn_id=self.device_aws_conn_id or self.aws_conn_id,
            region_name=self.region_name,
            verify=self.verify,
            config=self.botocore_config,
            device_endpoint_url=self._device_endpoint(),
            device_verify=self.device_verify,
        )
        transfer_config = TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunksize,
            max_concurrency=self.max_concurrency,
        )
        prefix = self.key_prefix.strip("/")
        on_device = device.list_objects(bucket, f"{prefix}/" if prefix else "")
        total_bytes = sum(path.stat().st_size for path, _ in files)
        self.log.info(
            "Loading %d files (%d bytes) from %s onto Snowball job %s's device at s3://%s/%s (%d there).",
            len(files),
            total_bytes,
            self.source_dir,
            self.job_id,
            bucket,
            prefix,
            len(on_device),
        )
        done_bytes = uploaded = skipped = 0
        for number, (path, relative) in enumerate(files, start=1):
            key, size = self._key(relative), path.stat().st_size
            present = on_device.get(key)
            if (
                present
                and present["Size"] == size
                and present["ETag"] == local_s3_etag(path, size, transfer_config)
            ):
                skipped += 1
                action = "already on device"
            else:
                progress = (
                    _TransferProgress(self.log, key, size) if size >= self.multipart_threshold else None
                )
                device.upload_file(str(path), bucket, key, transfer_config, callback=progress)
                uploaded += 1
                action = "uploaded"
            done_bytes += size
            self.log.info(
                "[%d/%d files, %d/%d bytes] %s (%d bytes): %s.",
                number,
                len(files),
                done_bytes,
                total_bytes,
                key,
                size,
                action,
            )
        self.log.info("Device loaded: %d uploaded, %d already there.", uploaded, skipped)
        return {
            "bucket": bucket,
            "key_prefix": prefix,
            "files": len(files),
            "bytes": total_bytes,
            "uploaded": uploaded,
            "skipped": skipped,
        }
