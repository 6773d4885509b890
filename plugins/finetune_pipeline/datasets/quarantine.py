"""Bad landing files: moved aside, never deleted, with a JSON report next to each saying why; and what an
operator does with them.

Layout: ``<quarantine>/<schema>/<table>/<file name>`` and ``<...>.report.json``. The report is the record of
the file's case, and its ``status`` the one place its outcome is kept:

- ``open``: just quarantined. Under ``quarantine_and_stop`` an open file holds the whole dataset: no version
  is published, in this run or any later one (:func:`holds`), until an operator acts;
- ``released``: put back where DMS wrote it (fixed, or as it was) to be read again; the next sync takes it
  whatever its watermark says (:func:`released`), and marks it ``applied`` once a version holds it;
- ``discarded``: the operator accepts that the file's changes are lost; the file stays as evidence.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from finetune_pipeline.datasets.dms_format import DmsFile, DmsFileError, classify
from finetune_pipeline.datasets.store import ObjectStore, StoreError, join_key

log = logging.getLogger(__name__)

REPORT_SUFFIX = ".report.json"
# The quarantine's folder inside the dataset's, when no quarantine prefix is given.
DATASET_FOLDER = "quarantine"
STOP_POLICY = "quarantine_and_stop"
Status = Literal["open", "released", "applied", "discarded"]


class QuarantineError(Exception):
    """An operator's request that cannot be done as asked (no such file, already released, ...)."""


@dataclass(frozen=True)
class QuarantinedFile:
    table: str
    source_key: str
    quarantine_key: str
    report_key: str
    reason: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class QuarantineEntry:
    """One quarantined file's report, as stored."""

    report_key: str
    report: dict[str, Any]

    @property
    def table(self) -> str:
        return self.report["table"]

    @property
    def source_key(self) -> str:
        return self.report["source_key"]

    @property
    def quarantine_key(self) -> str:
        return self.report["quarantine_key"]

    @property
    def policy(self) -> str:
        return self.report.get("policy", "")

    @property
    def status(self) -> Status:
        return self.report.get("status", "open")

    @property
    def holds(self) -> bool:
        """An open file quarantined under ``quarantine_and_stop``: nothing is published while it is so."""
        return self.status == "open" and self.policy == STOP_POLICY

    def describe(self) -> str:
        r = self.report
        return (
            f"{self.quarantine_key} [{self.status}] {self.table} {r.get('policy')}: {r.get('reason')}: "
            f"{r.get('detail')} (from {self.source_key}, quarantined {r.get('quarantined_at')})"
        )


def table_folder(quarantine_prefix: str, table: str) -> str:
    schema_name, table_name = table.split(".", 1)
    return join_key(quarantine_prefix, schema_name, table_name)


def quarantine_file(
    store: ObjectStore,
    f: DmsFile,
    error: DmsFileError,
    *,
    table: str,
    quarantine_prefix: str,
    policy: str,
    now: datetime | None = None,
) -> QuarantinedFile:
    """Write the report, then move the file (copy + delete on S3) to <quarantine>/<schema>/<table>/<name>."""
    base = join_key(table_folder(quarantine_prefix, table), f.name)
    target = base
    n = 1
    # A second bad file of the same name (a DMS rewrite, a released file still bad) keeps the first's evidence.
    while store.exists(target) or store.exists(target + REPORT_SUFFIX):
        n += 1
        target = f"{base}.{n}"
    report_key = target + REPORT_SUFFIX
    report = {
        "table": table,
        "source_key": f.key,
        "source_uri": store.uri(f.key),
        "quarantine_key": target,
        "kind": f.kind.value,
        "format": f.fmt,
        "size": f.size,
        "etag": f.etag,
        "reason": error.reason,
        "detail": error.detail,
        "policy": policy,
        "quarantined_at": (now or datetime.now(UTC)).isoformat(),
        "status": "open",
    }
    store.put_bytes(report_key, json.dumps(report, indent=2).encode())
    store.move(f.key, target)
    log.warning("Quarantined %s -> %s (%s): %s", f.key, target, policy, error)
    return QuarantinedFile(table, f.key, target, report_key, error.reason, error.detail)


def entries(store: ObjectStore, quarantine_prefix: str, tables: list[str] | None = None) -> list[QuarantineEntry]:
    """Every quarantined file's report (of ``tables`` only, when given), oldest name first."""
    folders = [table_folder(quarantine_prefix, t) + "/" for t in tables] if tables is not None else [
        quarantine_prefix.rstrip("/") + "/"
    ]
    found = []
    for folder in folders:
        for info in store.list_after(folder):
            if not info.key.endswith(REPORT_SUFFIX):
                continue
            try:
                report = json.loads(store.get_bytes(info.key))
            except (StoreError, ValueError) as err:
                # An unreadable report might be a holding one: say so, and let it hold (see holds()).
                report = {"table": "?", "source_key": "?", "quarantine_key": info.key.removesuffix(REPORT_SUFFIX),
                          "policy": STOP_POLICY, "reason": "unreadable_report", "detail": str(err)}  # fmt: skip
            found.append(QuarantineEntry(info.key, report))
    return found


def holds(store: ObjectStore, quarantine_prefix: str, tables: list[str]) -> list[QuarantineEntry]:
    """The open ``quarantine_and_stop`` files of these tables: each holds publishing until an operator acts.

    Derived from quarantine/ itself, not from a flag kept elsewhere: the block lasts exactly as long as the
    file's report says it is open, whichever run, worker or operator looks.
    """
    return [e for e in entries(store, quarantine_prefix, tables) if e.holds]


def released(store: ObjectStore, quarantine_prefix: str, table: str, table_prefix: str) -> list[DmsFile]:
    """Files an operator put back and no version holds yet: the sync takes them whatever its watermark."""
    out = []
    for e in entries(store, quarantine_prefix, [table]):
        if e.status != "released":
            continue
        f = classify(e.source_key, table_prefix)
        if f is None or not store.exists(e.source_key):
            log.warning("released file %s is no longer in the landing folder; not taken", e.source_key)
            continue
        out.append(f)
    return out


def find(store: ObjectStore, quarantine_prefix: str, name: str) -> QuarantineEntry:
    """The entry named by its quarantine key, its report key, its source key or its file name (if unique)."""
    matches = [
        e for e in entries(store, quarantine_prefix)
        if name in (e.quarantine_key, e.report_key, e.source_key) or e.quarantine_key.rsplit("/", 1)[-1] == name
    ]  # fmt: skip
    if not matches:
        raise QuarantineError(f"no quarantined file {name!r} under {quarantine_prefix}")
    if len(matches) > 1:
        keys = ", ".join(e.quarantine_key for e in matches)
        raise QuarantineError(f"{name!r} names several quarantined files ({keys}); give the full key")
    return matches[0]


def _resolve(store: ObjectStore, entry: QuarantineEntry, status: Status, note: str, now: datetime | None,
             **extra: Any) -> QuarantineEntry:  # fmt: skip
    report = {
        **entry.report,
        "status": status,
        "resolved_at": (now or datetime.now(UTC)).isoformat(),
        "note": note,
        **extra,
    }
    store.put_bytes(entry.report_key, json.dumps(report, indent=2).encode())
    return QuarantineEntry(entry.report_key, report)


def release(
    store: ObjectStore, entry: QuarantineEntry, *, fixed: Path | None = None, note: str = "",
    now: datetime | None = None,
) -> QuarantineEntry:  # fmt: skip
    """Put the file back at its landing key (``fixed`` instead of the quarantined copy, when given), to be
    read again by the next sync. The quarantined copy stays until the report says ``released``, so a crash
    leaves either the case open or the file back, never neither."""
    if entry.status in ("released", "applied"):
        raise QuarantineError(f"{entry.quarantine_key} is already {entry.status}")
    if store.exists(entry.source_key):
        raise QuarantineError(f"{entry.source_key} exists in the landing folder already; nothing is overwritten")
    if fixed is not None:
        store.put_file(entry.source_key, fixed)
    else:
        store.copy(entry.quarantine_key, entry.source_key)
    done = _resolve(store, entry, "released", note or ("fixed file put back" if fixed else "put back as it was"),
                    now, released_from=str(fixed) if fixed else entry.quarantine_key)  # fmt: skip
    log.warning("Released %s back to %s", entry.quarantine_key, entry.source_key)
    return done


def discard(store: ObjectStore, entry: QuarantineEntry, *, note: str, now: datetime | None = None) -> QuarantineEntry:
    """Accept the loss of the file's changes: the case is closed, the file kept as evidence."""
    if not note.strip():
        raise QuarantineError("say why the file's changes may be lost (--reason)")
    if entry.status in ("released", "applied"):
        raise QuarantineError(f"{entry.quarantine_key} is {entry.status}: its changes are being or were applied")
    done = _resolve(store, entry, "discarded", note, now)
    log.warning("Discarded %s: %s", entry.quarantine_key, note)
    return done


def mark_applied(store: ObjectStore, quarantine_prefix: str, table: str, applied: set[str], version: str,
                 now: datetime | None = None) -> None:  # fmt: skip
    """Close the cases of released files a published version now holds."""
    for e in entries(store, quarantine_prefix, [table]):
        if e.status == "released" and e.source_key in applied:
            _resolve(store, e, "applied", f"applied in {version}", now, applied_in=version)
