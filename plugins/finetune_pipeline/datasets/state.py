"""Where a sync resumes, kept with the data it describes.

Each version's snapshot carries, in its summary, the table's sync position: the CDC watermark, the recent
file names within the late-file window, the rows at the snapshot and the CDC events applied since (for the
DMS reconciliation), the newest change, the contract it was checked against. Since the summary is part of
the commit, data and position can never disagree. What is too big for a summary (each bucket's check
tallies and profile, its tombstones file, the full-load files applied) is in a small JSON file beside the
dataset, written before the commit under a name no other commit uses, and named by the summary
(``finetune.state``): it is immutable, and belongs to that snapshot alone.

Layout under the dataset prefix (the warehouse itself is the catalog's):
  _state/<schema>.<table>/<version>-<token>/state.json            per-bucket tallies, full-load files
  _state/<schema>.<table>/<version>-<token>/tombstones-<b>.parquet  deleted keys, so replays stay deleted
  reports/<version>/report.json, report.html
  versions/<version>.json      once a version is published: each table's identifier, tagged snapshot and
                               metadata file, so a reader without the catalog (a training node) can open it
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from finetune_pipeline.datasets.iceberg_tables import SUMMARY_PREFIX, dumps
from finetune_pipeline.datasets.store import ObjectStore, join_key

STATE = "_state"
REPORTS = "reports"
RECORDS = "versions"
# What the snapshot summary carries of a table's state; state.json carries the rest (buckets, full-load files).
SUMMARY_FIELDS = (
    "contract_fingerprint", "rows", "tombstones", "data_bytes", "cdc_watermark", "recent_files",
    "recent_since", "newest_change", "snapshot_rows", "cdc_events",
)  # fmt: skip


class BucketState(BaseModel):
    """One bucket's tallies, so an untouched bucket is neither read nor re-checked."""

    model_config = ConfigDict(extra="forbid")

    rows: int
    tombstones: int = 0
    bytes: int = 0
    newest_change_us: int | None = None
    tombstones_key: str | None = None
    schema_problems: list[str] = Field(default_factory=list)
    counts: dict[str, Any]
    profile: dict[str, Any]


class TableState(BaseModel):
    """One table at one version, and where its next sync starts."""

    model_config = ConfigDict(extra="forbid")

    table: str
    contract_fingerprint: str
    rows: int
    tombstones: int
    data_bytes: int
    cdc_watermark: str | None = None
    recent_files: list[str] = Field(default_factory=list)
    # recent_files holds every CDC file taken with a name after this one (a file name's stem): discovery
    # never lists from further back, or a widened grace window would take those files a second time.
    recent_since: str | None = None
    load_files: list[str] = Field(default_factory=list)
    # Every CDC file taken (applied or quarantined) with a name after taken_since (a stem): the next sync
    # lists that far back, and a file there that is not named here landed late and is taken then. None in
    # a state written before the sync kept it.
    taken_files: list[str] | None = None
    taken_since: str | None = None
    newest_change: datetime | None = None
    # Row-count reconciliation with DMS: rows the full load brought, and the CDC events applied since.
    snapshot_rows: int | None = None
    cdc_events: dict[str, int] = Field(default_factory=dict)
    buckets: dict[int, BucketState] = Field(default_factory=dict)
    # Where state.json is, relative to the dataset prefix (set once written).
    state_key: str | None = None

    def summary(self) -> dict[str, str]:
        """The snapshot summary properties this state owns (strings, as Iceberg summaries are)."""
        data = self.model_dump(mode="json", include=set(SUMMARY_FIELDS))
        out = {SUMMARY_PREFIX + "state." + k: dumps(v) for k, v in data.items()}
        out[SUMMARY_PREFIX + "state"] = self.state_key or ""
        return out

    def sidecar(self) -> bytes:
        data = self.model_dump(mode="json", include={"table", "load_files", "buckets", "taken_files", "taken_since"})
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_snapshot(cls, summary: dict[str, str], store: ObjectStore, dataset_prefix: str) -> TableState | None:
        """The state a snapshot's summary names, or None for a snapshot the sync did not write."""
        key = summary.get(SUMMARY_PREFIX + "state")
        if not key:
            return None
        fields = {
            k[len(SUMMARY_PREFIX + "state.") :]: json.loads(v)
            for k, v in summary.items()
            if k.startswith(SUMMARY_PREFIX + "state.")
        }
        sidecar = json.loads(store.get_bytes(join_key(dataset_prefix, key)))
        return cls.model_validate({**fields, **sidecar, "state_key": key})


def state_prefix(table: str, version: str, token: str) -> str:
    """A commit's own folder for its state (relative to the dataset prefix)."""
    return join_key(STATE, table, f"{version}-{token}")


def record_key(dataset_prefix: str, version: str) -> str:
    """The version's record (tables, snapshot ids, metadata files), written once the version is published."""
    return join_key(dataset_prefix, RECORDS, f"{version}.json")


def report_keys(dataset_prefix: str, version: str) -> dict[str, str]:
    folder = join_key(dataset_prefix, REPORTS, version)
    return {"json": join_key(folder, "report.json"), "html": join_key(folder, "report.html")}
