"""The manifest of a consistent snapshot export: which files, how big, and where CDC must start.

The export (on premises) writes its files in DMS's S3 layout under one folder, plus ``manifest.json``.
The same manifest travels with the data (Snowball or online) and is published beside it in S3, so the
replication stage starts CDC exactly at ``snapshot_position``: no gap, no overlap.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST_NAME = "manifest.json"


class ExportManifestError(ValueError):
    """The export folder or its manifest is missing or does not match the files on disk."""


@dataclass(frozen=True)
class ExportedFile:
    key: str  # relative to the landing prefix, e.g. public/customers/LOAD00000001.parquet
    size: int
    sha256: str


@dataclass(frozen=True)
class ExportManifest:
    snapshot_position: str  # ISO-8601 UTC commit time of the snapshot; CDC starts right after it
    tables: list[str]
    files: list[ExportedFile]
    seed_data: bool = False  # True when the demo generated the export instead of a real source
    notes: dict = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(item.size for item in self.files)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> ExportManifest:
        try:
            data = json.loads(text)
            files = [ExportedFile(**item) for item in data.pop("files")]
            return cls(files=files, **data)
        except (ValueError, KeyError, TypeError) as error:
            raise ExportManifestError(f"{source} is not a valid export manifest: {error}") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_manifest(export_dir: Path, snapshot_position: str, tables: list[str], seed_data: bool) -> ExportManifest:
    """Describe every file under ``export_dir`` (except the manifest) and write ``manifest.json``."""
    files = [
        ExportedFile(key=path.relative_to(export_dir).as_posix(), size=path.stat().st_size, sha256=file_sha256(path))
        for path in sorted(export_dir.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME
    ]
    manifest = ExportManifest(snapshot_position=snapshot_position, tables=tables, files=files, seed_data=seed_data)
    (export_dir / MANIFEST_NAME).write_text(manifest.to_json())
    return manifest


def read_manifest(export_dir: Path) -> ExportManifest:
    """Read the export's manifest and check every listed file is on disk with its recorded size."""
    path = export_dir / MANIFEST_NAME
    if not path.is_file():
        raise ExportManifestError(
            f"no snapshot export at {export_dir}: {MANIFEST_NAME} is missing. Run the export first "
            "(make demo writes labelled seed data there)."
        )
    manifest = ExportManifest.from_json(path.read_text(), str(path))
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
