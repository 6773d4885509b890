"""Snowball addresses and IMPORT jobs, with the job state machine driven by the virtual clock.

moto has no Snowball backend, so this one is hand-written against botocore's ``snowball`` service model.
A job's state is never stored: it is derived from the virtual clock whenever a request looks at it, which
is why no background thread is needed. The rules that AWS documents are kept: ``CancelJob`` only before
``PreparingAppliance``, ``UpdateJob`` only while ``New``, and the manifest and unlock code only while the
device is ``WithCustomer``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import string
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from localaws.clock import VirtualClock
from localaws.snowball import storage
from localaws.timing import SnowballTiming

log = logging.getLogger(__name__)

IMPORT_STATES = (
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
TIMED_STATES = IMPORT_STATES[:8]  # fixed durations; InProgress depends on the data, Complete is terminal
MANIFEST_TTL = timedelta(minutes=60)  # AWS: "You can access the manifest file for up to 60 minutes"

# CreateJob members that DescribeJob hands back unchanged in JobMetadata.
ECHOED_JOB_FIELDS = (
    "JobType",
    "Resources",
    "Description",
    "KmsKeyARN",
    "RoleARN",
    "AddressId",
    "SnowballType",
    "SnowballCapacityPreference",
    "Notification",
    "ForwardingAddressId",
    "TaxDocuments",
    "DeviceConfiguration",
    "RemoteManagement",
    "LongTermPricingId",
    "OnDeviceServiceConfiguration",
    "ImpactLevel",
    "PickupDetails",
)
UPDATABLE_JOB_FIELDS = (
    "RoleARN",
    "Notification",
    "Resources",
    "OnDeviceServiceConfiguration",
    "AddressId",
    "ShippingOption",
    "Description",
    "SnowballCapacityPreference",
    "ForwardingAddressId",
    "PickupDetails",
)
REQUIRED_ADDRESS_FIELDS = ("Name", "Street1", "City", "Country", "PostalCode")


class SnowballError(Exception):
    """An error that the Snowball API returns as a modelled exception (``__type`` = ``code``)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Address:
    address_id: str
    fields: dict

    def to_dict(self) -> dict:
        return {**self.fields, "AddressId": self.address_id}


@dataclass
class Job:
    job_id: str
    account_id: str
    region: str
    created_at: datetime
    timing: SnowballTiming
    fields: dict
    unlock_code: str
    tracking_numbers: tuple[str, str]
    cancelled: bool = False
    # (bytes, objects) on the device, read once the device has left the customer and can no longer change.
    device_totals: tuple[int, int] | None = None
    imported: bool = False
    import_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def s3_resources(self) -> list[dict]:
        return self.fields.get("Resources", {}).get("S3Resources", [])

    @property
    def buckets(self) -> list[str]:
        return sorted({bucket_from_arn(resource["BucketArn"]) for resource in self.s3_resources})

    def allows_key(self, bucket: str, key: str) -> bool:
        """Whether ``key`` lies inside one of the job's S3Resources for ``bucket`` (UTF-8 binary order)."""
        raw = key.encode()
        for resource in self.s3_resources:
            if bucket_from_arn(resource["BucketArn"]) != bucket:
                continue
            key_range = resource.get("KeyRange") or {}
            begin, end = key_range.get("BeginMarker"), key_range.get("EndMarker")
            if (begin is None or raw >= begin.encode()) and (end is None or raw <= end.encode()):
                return True
        return False

    def elapsed(self, now: datetime) -> float:
        return (now - self.created_at).total_seconds()

    def device_returned_after(self) -> float:
        """Seconds after creation at which the device leaves the customer."""
        return sum(
            self.timing.state_seconds[s] for s in TIMED_STATES[: TIMED_STATES.index("WithCustomer") + 1]
        )

    def state_at(self, now: datetime) -> tuple[str, float]:
        """The job state at ``now`` and how far through it the job is (0..1)."""
        if self.cancelled:
            return "Cancelled", 1.0
        elapsed, start = self.elapsed(now), 0.0
        for state in TIMED_STATES:
            duration = self.timing.state_seconds[state]
            if elapsed < start + duration:
                return state, (elapsed - start) / duration
            start += duration
        if self.device_totals is None:
            raise RuntimeError(f"device totals of {self.job_id} must be read before it reaches InProgress")
        duration = self.timing.in_progress_seconds(self.device_totals[0])
        if elapsed < start + duration:
            return "InProgress", (elapsed - start) / duration
        return "Complete", 1.0


class SnowballBackend:
    """In-memory Snowball addresses and jobs, per account and region."""

    def __init__(self, clock: VirtualClock, timing: SnowballTiming):
        self.clock = clock
        self.timing = timing
        self._lock = threading.RLock()
        self._addresses: dict[tuple[str, str], dict[str, Address]] = {}
        self._jobs: dict[tuple[str, str], dict[str, Job]] = {}
        self._manifest_key = secrets.token_bytes(32)

    def reset(self) -> None:
        with self._lock:
            self._addresses.clear()
            self._jobs.clear()

    # Addresses

    def create_address(self, account_id: str, region: str, address: dict) -> Address:
        missing = [name for name in REQUIRED_ADDRESS_FIELDS if not address.get(name)]
        if missing:
            raise SnowballError("InvalidAddressException", f"The address is missing {', '.join(missing)}.")
        created = Address(f"ADID{uuid.uuid4()}", {k: v for k, v in address.items() if k != "AddressId"})
        with self._lock:
            self._addresses.setdefault((account_id, region), {})[created.address_id] = created
        return created

    def get_address(self, account_id: str, region: str, address_id: str) -> Address:
        with self._lock:
            address = self._addresses.get((account_id, region), {}).get(address_id)
        if address is None:
            raise SnowballError("InvalidResourceException", f"The address {address_id} can't be found.")
        return address

    def list_addresses(self, account_id: str, region: str) -> list[Address]:
        with self._lock:
            return list(self._addresses.get((account_id, region), {}).values())

    # Jobs

    def create_job(self, account_id: str, region: str, params: dict) -> Job:
        if params.get("ClusterId"):
            raise SnowballError(
                "InvalidResourceException", f"The cluster {params['ClusterId']} can't be found."
            )
        job_type = params.get("JobType")
        if job_type != "IMPORT":
            raise SnowballError(
                "InvalidInputCombinationException",
                f"JobType {job_type!r} is not supported here: localaws simulates IMPORT jobs only.",
            )
        missing = [
            name for name in ("Resources", "AddressId", "RoleARN", "ShippingOption") if not params.get(name)
        ]
        if missing:
            raise SnowballError("InvalidInputCombinationException", f"CreateJob needs {', '.join(missing)}.")
        self._check_job_references(account_id, region, params)
        fields = {name: params[name] for name in (*ECHOED_JOB_FIELDS, "ShippingOption") if name in params}
        fields.setdefault("SnowballType", "STANDARD")
        fields.setdefault("SnowballCapacityPreference", "NoPreference")
        job = Job(
            job_id=f"JID{uuid.uuid4()}",
            account_id=account_id,
            region=region,
            created_at=self.clock.now(),
            timing=self.timing,
            fields=fields,
            unlock_code="-".join(_random_text(5) for _ in range(5)),
            tracking_numbers=(_random_digits(12), _random_digits(12)),
        )
        with self._lock:
            self._jobs.setdefault((account_id, region), {})[job.job_id] = job
        log.info("Snowball job %s created for buckets %s", job.job_id, job.buckets)
        return job

    def get_job(self, account_id: str, region: str, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get((account_id, region), {}).get(job_id)
        if job is None:
            raise SnowballError("InvalidResourceException", f"The job {job_id} can't be found.")
        return job

    def find_job(self, job_id: str) -> Job | None:
        """The job with this id in any account or region (the device adapter knows only the id)."""
        with self._lock:
            return next((jobs[job_id] for jobs in self._jobs.values() if job_id in jobs), None)

    def list_jobs(self, account_id: str, region: str) -> list[Job]:
        with self._lock:
            return list(self._jobs.get((account_id, region), {}).values())

    def state(self, job: Job) -> tuple[str, float]:
        """The job's current state; reads the device's totals the first time it is back from the customer."""
        now = self.clock.now()
        with self._lock:
            if (
                job.device_totals is None
                and not job.cancelled
                and job.elapsed(now) >= job.device_returned_after()
            ):
                job.device_totals = storage.device_totals(job.job_id, job.region, job.buckets)
            return job.state_at(now)

    def update_job(self, account_id: str, region: str, params: dict) -> None:
        job = self.get_job(account_id, region, params["JobId"])
        with self._lock:
            self._require_state(job, "New", "UpdateJob")
            self._check_job_references(account_id, region, params)
            job.fields.update({name: params[name] for name in UPDATABLE_JOB_FIELDS if name in params})

    def cancel_job(self, account_id: str, region: str, job_id: str) -> None:
        job = self.get_job(account_id, region, job_id)
        with self._lock:
            # AWS: "You can only cancel a job before its JobState value changes to PreparingAppliance."
            self._require_state(job, "New", "CancelJob")
            job.cancelled = True
        log.info("Snowball job %s cancelled", job_id)

    def unlock_code(self, account_id: str, region: str, job_id: str) -> str:
        job = self.get_job(account_id, region, job_id)
        self._require_state(job, "WithCustomer", "GetJobUnlockCode")
        return job.unlock_code

    def manifest_query(self, account_id: str, region: str, job_id: str) -> str:
        """The query string of a presigned-style manifest URL, valid for 60 virtual minutes."""
        job = self.get_job(account_id, region, job_id)
        self._require_state(job, "WithCustomer", "GetJobManifest")
        issued = self.clock.now().strftime("%Y%m%dT%H%M%SZ")
        signature = self._manifest_signature(job_id, issued)
        return (
            f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date={issued}"
            f"&X-Amz-Expires={int(MANIFEST_TTL.total_seconds())}&X-Amz-Signature={signature}"
        )

    def manifest(self, job_id: str, issued: str, signature: str) -> bytes:
        """The manifest bytes behind a URL from :meth:`manifest_query`, if it is genuine and unexpired."""
        job = self.find_job(job_id)
        if job is None or not hmac.compare_digest(signature, self._manifest_signature(job_id, issued)):
            raise SnowballError("AccessDenied", "The manifest URL is not valid.")
        issued_at = datetime.strptime(issued, "%Y%m%dT%H%M%SZ").replace(tzinfo=job.created_at.tzinfo)
        if self.clock.now() > issued_at + MANIFEST_TTL:
            raise SnowballError("AccessDenied", "Request has expired")
        # Stands in for AWS's encrypted manifest: opaque bytes, bound to the job and its unlock code.
        digest = hashlib.sha256(f"{job.job_id}:{job.unlock_code}".encode()).digest()
        return (
            b"LOCALAWS-SNOWBALL-MANIFEST\n" + base64.b64encode(job.job_id.encode() + b"\n" + digest) + b"\n"
        )

    def tick(self) -> None:
        """Import every job that has reached Complete and has not been imported yet (exactly once)."""
        with self._lock:
            pending = [
                job
                for jobs in self._jobs.values()
                for job in jobs.values()
                if not job.imported and not job.cancelled
            ]
        for job in pending:
            if self.state(job)[0] != "Complete":
                continue
            with job.import_lock:
                if job.imported:
                    continue
                try:
                    storage.import_device(job.job_id, job.account_id, job.region, job.buckets)
                except Exception:
                    # Never fail the unrelated request that happened to notice; the next request retries.
                    log.exception("Snowball job %s: import failed", job.job_id)
                    continue
                job.imported = True

    def _require_state(self, job: Job, expected: str, operation: str) -> None:
        state = self.state(job)[0]
        if state != expected:
            raise SnowballError(
                "InvalidJobStateException",
                f"{operation} is only allowed while the job's JobState is {expected}; "
                f"job {job.job_id} is {state}.",
            )

    def _check_job_references(self, account_id: str, region: str, params: dict) -> None:
        for name in ("AddressId", "ForwardingAddressId"):
            if params.get(name):
                self.get_address(account_id, region, params[name])
        if "Resources" not in params:
            return
        resources = params["Resources"].get("S3Resources") or []
        if not resources:
            raise SnowballError(
                "InvalidInputCombinationException", "An IMPORT job needs at least one S3Resource."
            )
        for resource in resources:
            bucket = bucket_from_arn(resource.get("BucketArn", ""))
            if not storage.bucket_exists(account_id, region, bucket):
                raise SnowballError("InvalidResourceException", f"The bucket {bucket!r} can't be found.")
            key_range = resource.get("KeyRange") or {}
            begin, end = key_range.get("BeginMarker"), key_range.get("EndMarker")
            if begin is not None and end is not None and begin.encode() > end.encode():
                raise SnowballError(
                    "InvalidInputCombinationException",
                    f"KeyRange of {bucket}: BeginMarker {begin!r} sorts after EndMarker {end!r}.",
                )

    def _manifest_signature(self, job_id: str, issued: str) -> str:
        return hmac.new(self._manifest_key, f"{job_id}\n{issued}".encode(), hashlib.sha256).hexdigest()


def bucket_from_arn(arn: str) -> str:
    """``arn:aws:s3:::name`` -> ``name``."""
    prefix, sep, name = arn.partition(":::")
    if not sep or not prefix.startswith("arn:aws") or not prefix.endswith(":s3") or not name or "/" in name:
        raise SnowballError("InvalidResourceException", f"{arn!r} is not an S3 bucket ARN.")
    return name


def _random_text(length: int) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(length))


def _random_digits(length: int) -> str:
    return "".join(secrets.choice(string.digits) for _ in range(length))
