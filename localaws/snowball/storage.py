"""Where a simulated Snowball device keeps its objects, and the import that copies them into S3.

Each (job, target bucket) pair gets a hidden moto bucket in a separate moto account, so a device's
contents never show up in the customer's ``ListBuckets``. The device's S3 adapter forwards requests
there; the import reads them back from moto's S3 backend in-process and writes the target buckets.
"""

from __future__ import annotations

import hashlib
import logging
import threading

from moto.s3.exceptions import MissingBucket
from moto.s3.models import s3_backends
from moto.utilities.utils import get_partition

log = logging.getLogger(__name__)

# An account of its own for device contents: no customer request is ever made in it.
DEVICE_ACCOUNT_ID = "000000000000"

_create_lock = threading.Lock()


def device_bucket_name(job_id: str, bucket: str) -> str:
    """The hidden moto bucket holding ``bucket``'s objects on ``job_id``'s device."""
    digest = hashlib.sha1(f"{job_id}/{bucket}".encode(), usedforsecurity=False).hexdigest()
    return f"localaws-snowball-device-{digest[:32]}"


def bucket_exists(account_id: str, region: str, bucket: str) -> bool:
    try:
        s3_backends[account_id][get_partition(region)].get_bucket(bucket)
    except MissingBucket:
        return False
    return True


def ensure_device_bucket(job_id: str, region: str, bucket: str) -> str:
    """Create the hidden device bucket on first use; returns its name."""
    name = device_bucket_name(job_id, bucket)
    backend = s3_backends[DEVICE_ACCOUNT_ID][get_partition(region)]
    with _create_lock:
        if name not in backend.buckets:
            backend.create_bucket(name, region)
    return name


def device_objects(job_id: str, region: str, bucket: str) -> list:
    """The latest version of every object on the device for ``bucket`` (moto ``FakeKey`` objects)."""
    backend = s3_backends[DEVICE_ACCOUNT_ID][get_partition(region)]
    hidden = backend.buckets.get(device_bucket_name(job_id, bucket))
    return list(hidden.keys.values()) if hidden else []


def device_totals(job_id: str, region: str, buckets: list[str]) -> tuple[int, int]:
    """(bytes, objects) stored on the device across the job's target buckets."""
    keys = [key for bucket in buckets for key in device_objects(job_id, region, bucket)]
    return sum(key.size for key in keys), len(keys)


def import_device(job_id: str, account_id: str, region: str, buckets: list[str]) -> tuple[int, int]:
    """Copy every device object into its real target bucket; returns (bytes, objects) imported."""
    target = s3_backends[account_id][get_partition(region)]
    total_bytes = total_objects = 0
    for bucket in buckets:
        if not bucket_exists(account_id, region, bucket):
            # As on AWS, objects for a bucket deleted since CreateJob fail to import; the rest still land.
            log.warning(
                "Snowball job %s: target bucket %s no longer exists; its objects were not imported",
                job_id,
                bucket,
            )
            continue
        for key in device_objects(job_id, region, bucket):
            copied = target.put_object(bucket, key.name, key.value)
            copied.set_metadata(dict(key.metadata))
            total_bytes += key.size
            total_objects += 1
    log.info(
        "Snowball job %s imported %s objects (%s bytes) into %s", job_id, total_objects, total_bytes, buckets
    )
    return total_bytes, total_objects
