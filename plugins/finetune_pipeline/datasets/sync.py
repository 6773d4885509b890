"""Incremental sync of DMS landing files into a validated, versioned dataset: ``run_sync``.

A run lists only what follows each table's watermark, merges it into the previous version by key bucket,
checks every contract, writes the new version's files and reports, and publishes by writing ``current`` last.
``current`` (and with it the watermark) changes only when every blocking check passes; a failed or killed run
leaves it as it was, and running again gives the same result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from finetune_pipeline.datasets import sync_defaults
from finetune_pipeline.datasets.contracts import TableContract, load_contracts
from finetune_pipeline.datasets.dms_format import CsvSettings
from finetune_pipeline.datasets.profile import Profile
from finetune_pipeline.datasets.publish import (
    HISTORY_LIMIT,
    Manifest,
    TableState,
    VersionEntry,
    apply_retention,
    read_current,
    version_prefix,
    write_current,
)
from finetune_pipeline.datasets.quarantine import QuarantinedFile
from finetune_pipeline.datasets.reconcile import OutsideCounts
from finetune_pipeline.datasets.report import build_report, column_summary, drift, render_html
from finetune_pipeline.datasets.store import ObjectStore, join_key
from finetune_pipeline.datasets.table_sync import Discovery, TableOutcome, TableSettings, TableSync, discover
from finetune_pipeline.datasets.validate import CheckResult, publishable

log = logging.getLogger(__name__)


class SyncSpec(BaseModel):
    """Where to read, where to publish, and how. Validated once; everything downstream is typed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    landing_prefix: str = Field(description="DMS S3 target folder: <landing>/<schema>/<table>/...")
    dataset_prefix: str = Field(description="Where versions and the `current` manifest live")
    contracts_dir: Path
    snapshot_position: datetime | None = Field(
        default=None, description="CDC events at or before this commit time are already in the full load"
    )
    snapshot_sequence: str | None = Field(default=None, pattern=r"^\d{35}$")
    retention: int = Field(default=sync_defaults.RETENTION_VERSIONS, ge=1, description="Published versions to keep")
    quarantine_prefix: str | None = None
    csv_header: bool = Field(default=False, description="DMS AddColumnName (off by default in DMS)")
    include_op_for_full_load: bool = True
    csv_delimiter: str = Field(default=",", min_length=1, max_length=1)
    csv_null_value: str = ""
    rows_per_bucket: int = Field(default=1_000_000, ge=1)
    merge_memory_bytes: int = Field(
        default=128 * 2**20, ge=1, description="Target input size of one in-memory merge"
    )
    late_file_grace: timedelta = sync_defaults.LATE_FILE_GRACE
    threads: int = Field(default=2, ge=1, description="Buckets merged at once (and file read-ahead)")
    work_dir: Path | None = None

    @field_validator("snapshot_position")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @property
    def quarantine(self) -> str:
        return self.quarantine_prefix or join_key(self.dataset_prefix, "quarantine")

    def table_settings(self) -> TableSettings:
        return TableSettings(
            landing_prefix=self.landing_prefix,
            quarantine_prefix=self.quarantine,
            snapshot_ts=self.snapshot_position,
            snapshot_seq=self.snapshot_sequence,
            csv=CsvSettings(
                header=self.csv_header,
                include_op_for_full_load=self.include_op_for_full_load,
                delimiter=self.csv_delimiter,
                null_value=self.csv_null_value,
            ),
            rows_per_bucket=self.rows_per_bucket,
            merge_memory_bytes=self.merge_memory_bytes,
            late_file_grace=self.late_file_grace,
            threads=self.threads,
        )


@dataclass
class SyncResult:
    """What a run did. ``published`` is True only when ``current`` now names ``version``."""

    status: Literal["published", "blocked", "up_to_date"]
    version: str | None
    published: bool
    previous_version: str | None
    row_counts: dict[str, int] = field(default_factory=dict)
    checks: list[CheckResult] = field(default_factory=list)
    quarantined: list[QuarantinedFile] = field(default_factory=list)
    report_keys: dict[str, str] = field(default_factory=dict)

    @property
    def failed_checks(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "version": self.version,
            "published": self.published,
            "previous_version": self.previous_version,
            "row_counts": self.row_counts,
            "checks": [c.to_dict() for c in self.checks],
            "quarantined": [q.to_dict() for q in self.quarantined],
            "report_keys": self.report_keys,
        }


def _select(contracts: dict[str, TableContract], tables: list[str] | None) -> list[str]:
    if tables is None:
        return sorted(contracts)
    unknown = sorted(set(tables) - set(contracts))
    if unknown:
        raise ValueError(f"no contract for table(s) {unknown}; known: {sorted(contracts)}")
    return sorted(set(tables))


def _version_id(
    number: int,
    spec: SyncSpec,
    current: Manifest | None,
    full_rebuild: bool,
    contracts: dict[str, TableContract],
    discoveries: dict[str, Discovery],
) -> str:
    """Same inputs, same id: a rerun after a killed run rewrites the same folder instead of adding one."""
    basis = {
        "previous": current.version if current else None,
        "full_rebuild": full_rebuild,
        "snapshot": [str(spec.snapshot_position), spec.snapshot_sequence],
        "tables": {
            t: {"contract": contracts[t].fingerprint(), "files": [[f.key, f.etag] for f in d.files]}
            for t, d in sorted(discoveries.items())
        },
    }
    digest = hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:10]
    return f"v{number:06d}-{digest}"


def _carry(store: ObjectStore, state: TableState, old_prefix: str, vprefix: str) -> TableState:
    """A table left out of this run keeps its data: server-side copies into the new version."""

    def moved(key: str | None) -> str | None:
        if key is None:
            return None
        new = join_key(vprefix, key[len(old_prefix) :])
        store.copy(key, new)
        return new

    return state.model_copy(
        update={
            "parts": [moved(k) for k in state.parts],
            "tombstone_parts": [moved(k) for k in state.tombstone_parts],
            "summary_key": moved(state.summary_key),
        }
    )


def _previous_profile(store: ObjectStore, state: TableState | None) -> Profile | None:
    if state is None:
        return None
    try:
        return Profile.from_json(json.loads(store.get_bytes(state.summary_key))["profile"])
    except Exception:  # a missing or older summary only costs the drift section
        log.warning("No previous profile at %s", state.summary_key)
        return None


def run_sync(
    store: ObjectStore,
    spec: SyncSpec,
    tables: list[str] | None = None,
    full_rebuild: bool = False,
    now: datetime | None = None,
    outside_counts: OutsideCounts | Callable[[list[str]], OutsideCounts | None] | None = None,
) -> SyncResult:
    """Sync new DMS files into a new dataset version and publish it if every blocking check passes.

    ``outside_counts``: DMS table statistics and source row counts to reconcile each table with, or a
    function of the tables being synced returning them, called only when there is something new to sync
    (counting can be costly).
    """
    now = now or datetime.now(UTC)
    contracts = load_contracts(spec.contracts_dir)
    selected = _select(contracts, tables)
    current = read_current(store, spec.dataset_prefix)
    settings = spec.table_settings()
    base = None if (full_rebuild or current is None) else current
    discoveries = {
        t: discover(store, settings, contracts[t], base.tables.get(t) if base else None) for t in selected
    }

    if (
        base is not None
        and all(
            not d.files
            and t in base.tables
            and base.tables[t].contract_fingerprint == contracts[t].fingerprint()
            for t, d in discoveries.items()
        )
        and (tables is not None or set(base.tables) <= set(selected))
    ):
        warnings = [
            CheckResult(
                t,
                "full_load_changed",
                "warning",
                False,
                f"new full-load file {f.key}; run with full_rebuild to apply a reload",
            )
            for t, d in discoveries.items()
            for f in d.new_load_files
        ]
        log.info("Nothing new after the watermark; %s stays current", base.version)
        return SyncResult(
            "up_to_date",
            base.version,
            False,
            base.version,
            dict(base.row_counts),
            warnings,
            [],
            {"json": base.report_json, "html": base.report_html},
        )

    number = current.number + 1 if current else 1
    version = _version_id(number, spec, current, full_rebuild, contracts, discoveries)
    vprefix = version_prefix(spec.dataset_prefix, version)
    leftovers = store.delete_prefix(vprefix + "/")
    if leftovers:
        log.info("Removed %d leftover object(s) of an earlier attempt at %s", leftovers, version)

    if callable(outside_counts):
        outside_counts = outside_counts(selected)
    outcomes: dict[str, TableOutcome] = {}
    with tempfile.TemporaryDirectory(prefix="ftp-sync-", dir=spec.work_dir) as tmp:
        for t in selected:
            prev = base.tables.get(t) if base else None
            outcomes[t] = TableSync(
                store, contracts[t], settings, prev, discoveries[t], vprefix, Path(tmp) / t, now
            ).run(outside_counts)

    states = {t: o.state for t, o in outcomes.items() if o.state is not None}
    if current is not None and tables is not None:
        for t, state in current.tables.items():
            if t not in selected:
                states[t] = _carry(store, state, current.prefix, vprefix)
    checks = [c for o in outcomes.values() for c in o.checks]
    quarantined = [q for o in outcomes.values() for q in o.quarantined]
    ok = publishable(checks) and not any(o.stopped for o in outcomes.values())
    status = "published" if ok else "blocked"
    row_counts = {t: s.rows for t, s in sorted(states.items())}

    entry = VersionEntry(version=version, created_at=now, row_counts=row_counts)
    history = ([*current.history] if current else []) + [entry]
    table_reports = {}
    for t, o in outcomes.items():
        if o.state is None:
            table_reports[t] = {"rows": 0, "stopped": True}
            continue
        prev_profile = _previous_profile(store, current.tables.get(t) if current else None)
        table_reports[t] = {
            "rows": o.state.rows,
            "tombstones": o.state.tombstones,
            "events": o.events,
            "applied_files": len(o.applied_files),
            "files": o.applied_files[:200],
            "buckets": o.state.buckets,
            "buckets_rewritten": o.buckets_rewritten,
            "buckets_copied": o.buckets_copied,
            "watermark": o.state.cdc_watermark,
            "newest_change": o.state.newest_change.isoformat() if o.state.newest_change else None,
            "columns": column_summary(o.profile),
            "drift": drift(prev_profile, o.profile),
        }
    report = build_report(
        version=version,
        status=status,
        dataset_prefix=spec.dataset_prefix,
        previous_version=current.version if current else None,
        tables=table_reports,
        checks=[c.to_dict() for c in checks],
        quarantined=[q.to_dict() for q in quarantined],
        history=[h.model_dump(mode="json") for h in history[-HISTORY_LIMIT:]],
        created_at=now,
    )
    report_keys = {"json": join_key(vprefix, "report.json"), "html": join_key(vprefix, "report.html")}
    store.put_bytes(report_keys["json"], json.dumps(report, indent=2, default=str).encode())
    store.put_bytes(report_keys["html"], render_html(report).encode())

    if not ok:
        failed = [c.name for c in checks if c.blocking_failure]
        log.warning("Version %s not published; blocking failures: %s", version, failed)
        return SyncResult(
            status,
            version,
            False,
            current.version if current else None,
            row_counts,
            checks,
            quarantined,
            report_keys,
        )

    retained = ([*current.retained] if current else []) + [version]
    manifest = Manifest(
        version=version,
        number=number,
        created_at=now,
        prefix=vprefix,
        tables=states,
        row_counts=row_counts,
        files={t: s.parts for t, s in sorted(states.items())},
        watermark={t: s.cdc_watermark for t, s in sorted(states.items())},
        report_json=report_keys["json"],
        report_html=report_keys["html"],
        retained=retained[-spec.retention :],
        history=history[-HISTORY_LIMIT:],
    )
    write_current(store, spec.dataset_prefix, manifest)
    try:
        apply_retention(store, spec.dataset_prefix, manifest.retained)
    except (
        Exception
    ):  # retention is housekeeping: the publish already happened and must not be reported failed
        log.exception("Retention failed; older versions are left in place")
    return SyncResult(
        status,
        version,
        True,
        current.version if current else None,
        row_counts,
        checks,
        quarantined,
        report_keys,
    )
