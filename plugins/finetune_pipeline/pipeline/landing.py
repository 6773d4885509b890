"""Move a snapshot export into the landing prefix and prove it arrived, over any S3 endpoint.

These functions take a boto3 S3 client, so the same code copies to AWS (online route), to a Snowball
device's S3 adapter (offline route), and checks what the Snowball import landed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from botocore.exceptions import ClientError

from finetune_pipeline.pipeline.export_manifest import ExportManifest

log = logging.getLogger(__name__)
SNAPSHOT_MANIFEST_KEY = "_snapshot/manifest.json"


class LandingError(RuntimeError):
    """The landed data does not match the export manifest."""


def _object_size(s3_client, bucket: str, key: str) -> int | None:
    try:
        return s3_client.head_object(Bucket=bucket, Key=key)["ContentLength"]
    except ClientError as error:
        if error.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def upload_export(s3_client, export_dir: Path, manifest: ExportManifest, bucket: str, prefix: str) -> dict:
    """Copy every exported file to ``s3://bucket/prefix/<key>``; files already there whole are skipped.

    Skipping by size makes a retry resume where a crash left off instead of re-sending terabytes.
    """
    copied = skipped = copied_bytes = 0
    for index, item in enumerate(manifest.files, start=1):
        key = f"{prefix}/{item.key}"
        if _object_size(s3_client, bucket, key) == item.size:
            skipped += 1
            continue
        s3_client.upload_file(str(export_dir / item.key), bucket, key)
        copied += 1
        copied_bytes += item.size
        log.info("copied %d/%d %s (%d bytes)", index, len(manifest.files), key, item.size)
    log.info("export copy done: %d copied (%d bytes), %d already present", copied, copied_bytes, skipped)
    return {"copied": copied, "skipped": skipped, "bytes": copied_bytes}


def verify_landed(s3_client, manifest: ExportManifest, bucket: str, prefix: str) -> int:
    """Raise LandingError listing every file that is missing or the wrong size; return bytes verified."""
    problems = []
    for item in manifest.files:
        size = _object_size(s3_client, bucket, f"{prefix}/{item.key}")
        if size is None:
            problems.append(f"s3://{bucket}/{prefix}/{item.key}: missing")
        elif size != item.size:
            problems.append(f"s3://{bucket}/{prefix}/{item.key}: {size} bytes, export had {item.size}")
    if problems:
        raise LandingError(f"{len(problems)} of {len(manifest.files)} exported files did not land:\n  "
                           + "\n  ".join(problems[:50]))
    log.info("verified %d files (%d bytes) in s3://%s/%s", len(manifest.files), manifest.total_bytes, bucket, prefix)
    return manifest.total_bytes


def publish_snapshot_manifest(s3_client, manifest: ExportManifest, bucket: str, prefix: str) -> str:
    """Write the manifest beside the landed data; the replication stage reads its position from here."""
    key = f"{prefix}/{SNAPSHOT_MANIFEST_KEY}"
    s3_client.put_object(Bucket=bucket, Key=key, Body=manifest.to_json().encode(), ContentType="application/json")
    return key


def read_snapshot_manifest(s3_client, bucket: str, prefix: str) -> ExportManifest:
    key = f"{prefix}/{SNAPSHOT_MANIFEST_KEY}"
    try:
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    except ClientError as error:
        if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
            raise LandingError(f"no snapshot published at s3://{bucket}/{key}: run the bulk transfer first") from None
        raise
    return ExportManifest.from_json(body, f"s3://{bucket}/{key}")
