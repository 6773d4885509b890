"""Incremental sync of DMS landing files into a validated, versioned dataset of Iceberg tables: ``run_sync``.

A run reads top to bottom:
- **plan**: read each table's ``main`` snapshot (its summary is where the last sync stopped), find the
  version to commit and list only the files after each table's watermark;
- **stage**: merge those files into the touched buckets and write their new data files (nothing committed);
- **validate**: every contract check, and the report, which is written whatever the outcome;
- **commit**: only when every blocking check passes, one commit per table: the new data files, the summary
  (version, counts, files applied, validation, sync position) and the version's tag, all together.

A version spans every table of the dataset: each gets a snapshot tagged with the version (a table with
nothing new, or left out of a run, gets an empty one that records the version). Catalogs commit one table at
a time, so the tag is the publication: a version counts as published once every table it names carries it
(:mod:`.reader`). A run that dies between two table commits leaves the version on some tables only; readers
refuse it, and the next run completes it under the same number before anything else. No object outside the
catalog has to be written last, and no PUT can race: each table's commit is a compare-and-swap on its
``main`` branch in the catalog.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from finetune_pipeline.datasets import quarantine, sync_defaults
from finetune_pipeline.datasets.catalog import AwsAccess, CatalogSpec, load
from finetune_pipeline.datasets.contracts import TableContract, load_contracts
from finetune_pipeline.datasets.dms_format import CsvSettings
from finetune_pipeline.datasets.iceberg_tables import (
    SUMMARY_PREFIX,
    ConcurrentCommitError,
    TableHead,
    TableWrite,
    check_schema,
    delete_unreferenced,
    dumps,
    expire_versions,
    load_head,
    orphan_cutoff,
    referenced_files,
    summary_of,
)
from finetune_pipeline.datasets.profile import Profile
from finetune_pipeline.datasets.quarantine import QuarantinedFile
from finetune_pipeline.datasets.reader import (
    DATASET_TABLES,
    complete_versions,
    dataset_tables,
    is_version,
    members,
    open_version,
    version_name,
    version_number,
    version_record,
)
from finetune_pipeline.datasets.reconcile import OutsideCounts
from finetune_pipeline.datasets.report import build_report, column_summary, drift, render_html
from finetune_pipeline.datasets.state import RECORDS, REPORTS, STATE, TableState, record_key, report_keys
from finetune_pipeline.datasets.store import ObjectStore, StoreError, join_key
from finetune_pipeline.datasets.table_sync import Discovery, TableOutcome, TableSettings, TableSync, discover
from finetune_pipeline.datasets.validate import CheckResult, publishable

log = logging.getLogger(__name__)

HISTORY_LIMIT = 100
APPLIED_FILES_IN_SUMMARY = 100


class SyncConflictError(Exception):
    """Other writers kept committing to the tables while this sync ran; nothing of this sync was committed
    beyond complete table commits of its version (which the next run completes)."""


class SyncSpec(BaseModel):
    """Where to read, where to publish, and how. Validated once; everything downstream is typed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    landing_prefix: str = Field(description="DMS S3 target folder: <landing>/<schema>/<table>/...")
    dataset_prefix: str = Field(description="Where the dataset's state, reports and quarantine live")
    contracts_dir: Path
    catalog: CatalogSpec
    snapshot_position: datetime | None = Field(
        default=None, description="CDC events at or before this commit time are already in the full load"
    )
    snapshot_sequence: str | None = Field(default=None, pattern=r"^\d{35}$")
    retention: int = Field(default=sync_defaults.RETENTION_VERSIONS, ge=1, description="Published versions to keep")
    orphan_file_grace: timedelta = sync_defaults.ORPHAN_FILE_GRACE
    quarantine_prefix: str | None = None
    csv_header: bool = Field(default=False, description="DMS AddColumnName (off by default in DMS)")
    include_op_for_full_load: bool = True
    csv_delimiter: str = Field(default=",", min_length=1, max_length=1)
    csv_null_value: str = ""
    rows_per_bucket: int = Field(default=sync_defaults.ROWS_PER_BUCKET, ge=1)
    merge_memory_bytes: int = Field(
        default=sync_defaults.MERGE_MEMORY_BYTES, ge=1, description="Target input size of one in-memory merge"
    )
    target_file_bytes: int = Field(default=sync_defaults.TARGET_FILE_BYTES, ge=1)
    merge_on_read_min_rows: int = Field(
        default=sync_defaults.MERGE_ON_READ_MIN_ROWS, ge=1,
        description="Smaller buckets are always rewritten whole, never merged on read with delete files",
    )
    late_file_grace: timedelta = sync_defaults.LATE_FILE_GRACE
    late_file_audit: timedelta = sync_defaults.LATE_FILE_AUDIT
    threads: int = Field(default=2, ge=1, description="Buckets merged at once (and file read-ahead)")
    commit_attempts: int = Field(default=3, ge=1, description="Runs from the top when another writer commits first")
    work_dir: Path | None = None

    @field_validator("snapshot_position")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @property
    def quarantine(self) -> str:
        return self.quarantine_prefix or join_key(self.dataset_prefix, quarantine.DATASET_FOLDER)

    def table_settings(self) -> TableSettings:
        return TableSettings(
            landing_prefix=self.landing_prefix,
            quarantine_prefix=self.quarantine,
            dataset_prefix=self.dataset_prefix,
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
            late_file_audit=self.late_file_audit,
            target_file_bytes=self.target_file_bytes,
            merge_on_read_min_rows=self.merge_on_read_min_rows,
            threads=self.threads,
        )


@dataclass
class SyncResult:
    """What a run did. ``published`` is True only when ``version`` is now on every table it spans."""

    status: Literal["published", "blocked", "up_to_date"]
    version: str | None
    published: bool
    previous_version: str | None
    row_counts: dict[str, int] = field(default_factory=dict)
    checks: list[CheckResult] = field(default_factory=list)
    quarantined: list[QuarantinedFile] = field(default_factory=list)
    report_keys: dict[str, str] = field(default_factory=dict)
    # Per table of the version: its Iceberg identifier, the tagged snapshot and the metadata file naming it.
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)

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
            "tables": self.tables,
        }


def _select(contracts: dict[str, TableContract], tables: list[str] | None) -> list[str]:
    if tables is None:
        return sorted(contracts)
    unknown = sorted(set(tables) - set(contracts))
    if unknown:
        raise ValueError(f"no contract for table(s) {unknown}; known: {sorted(contracts)}")
    return sorted(set(tables))


# ------------------------------------------------------------------------------------------------ plan


@dataclass
class Plan:
    """What this run commits: which version, which tables get data, which only the version's tag."""

    heads: dict[str, TableHead]
    states: dict[str, TableState | None]
    published: str | None
    version: str
    completing: bool
    to_sync: list[str]
    to_carry: list[str]
    members: list[str]
    discoveries: dict[str, Discovery]


def plan(
    store: ObjectStore,
    spec: SyncSpec,
    catalog,
    contracts: dict[str, TableContract],
    selected: list[str],
    full_rebuild: bool,
    explicit: bool,
) -> Plan:
    """Read every table's head and decide the version. An interrupted version (tagged on some of its tables
    only) is completed first, under its own number, whatever tables were asked for."""
    heads = {t: load_head(catalog, spec.catalog, t) for t in sorted(contracts)}
    states = {
        t: TableState.from_snapshot(h.summary, store, spec.dataset_prefix) if h.snapshot is not None else None
        for t, h in heads.items()
    }
    everything = dataset_tables(catalog, spec.catalog.namespace)
    done = complete_versions(everything)
    published = done[-1] if done else None
    committed = [h for h in heads.values() if version_number(h.version) is not None]
    newest = max(committed, key=lambda h: version_number(h.version), default=None)
    settings = spec.table_settings()

    lagging: list[str] = []
    if newest is not None and newest.version not in done:
        spans = members(newest.table, newest.version)
        lagging = sorted(t for t in spans if t not in heads or newest.version not in heads[t].tags())
        if any(t not in contracts for t in lagging):
            # A table the version spans has lost its contract: it cannot be completed, so it stays unpublished.
            log.warning("version %s spans tables without a contract now (%s); it stays unpublished",
                        newest.version, sorted(t for t in lagging if t not in contracts))
            lagging = []
    if lagging:
        version = newest.version
        log.warning("version %s was committed to some of its tables only; completing it with %s", version, lagging)
        to_sync, to_carry, spans_now = lagging, [], members(newest.table, version)
        rebuild = full_rebuild
    else:
        number = (version_number(newest.version) if newest else 0) + 1
        version = version_name(number)
        to_sync = selected
        to_carry = [t for t in sorted(contracts) if explicit and t not in selected and states[t] is not None]
        spans_now = sorted(to_sync + to_carry)
        rebuild = full_rebuild
    for t in to_sync:
        # A contract that no longer fits its table fails here, before any landing file is read or moved.
        head = heads[t]
        if head.table is not None:
            check_schema(head.table.schema(), head.table.spec(), contracts[t], f"table {'.'.join(head.identifier)}")
    discoveries = {
        t: discover(store, settings, contracts[t], None if rebuild else states[t]) for t in to_sync
    }
    return Plan(heads, states, published, version, bool(lagging), to_sync, to_carry, spans_now, discoveries)


def _up_to_date(p: Plan, contracts: dict[str, TableContract], explicit: bool) -> bool:
    """Nothing new for any table asked for, each still at the published version, under the same contract."""
    if p.completing or p.published is None:
        return False
    for t in p.to_sync:
        state, head = p.states[t], p.heads[t]
        if state is None or p.discoveries[t].files or state.contract_fingerprint != contracts[t].fingerprint():
            return False
        if head.tags().get(p.published) != head.snapshot_id:
            return False
    if explicit:
        return True
    # A full run publishes anew when the published version spans other tables than the contracts name.
    holder = next(h for h in p.heads.values() if h.table is not None and p.published in h.tags())
    return set(members(holder.table, p.published)) <= set(p.to_sync)


# ------------------------------------------------------------------------------------------------ run


def run_sync(
    store: ObjectStore,
    spec: SyncSpec,
    tables: list[str] | None = None,
    full_rebuild: bool = False,
    now: datetime | None = None,
    outside_counts: OutsideCounts | Callable[[list[str]], OutsideCounts | None] | None = None,
    *,
    catalog=None,
    access: AwsAccess | None = None,
) -> SyncResult:
    """Sync new DMS files into a new dataset version and publish it if every blocking check passes.

    ``outside_counts``: DMS table statistics and source row counts to reconcile each table with, or a
    function of the tables being synced returning them, called only when there is something new to sync
    (counting can be costly). ``catalog``: an already loaded pyiceberg catalog; else ``spec.catalog`` is
    loaded with ``access``.

    :raises CatalogError: the catalog cannot be reached or refuses the credentials (nothing was written).
    :raises SchemaMismatchError: a table in the catalog does not fit its contract (nothing was committed).
    :raises SyncConflictError: other writers committed first on every attempt.
    """
    now = now or datetime.now(UTC)
    contracts = load_contracts(spec.contracts_dir)
    selected = _select(contracts, tables)
    catalog = catalog or load(spec.catalog, access, create_namespace=True)
    carried: list[QuarantinedFile] = []
    carried_checks: list[CheckResult] = []
    for attempt in range(1, spec.commit_attempts + 1):
        run = _Run(store, spec, catalog, contracts, selected, tables is not None, full_rebuild, now, outside_counts)
        try:
            result = run.execute()
        except ConcurrentCommitError as error:
            carried += run.quarantined
            carried_checks += [c for c in run.checks if c.check == "bad_file"]
            if attempt == spec.commit_attempts:
                raise SyncConflictError(f"{error} (gave up after {attempt} attempt(s))") from None
            log.warning("another writer committed first (%s); syncing again from the top (attempt %d of %d)",
                        error, attempt + 1, spec.commit_attempts)
            continue
        result.quarantined = carried + result.quarantined
        result.checks = carried_checks + result.checks
        return result
    raise AssertionError("unreachable")


class _Run:
    """One attempt: plan, stage, validate, commit."""

    def __init__(self, store, spec, catalog, contracts, selected, explicit, full_rebuild, now, outside_counts):
        self.store = store
        self.spec = spec
        self.catalog = catalog
        self.contracts = contracts
        self.selected = selected
        self.explicit = explicit
        self.full_rebuild = full_rebuild
        self.now = now
        self.outside_counts = outside_counts
        self.quarantined: list[QuarantinedFile] = []
        self.checks: list[CheckResult] = []

    def execute(self) -> SyncResult:
        p = plan(self.store, self.spec, self.catalog, self.contracts, self.selected, self.full_rebuild, self.explicit)
        if p.published and not self.store.exists(record_key(self.spec.dataset_prefix, p.published)):
            # The last run published (every table tagged) and stopped before writing the record.
            self.write_record(p.published)
        held = quarantine.holds(self.store, self.spec.quarantine, sorted(self.contracts))
        if held:
            return self._held(p, held)
        if not self.full_rebuild and _up_to_date(p, self.contracts, self.explicit):
            return self._up_to_date(p)
        outcomes = self.stage(p)
        self.checks = [c for o in outcomes.values() for c in o.checks]
        # Every table staged: only now are bad files moved (a crash before this point moved none).
        self.quarantined = self.move_bad_files(outcomes)
        ok = publishable(self.checks) and not any(o.stopped for o in outcomes.values())
        row_counts = self._row_counts(p, outcomes)
        keys = self.report(p, outcomes, "published" if ok else "blocked", row_counts)
        if not ok:
            failed = [c.name for c in self.checks if c.blocking_failure]
            log.warning("Version %s not published; blocking failures: %s", p.version, failed)
            return SyncResult("blocked", p.version, False, p.published, row_counts, self.checks, self.quarantined, keys)
        tables = self.commit(p, outcomes)
        self.close_released(p, outcomes)
        self.retain(p)
        return SyncResult(
            "published", p.version, True, p.published, row_counts, self.checks, self.quarantined, keys, tables
        )

    def _held(self, p: Plan, held: list[quarantine.QuarantineEntry]) -> SyncResult:
        """Files quarantined under quarantine_and_stop wait for an operator: nothing is read or published
        until each is released (put back, to be read again) or discarded (its loss accepted)."""
        self.checks = [
            CheckResult(e.table, "quarantine_hold", "blocking", False,
                        f"{e.describe()}; publishing waits until an operator releases or discards it "
                        f"(python -m finetune_pipeline.datasets quarantine list)")
            for e in held
        ]  # fmt: skip
        for e in held:
            log.warning("Holding: %s", e.describe())
        rows = {t: s.rows for t, s in p.states.items() if s is not None}
        keys = self.report(p, {}, "blocked", rows)
        return SyncResult("blocked", p.version, False, p.published, rows, self.checks, [], keys)

    def move_bad_files(self, outcomes: dict[str, TableOutcome]) -> list[QuarantinedFile]:
        moved = []
        for o in outcomes.values():
            for bad in o.pending:
                q = quarantine.quarantine_file(
                    self.store, bad.file, bad.error, table=o.table, quarantine_prefix=self.spec.quarantine,
                    policy=bad.policy, now=self.now,
                )  # fmt: skip
                bad.check.detail += f" (moved to {q.quarantine_key})"
                moved.append(q)
        return moved

    def close_released(self, p: Plan, outcomes: dict[str, TableOutcome]) -> None:
        """Released files the published version holds: their cases close. Best-effort: left open, a released
        file is taken once more by the next sync, which changes nothing."""
        for t, o in outcomes.items():
            try:
                quarantine.mark_applied(self.store, self.spec.quarantine, t, set(o.applied_files), p.version, self.now)
            except Exception:
                log.exception("Marking %s's released files as applied failed; the next sync takes them again", t)

    def _up_to_date(self, p: Plan) -> SyncResult:
        warnings = [
            CheckResult(t, "full_load_changed", "warning", False,
                        f"new full-load file {f.key}; run with full_rebuild to apply a reload")
            for t, d in p.discoveries.items()
            for f in d.new_load_files
        ]  # fmt: skip
        log.info("Nothing new after the watermark; %s stays current", p.published)
        rows = {t: p.states[t].rows for t in p.to_sync if p.states[t] is not None}
        keys = report_keys(self.spec.dataset_prefix, p.published)
        return SyncResult("up_to_date", p.published, False, p.published, rows, warnings, [], keys)

    # -------------------------------------------------------------------------------------------- stage

    def stage(self, p: Plan) -> dict[str, TableOutcome]:
        outside = self.outside_counts
        if callable(outside):
            outside = outside(p.to_sync)
        settings = self.spec.table_settings()
        outcomes: dict[str, TableOutcome] = {}
        with tempfile.TemporaryDirectory(prefix="ftp-sync-", dir=self.spec.work_dir) as tmp:
            for t in p.to_sync:
                head, contract = p.heads[t], self.contracts[t]

                def open_write(bucketing, head=head, contract=contract):
                    return TableWrite.open(self.catalog, self.spec.catalog, head, contract, bucketing)

                prev = None if self.full_rebuild else p.states[t]
                outcomes[t] = TableSync(
                    self.store, contract, settings, head, prev, p.discoveries[t], open_write, p.version,
                    Path(tmp) / t, self.now,
                ).run(outside)  # fmt: skip
        return outcomes

    def _row_counts(self, p: Plan, outcomes: dict[str, TableOutcome]) -> dict[str, int]:
        rows = {}
        for t in p.members:
            if t in outcomes and outcomes[t].state is not None:
                rows[t] = outcomes[t].state.rows
            elif p.completing and p.heads.get(t) is not None and p.version in p.heads[t].tags():
                rows[t] = int(p.heads[t].summary.get(SUMMARY_PREFIX + "state.rows", "0"))
            elif p.states.get(t) is not None:
                rows[t] = p.states[t].rows
        return dict(sorted(rows.items()))

    # -------------------------------------------------------------------------------------------- report

    def report(self, p: Plan, outcomes: dict[str, TableOutcome], status: str, row_counts) -> dict[str, str]:
        keys = report_keys(self.spec.dataset_prefix, p.version)
        tables: dict[str, Any] = {}
        checks = [c.to_dict() for c in self.checks]
        quarantined = [q.to_dict() for q in self.quarantined]
        if p.completing:
            # The tables already committed under this version keep their part of the earlier report.
            try:
                earlier = json.loads(self.store.get_bytes(keys["json"]))
                tables.update({t: v for t, v in earlier["tables"].items() if t not in outcomes})
                checks = [c for c in earlier["checks"] if c["table"] not in outcomes] + checks
            except (StoreError, KeyError, ValueError):
                log.info("no earlier report for %s to complete", p.version)
        for t, o in outcomes.items():
            if o.state is None:
                tables[t] = {"rows": 0, "stopped": True}
                continue
            tables[t] = {
                "rows": o.state.rows,
                "tombstones": o.state.tombstones,
                "events": o.events,
                "applied_files": len(o.applied_files),
                "files": o.applied_files[:200],
                "buckets": len(o.state.buckets),
                "buckets_rewritten": o.buckets_rewritten,
                "buckets_kept": o.buckets_kept,
                "data_files_added": len(o.added),
                "data_files_removed": len(o.deleted),
                "buckets_merged_on_read": o.buckets_on_read,
                "delete_files_added": len(o.added_deletes),
                "delete_files_removed": len(o.removed_deletes),
                "columns_added": o.write.added_columns if o.write else [],
                "watermark": o.state.cdc_watermark,
                "newest_change": o.state.newest_change.isoformat() if o.state.newest_change else None,
                "columns": column_summary(o.profile),
                "drift": drift(_profile(p.states.get(t)), o.profile),
            }
        for t in p.to_carry:
            tables[t] = {"rows": row_counts.get(t, 0), "carried": True}
        history = self._history(p, row_counts)
        report = build_report(
            version=p.version,
            status=status,
            dataset_prefix=self.spec.dataset_prefix,
            previous_version=p.published,
            tables=dict(sorted(tables.items())),
            checks=checks,
            quarantined=quarantined,
            history=history,
            created_at=self.now,
        )
        self.store.put_bytes(keys["json"], json.dumps(report, indent=2, default=str).encode())
        self.store.put_bytes(keys["html"], render_html(report).encode())
        return keys

    def _history(self, p: Plan, row_counts: dict[str, int]) -> list[dict[str, Any]]:
        """Row counts of the versions the tables still keep, then this one."""
        seen: dict[str, dict[str, Any]] = {}
        for t, head in p.heads.items():
            if head.table is None:
                continue
            for snapshot in head.table.snapshots():
                summary = summary_of(snapshot)
                v = summary.get(SUMMARY_PREFIX + "version")
                if not v or v == p.version:
                    continue
                entry = seen.setdefault(v, {"version": v, "created_at": None, "row_counts": {}})
                entry["row_counts"][t] = int(summary.get(SUMMARY_PREFIX + "state.rows", "0"))
                stamp = datetime.fromtimestamp(snapshot.timestamp_ms / 1000, UTC).isoformat()
                entry["created_at"] = entry["created_at"] or stamp
        ordered = sorted(seen.values(), key=lambda e: version_number(e["version"]) or 0)
        ordered.append({"version": p.version, "created_at": self.now.isoformat(), "row_counts": row_counts})
        return ordered[-HISTORY_LIMIT:]

    # -------------------------------------------------------------------------------------------- commit

    def _summary(self, p: Plan, state: TableState, outcome: TableOutcome | None) -> dict[str, str]:
        failed = [c.name for c in (outcome.checks if outcome else []) if not c.passed]
        applied = [k.rsplit("/", 1)[-1] for k in (outcome.applied_files if outcome else [])]
        summary = {
            SUMMARY_PREFIX + "version": p.version,
            DATASET_TABLES: dumps(p.members),
            SUMMARY_PREFIX + "events": dumps(outcome.events if outcome else {}),
            SUMMARY_PREFIX + "applied-files": dumps(applied[:APPLIED_FILES_IN_SUMMARY]),
            SUMMARY_PREFIX + "applied-files-count": str(len(applied)),
            SUMMARY_PREFIX + "validation": dumps(
                {"passed": True, "checks": len(outcome.checks) if outcome else 0, "failed_warnings": failed}
            ),
            SUMMARY_PREFIX + "report": report_keys("", p.version)["html"],
            SUMMARY_PREFIX + "snapshot-position": dumps(
                [self.spec.snapshot_position.isoformat() if self.spec.snapshot_position else None,
                 self.spec.snapshot_sequence]
            ),  # fmt: skip
        }
        if outcome is None:
            summary[SUMMARY_PREFIX + "carried"] = "true"
        summary.update(state.summary())
        return summary

    def commit(self, p: Plan, outcomes: dict[str, TableOutcome]) -> dict[str, dict[str, Any]]:
        """One commit per table, in name order; the version is published when the last one lands."""
        for t in sorted([*p.to_sync, *p.to_carry]):
            if t in outcomes:
                o = outcomes[t]
                write, state = o.write, o.state
                summary = self._summary(p, state, o)
                snapshot_id = write.commit(deleted=o.deleted, added=o.added, summary=summary, tag=p.version,
                                           added_deletes=o.added_deletes, removed_deletes=o.removed_deletes)
            else:
                head, state = p.heads[t], p.states[t]
                write = TableWrite(head, head.table.transaction(), head.bucketing)
                snapshot_id = write.commit(deleted=[], added=[], summary=self._summary(p, state, None), tag=p.version)
            log.info("committed %s as snapshot %s of %s", p.version, snapshot_id, ".".join(p.heads[t].identifier))
        return self.write_record(p.version)

    def write_record(self, version: str) -> dict[str, dict[str, Any]]:
        """The published version's record, for readers without the catalog; created once, never replaced."""
        namespace = self.spec.catalog.namespace
        record = version_record(open_version(self.catalog, namespace, version), namespace)
        key = record_key(self.spec.dataset_prefix, version)
        if self.store.put_bytes_if_absent(key, json.dumps(record, indent=2).encode()):
            log.info("recorded %s at %s", version, self.store.uri(key))
        return record["tables"]

    # -------------------------------------------------------------------------------------------- retention

    def retain(self, p: Plan) -> None:
        """Keep the newest ``retention`` versions; then delete files nothing kept references. Housekeeping:
        the version is published already, so a failure here is logged, never raised."""
        number = version_number(p.version) or 0
        keep = {version_name(n) for n in range(max(1, number - self.spec.retention + 1), number + 1)}
        for t in p.members:
            try:
                self._retain_table(p.heads[t], keep)
            except Exception:
                log.exception("Retention failed for %s; older versions are left in place", t)
        try:
            oldest = number - self.spec.retention + 1
            root = join_key(self.spec.dataset_prefix, REPORTS) + "/"
            for folder in self.store.list_dirs(root):
                name = folder[len(root) :].strip("/")
                if is_version(name) and version_number(name) < oldest:
                    self.store.delete_prefix(folder)
            records = join_key(self.spec.dataset_prefix, RECORDS) + "/"
            for info in list(self.store.list_after(records)):
                name = info.key[len(records) :].removesuffix(".json")
                if is_version(name) and version_number(name) < oldest:
                    self.store.delete(info.key)
        except Exception:
            log.exception("Removing old reports and version records failed; they are left in place")

    def _retain_table(self, head: TableHead, keep: set[str]) -> None:
        expire_versions(self.catalog, head.identifier, keep, is_version)
        table = self.catalog.load_table(head.identifier)
        # File ages are real time, not the ``now`` checks are judged at.
        cutoff = orphan_cutoff(table, datetime.now(UTC), self.spec.orphan_file_grace)
        referenced = {k for k in (self.store.key_of(f) for f in referenced_files(table)) if k}
        states = []
        for snapshot in table.snapshots():
            key = summary_of(snapshot).get(SUMMARY_PREFIX + "state")
            if key:
                states.append(join_key(self.spec.dataset_prefix, key))
        for key in states:
            referenced.add(key)
            try:
                sidecar = json.loads(self.store.get_bytes(key))
            except StoreError:
                continue
            for bucket in sidecar.get("buckets", {}).values():
                if bucket.get("tombstones_key"):
                    referenced.add(join_key(self.spec.dataset_prefix, bucket["tombstones_key"]))
        removed = 0
        location = self.store.key_of(table.location())
        if location is not None:
            removed += delete_unreferenced(self.store, location.rstrip("/") + "/", referenced, cutoff)
        else:
            log.info("%s lives outside the dataset's store (%s): its unreferenced files are left to the "
                     "catalog's own maintenance", ".".join(head.identifier), table.location())
        removed += delete_unreferenced(
            self.store, join_key(self.spec.dataset_prefix, STATE, head.name) + "/", referenced, cutoff
        )
        if removed:
            log.info("%s: deleted %d unreferenced file(s) older than %s", head.name, removed, cutoff.isoformat())


def _profile(state: TableState | None) -> Profile | None:
    if state is None:
        return None
    profile = Profile()
    for bucket in state.buckets.values():
        profile.add(Profile.from_json(bucket.profile))
    return profile
