"""Row counts from outside the dataset, and the checks that compare a published table with them.

The keys check (``row_count``: previous rows + keys the changes made live - keys they removed) and the file
check (``files_complete``) live with the table's sync.
The two here look beyond the change files:

- ``row_count_dms``: what DMS says it captured for the CDC task (``DescribeTableStatistics``): the rows at
  the snapshot + inserts - deletes. A difference means change files DMS wrote that this dataset did not
  apply (not landed yet, landed after the grace window, quarantined), or rows applied that DMS never sent.
- ``row_count_source``: ``COUNT(*)`` in the source database (or a replica), when a connection is given.

Both sides move while a sync runs (DMS keeps capturing, the source keeps changing), so each has a
tolerance and is a warning unless the contract makes it blocking.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from finetune_pipeline.datasets.contracts import TableContract
from finetune_pipeline.datasets.validate import CheckResult, row_count_result


@dataclass(frozen=True)
class DmsTableCounts:
    """One table's entry of DMS ``DescribeTableStatistics`` (rows DMS captured since the task started)."""

    inserts: int = 0
    updates: int = 0
    deletes: int = 0
    full_load_rows: int = 0

    @classmethod
    def from_api(cls, entry: dict[str, Any]) -> DmsTableCounts:
        return cls(
            inserts=int(entry.get("Inserts", 0)),
            updates=int(entry.get("Updates", 0)),
            deletes=int(entry.get("Deletes", 0)),
            full_load_rows=int(entry.get("FullLoadRows", 0)),
        )


@dataclass(frozen=True)
class OutsideCounts:
    """Counts to reconcile against. ``None`` means not asked for; a table absent from a dict means none."""

    dms: dict[str, DmsTableCounts] | None = None
    dms_task: str | None = None
    dms_error: str | None = None
    source: dict[str, int] | None = None
    source_name: str | None = None
    source_error: str | None = None
    taken_at: datetime | None = None

    @classmethod
    def from_dms_statistics(cls, entries: list[dict[str, Any]], task: str) -> OutsideCounts:
        """From ``DescribeTableStatistics``'s ``TableStatistics`` entries."""
        dms = {f"{e['SchemaName']}.{e['TableName']}": DmsTableCounts.from_api(e) for e in entries}
        return cls(dms=dms, dms_task=task)


def reconcile(
    contract: TableContract,
    rows: int,
    snapshot_rows: int | None,
    applied: dict[str, int],
    outside: OutsideCounts | None,
) -> list[CheckResult]:
    """The DMS and source checks that ``outside`` has counts for (none when it is None)."""
    if outside is None:
        return []
    checks = []
    if outside.dms is not None or outside.dms_error:
        checks.append(_dms_check(contract, rows, snapshot_rows, applied, outside))
    if outside.source is not None or outside.source_error:
        checks.append(_source_check(contract, rows, outside))
    return checks


def _tolerance(contract: TableContract, specific: float | None) -> float:
    return contract.row_count.tolerance if specific is None else specific


def _dms_check(
    contract: TableContract,
    rows: int,
    snapshot_rows: int | None,
    applied: dict[str, int],
    outside: OutsideCounts,
) -> CheckResult:
    task = outside.dms_task or "the CDC task"
    if outside.dms_error:
        return CheckResult(
            contract.table, "row_count_dms", contract.severity_of("row_count_dms"), False,
            f"not compared: {outside.dms_error}",
        )  # fmt: skip
    if snapshot_rows is None:
        return CheckResult(
            contract.table,
            "row_count_dms",
            contract.severity_of("row_count_dms"),
            False,
            "not compared: the previous version does not record its rows at the snapshot "
            "(it predates row tracking); run one full rebuild",
        )
    stats = outside.dms.get(contract.table) if outside.dms else None
    note = ""
    if stats is None:
        note = "no statistics for this table (nothing captured yet, or not in the task's table mappings); "
        stats = DmsTableCounts()
    # A task that ran the full load itself counts it; ours starts CDC at the snapshot, so the snapshot's rows
    # come from the full-load files the dataset was built from.
    base = stats.full_load_rows or snapshot_rows
    expected = base + stats.inserts - stats.deletes
    basis = (
        f"from DMS task {task}: {note}{base} at the snapshot + {stats.inserts} inserts - "
        f"{stats.deletes} deletes captured; this dataset applied {applied.get('I', 0)} inserts and "
        f"{applied.get('D', 0)} deletes"
    )
    return row_count_result(
        contract, "row_count_dms", rows, expected, _tolerance(contract, contract.row_count.dms_tolerance), basis
    )


def _source_check(contract: TableContract, rows: int, outside: OutsideCounts) -> CheckResult:
    where = f"connection {outside.source_name}" if outside.source_name else "the source"
    count = outside.source.get(contract.table) if outside.source else None
    if count is None:
        why = outside.source_error or f"no count of {contract.table} from {where}"
        return CheckResult(
            contract.table,
            "row_count_source",
            contract.severity_of("row_count_source"),
            False,
            f"not compared: {why}",
        )
    when = f" at {outside.taken_at.isoformat(timespec='seconds')}" if outside.taken_at else ""
    return row_count_result(
        contract,
        "row_count_source",
        rows,
        count,
        _tolerance(contract, contract.row_count.source_tolerance),
        f"counted in the source through {where}{when}",
    )
