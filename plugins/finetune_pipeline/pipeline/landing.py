"""Move a snapshot export into the landing prefix and prove it arrived, over any S3 endpoint.

These functions take a boto3 S3 client, so the same code copies to AWS (online route), to a Snowball
device's S3 adapter (offline route), and checks what the Snowball import landed.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from finetune_pipeline.pipeline.export_manifest import ExportedFile, ExportManifest

log = logging.getLogger(__name__)
SNAPSHOT_MANIFEST_KEY = "_snapshot/manifest.json"


class LandingError(RuntimeError):
    """The landed data does not match the export manifest."""


def _head(s3_client, bucket: str, key: str) -> dict | None:
    try:
        return s3_client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as error:
        if error.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def _transfer_config(manifest: ExportManifest) -> TransferConfig:
    """Upload in the part size the manifest's ETags are for, so the landed ETags can be compared."""
    part = manifest.files[0].part_size if manifest.files else None
    return TransferConfig(multipart_threshold=part, multipart_chunksize=part) if part else TransferConfig()


def upload_export(s3_client, export_dir: Path, manifest: ExportManifest, bucket: str, prefix: str) -> dict:
    """Copy every exported file to ``s3://bucket/prefix/<key>``; files already there whole are skipped.

    "Whole" means the object's checksums match the manifest (see :func:`content_problem`), so a retry
    resumes where a crash left off instead of re-sending terabytes, and re-sends a stale object.
    """
    copied = skipped = copied_bytes = 0
    config = _transfer_config(manifest)
    for index, item in enumerate(manifest.files, start=1):
        key = f"{prefix}/{item.key}"
        head = _head(s3_client, bucket, key)
        if head is not None and content_problem(head, item) is None:
            skipped += 1
            continue
        s3_client.upload_file(str(export_dir / item.key), bucket, key, Config=config)
        copied += 1
        copied_bytes += item.size
        log.info("copied %d/%d %s (%d bytes)", index, len(manifest.files), key, item.size)
    log.info("export copy done: %d copied (%d bytes), %d already present", copied, copied_bytes, skipped)
    return {"copied": copied, "skipped": skipped, "bytes": copied_bytes}


def _full_object(head: dict, multipart: bool) -> bool:
    # A multipart upload's CRC is of the whole object only when S3 says FULL_OBJECT; without a type, only a
    # single-part upload's is (moto leaves the type out of HeadObject).
    kind = head.get("ChecksumType")
    return kind == "FULL_OBJECT" or (kind is None and not multipart)


def content_problem(head: dict, item: ExportedFile) -> str | None:
    """Why the object S3 describes is not the exported file, or None; compares everything comparable.

    Compared, when S3 reports them: the full-object SHA-256 and CRC-32; the ETag as the single-part MD5 or
    as the multipart ETag for the manifest's part size (not under SSE-KMS or SSE-C, where the ETag is no
    MD5). An object with none of them comparable cannot be verified without downloading, and is a problem.
    """
    if head["ContentLength"] != item.size:
        return f"{head['ContentLength']} bytes, export had {item.size}"
    etag = head.get("ETag", "").strip('"')
    multipart = "-" in etag
    compared, differ = [], []

    def compare(name: str, reported: str, expected: str) -> None:
        compared.append(name)
        if reported != expected:
            differ.append(f"{name} {reported}, export had {expected}")

    sha256 = head.get("ChecksumSHA256")
    if sha256 and "-" not in sha256 and _full_object(head, multipart):
        compare("SHA-256", sha256, base64.b64encode(bytes.fromhex(item.sha256)).decode())
    crc32 = head.get("ChecksumCRC32")
    if crc32 and "-" not in crc32 and _full_object(head, multipart):
        compare("CRC-32", crc32, item.crc32)
    encrypted = head.get("ServerSideEncryption") == "aws:kms" or head.get("SSECustomerAlgorithm")
    if etag and not encrypted:
        if not multipart:
            compare("ETag", etag, item.md5)
        elif etag.rsplit("-", 1)[1] == item.etag.rpartition("-")[2]:
            compare("ETag", etag, item.etag)
    if differ:
        return "content differs: " + "; ".join(differ)
    if not compared:
        return (f"nothing S3 reports can be compared (ETag {etag} is of another part size than the manifest's "
                f"{item.part_size} bytes, and no full-object checksum): cannot verify without downloading")
    return None


def verify_landed(s3_client, manifest: ExportManifest, bucket: str, prefix: str) -> int:
    """Raise LandingError listing every file that is missing, the wrong size or other content; return bytes.

    Only ``HeadObject`` is called: the import is verified against the manifest's checksums without
    downloading it.
    """
    problems = []
    for item in manifest.files:
        head = _head(s3_client, bucket, f"{prefix}/{item.key}")
        problem = "missing" if head is None else content_problem(head, item)
        if problem:
            problems.append(f"s3://{bucket}/{prefix}/{item.key}: {problem}")
    if problems:
        raise LandingError(f"{len(problems)} of {len(manifest.files)} exported files did not land intact:\n  "
                           + "\n  ".join(problems))
    log.info("verified %d files (%d bytes) in s3://%s/%s by checksum", len(manifest.files), manifest.total_bytes,
             bucket, prefix)
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
