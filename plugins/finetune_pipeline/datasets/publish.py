"""Versioned dataset layout, the ``current`` manifest, and retention.

Layout under the dataset prefix:
  versions/<version>/<schema>.<table>/part-00000.parquet ...   the table's rows, one file per key bucket
  versions/<version>/_state/<schema>.<table>/...               tombstones and per-bucket check tallies
  versions/<version>/report.json, report.html
  current                                                      the manifest, written LAST
A version exists for readers only once ``current`` names it: one PUT of a small object, atomic on S3 and (via
rename) on a local folder. A run that dies earlier leaves ``current`` as it was.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from finetune_pipeline.datasets.store import ObjectStore, StoreError, join_key

log = logging.getLogger(__name__)

CURRENT = "current"
HISTORY_LIMIT = 100


class TableState(BaseModel):
    """One table in a published version, plus the sync position (watermark) it was built up to."""

    model_config = ConfigDict(extra="forbid")

    table: str
    buckets: int = Field(ge=1)
    contract_fingerprint: str
    rows: int
    tombstones: int
    data_bytes: int
    parts: list[str]
    tombstone_parts: list[str | None]
    summary_key: str
    cdc_watermark: str | None = None
    recent_files: list[str] = Field(default_factory=list)
    # recent_files holds every CDC file taken with a name after this one (a file name's stem): discovery
    # never lists from further back, or a widened grace window would take those files a second time.
    recent_since: str | None = None
    load_files: list[str] = Field(default_factory=list)
    newest_change: datetime | None = None
    # Row-count reconciliation with DMS: rows the full load brought (None in versions written before it was
    # recorded), and the CDC events applied since the snapshot, by op.
    snapshot_rows: int | None = None
    cdc_events: dict[str, int] = Field(default_factory=dict)


class VersionEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str
    created_at: datetime
    row_counts: dict[str, int]


class Manifest(BaseModel):
    """The ``current`` object: which version readers should use, and where the next run resumes."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    version: str
    number: int
    created_at: datetime
    prefix: str
    tables: dict[str, TableState]
    row_counts: dict[str, int]
    files: dict[str, list[str]]
    watermark: dict[str, str | None]
    report_json: str
    report_html: str
    retained: list[str]
    history: list[VersionEntry]


def current_key(dataset_prefix: str) -> str:
    return join_key(dataset_prefix, CURRENT)


def versions_prefix(dataset_prefix: str) -> str:
    return join_key(dataset_prefix, "versions") + "/"


def version_prefix(dataset_prefix: str, version: str) -> str:
    return join_key(dataset_prefix, "versions", version)


class ManifestError(Exception):
    """The ``current`` object exists but cannot be used."""


def read_current(store: ObjectStore, dataset_prefix: str) -> Manifest | None:
    """The published manifest, or None before the first publish."""
    key = current_key(dataset_prefix)
    try:
        raw = store.get_bytes(key)
    except StoreError:
        return None
    try:
        return Manifest.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as err:
        raise ManifestError(f"{store.uri(key)} is not a valid manifest: {err}") from None


def write_current(store: ObjectStore, dataset_prefix: str, manifest: Manifest) -> str:
    """Publish: one PUT of the manifest. Everything it names must already be written."""
    key = current_key(dataset_prefix)
    store.put_bytes(key, manifest.model_dump_json(indent=2).encode())
    log.info("Published %s as %s", manifest.version, store.uri(key))
    return key


def apply_retention(store: ObjectStore, dataset_prefix: str, keep: list[str]) -> list[str]:
    """Delete every version folder not in ``keep`` (older versions and leftovers of killed runs)."""
    deleted = []
    root = versions_prefix(dataset_prefix)
    for folder in store.list_dirs(root):
        version = folder[len(root) :].strip("/")
        if version and version not in keep:
            store.delete_prefix(folder)
            deleted.append(version)
    if deleted:
        log.info("Retention removed versions %s", deleted)
    return deleted
