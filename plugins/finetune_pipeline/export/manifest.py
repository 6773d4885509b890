"""The manifest of a consistent snapshot export: which files, their checksums, and where CDC must start.

The export (on premises) writes its files in DMS's S3 LOAD layout under one folder, then ``manifest.json``
last, so a folder with a manifest is a complete export. The manifest travels with the data (Snowball or
online) and is published beside it in S3 (``<landing>/_snapshot/manifest.json``); the replication stage
reads its ``cdc_start_position`` from there.

Checksums, and how the import is verified without downloading it: every file carries its ``sha256`` and
three values S3 can report back on ``HeadObject`` (``ChecksumMode=ENABLED``):

- ``crc32``: the full-object CRC-32 in S3's ``ChecksumCRC32`` form (base64 of the big-endian value).
  boto3 sends it by default on every ``PutObject``, and a full-object multipart upload reports it too
  (``ChecksumType: FULL_OBJECT``), whatever the part size.
- ``md5``: the ETag of any single-part upload (a ``PutObject``, or a copy made by one), hex.
- ``etag``: the ETag of an upload in ``part_size`` parts (MD5 of the part MD5s, ``-N``), as s3transfer
  uploads with ``multipart_threshold = multipart_chunksize = part_size``: the
  ``SnowballLoadDeviceOperator``'s defaults and the online copy's. A file smaller than one part has the
  single-part MD5 here.

The verifier (:func:`finetune_pipeline.pipeline.landing.verify_landed`) compares every one of these that
the object's HEAD reports comparably (a CRC only when it is full-object, an ETag only when it is not from
SSE-KMS and has the part count ``part_size`` gives) and needs at least one; any difference, and any object
with nothing comparable, is a bad key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 2
MIB = 1024 * 1024
# The part size of the manifest's multipart ETag: what the Snowball device loader and the online copy use.
S3_PART_SIZE = 64 * MIB
# S3's multipart limits (https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html), which
# s3transfer's ChunksizeAdjuster applies the same way: at most 10,000 parts, each 5 MiB to 5 GiB.
_MAX_PARTS = 10_000
_MIN_PART = 5 * MIB
_MAX_PART = 5 * 1024 * MIB
_BLOCK = 8 * MIB


class ExportManifestError(ValueError):
    """The export folder or its manifest is missing or does not match the files on disk."""


@dataclass(frozen=True)
class ExportedFile:
    key: str  # relative to the landing prefix, e.g. public/customers/LOAD00000001.parquet
    size: int
    sha256: str  # hex
    md5: str  # hex: the ETag of a single-part upload
    etag: str  # the ETag of an upload in part_size parts (the MD5 when the file is smaller than one part)
    crc32: str  # base64, as S3's ChecksumCRC32 of the whole object
    part_size: int = S3_PART_SIZE


@dataclass(frozen=True)
class SlotInfo:
    name: str
    plugin: str  # test_decoding: DMS's PluginName for it is test-decoding


@dataclass(frozen=True)
class SourceInfo:
    database: str
    system_identifier: str | None = None  # PostgreSQL: pg_control_system(); MySQL: @@server_uuid
    timeline: int | None = None
    server_version: str | None = None


@dataclass(frozen=True)
class TableExport:
    rows: int
    primary_key: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class ExportManifest:
    engine: str  # "postgres" or "mysql"
    snapshot_position: str  # ISO-8601 UTC, read before the slot was created: every CDC change commits later
    cdc_start_position: str  # DMS CdcStartPosition: the slot's consistent-point LSN, or "<binlog>:<position>"
    source: SourceInfo
    tables: dict[str, TableExport]
    files: list[ExportedFile]
    slot: SlotInfo | None = None  # PostgreSQL only
    # What the slot retained when the export finished: {"retained_bytes", "wal_status", "max_slot_wal_keep_size"}.
    wal: dict | None = None
    exported_at: str | None = None
    format_version: int = FORMAT_VERSION
    notes: dict = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(item.size for item in self.files)

    @property
    def table_names(self) -> list[str]:
        return sorted(self.tables)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> ExportManifest:
        try:
            data = json.loads(text)
            if data.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format_version {data.get('format_version')!r}, expected {FORMAT_VERSION}")
            data["files"] = [ExportedFile(**item) for item in data.pop("files")]
            data["tables"] = {name: TableExport(**item) for name, item in data.pop("tables").items()}
            data["source"] = SourceInfo(**data.pop("source"))
            if data.get("slot") is not None:
                data["slot"] = SlotInfo(**data["slot"])
            return cls(**data)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ExportManifestError(f"{source} is not a valid export manifest: {error}") from None


def s3_part_size(size: int, part_size: int = S3_PART_SIZE) -> int:
    """The part size s3transfer really uses for a file of ``size`` bytes (doubled until 10,000 parts do)."""
    part = min(max(part_size, _MIN_PART), _MAX_PART)
    while size > 0 and math.ceil(size / part) > _MAX_PARTS:
        part *= 2
    return part


def file_checksums(path: Path, part_size: int = S3_PART_SIZE) -> dict:
    """sha256, md5, the multipart ETag at ``part_size`` and the CRC-32 of a file, in one read."""
    size = path.stat().st_size
    part = s3_part_size(size, part_size)
    # s3transfer uploads a file of at least multipart_threshold (= part_size here) bytes in parts; a smaller
    # one in a single PUT, whose ETag is the file's MD5, so its part MD5s are not computed at all.
    multipart = size >= part_size
    sha256 = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False)
    crc = 0
    part_digests: list[bytes] = []
    part_md5 = hashlib.md5(usedforsecurity=False)
    in_part = 0
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            sha256.update(block)
            md5.update(block)
            crc = zlib.crc32(block, crc)
            view = memoryview(block)
            while multipart and view:
                take = min(len(view), part - in_part)
                part_md5.update(view[:take])
                in_part += take
                view = view[take:]
                if in_part == part:
                    part_digests.append(part_md5.digest())
                    part_md5, in_part = hashlib.md5(usedforsecurity=False), 0
    if in_part:
        part_digests.append(part_md5.digest())
    if multipart:
        etag = f"{hashlib.md5(b''.join(part_digests), usedforsecurity=False).hexdigest()}-{len(part_digests)}"
    else:
        etag = md5.hexdigest()
    return {"size": size, "sha256": sha256.hexdigest(), "md5": md5.hexdigest(), "etag": etag,
            "crc32": base64.b64encode(crc.to_bytes(4, "big")).decode(), "part_size": part_size}


def describe_file(export_dir: Path, path: Path, part_size: int = S3_PART_SIZE) -> ExportedFile:
    return ExportedFile(key=path.relative_to(export_dir).as_posix(), **file_checksums(path, part_size))


def write_manifest(export_dir: Path, manifest: ExportManifest) -> Path:
    """Write ``manifest.json`` atomically: a reader sees no manifest or a whole one."""
    path = export_dir / MANIFEST_NAME
    partial = export_dir / f".{MANIFEST_NAME}.partial"
    partial.write_text(manifest.to_json())
    partial.replace(path)
    return path


def read_manifest(export_dir: Path, *, check_files: bool = True) -> ExportManifest:
    """Read the export's manifest and check every listed file is on disk with its recorded size."""
    path = export_dir / MANIFEST_NAME
    if not path.is_file():
        raise ExportManifestError(
            f"no snapshot export at {export_dir}: {MANIFEST_NAME} is missing. Run the export first "
            "(python -m finetune_pipeline.export, or the export_snapshot task)."
        )
    manifest = ExportManifest.from_json(path.read_text(), str(path))
    if not check_files:
        return manifest
    problems = []
    for item in manifest.files:
        local = export_dir / item.key
        if not local.is_file():
            problems.append(f"{item.key}: missing")
        elif local.stat().st_size != item.size:
            problems.append(f"{item.key}: {local.stat().st_size} bytes on disk, manifest says {item.size}")
    if problems:
        raise ExportManifestError(f"export at {export_dir} does not match its manifest:\n  " + "\n  ".join(problems))
    return manifest
