"""A replication task's TableMappings: which tables it selects, and the columns its transformation rules add.

https://docs.aws.amazon.com/dms/latest/userguide/CHAP_Tasks.CustomizingTasks.TableMapping.SelectionTransformation.html:
selection rules include or exclude tables (``%`` and ``_`` wildcards, ``explicit`` naming one table);
transformation rules with ``rule-action: add-column`` add a column whose value comes from an expression. Of the
header expressions (...SelectionTransformation.Expressions.html, "Replicating source table headers") localaws
computes ``$AR_H_CHANGE_SEQ``: "a 35 digit unique number at task level. The first 16 digits are part of a
timestamp, and the last 19 digits are the record_id number incremented by the DBMS."
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime

CHANGE_SEQ = "$AR_H_CHANGE_SEQ"
# DMS's own artifacts in the source (heartbeat, DDL audit) are never replicated.
DMS_ARTIFACT_PREFIX = "awsdms_"


def _rules(table_mappings: str | None) -> list[dict]:
    try:
        rules = json.loads(table_mappings or "{}").get("rules") or []
    except (ValueError, AttributeError):
        return []  # AWS refuses such mappings at CreateReplicationTask; moto stores them as they come
    return [rule for rule in rules if isinstance(rule, dict)]


def _locator(rule: dict, wildcards: bool) -> tuple[re.Pattern, re.Pattern]:
    locator = rule.get("object-locator") or {}
    return (
        _name_pattern(str(locator.get("schema-name", "%")), wildcards),
        _name_pattern(str(locator.get("table-name", "%")), wildcards),
    )


@dataclass(frozen=True)
class SelectionRules:
    """A table is selected when an include or explicit rule matches it and no exclude rule does. Names match
    case-sensitively, with DMS's wildcards in include/exclude rules."""

    include: tuple[tuple[re.Pattern, re.Pattern], ...] = ()
    exclude: tuple[tuple[re.Pattern, re.Pattern], ...] = ()

    @classmethod
    def parse(cls, table_mappings: str | None) -> SelectionRules:
        include, exclude = [], []
        for rule in _rules(table_mappings):
            if rule.get("rule-type") != "selection":
                continue
            action = rule.get("rule-action")
            names = _locator(rule, wildcards=action != "explicit")  # an explicit rule names exactly one table
            if action in ("include", "explicit"):
                include.append(names)
            elif action == "exclude":
                exclude.append(names)
        return cls(tuple(include), tuple(exclude))

    def selects(self, schema: str, table: str) -> bool:
        if table.startswith(DMS_ARTIFACT_PREFIX):
            return False

        def matches(rules: tuple[tuple[re.Pattern, re.Pattern], ...]) -> bool:
            return any(s.fullmatch(schema) and t.fullmatch(table) for s, t in rules)

        return matches(self.include) and not matches(self.exclude)


@dataclass(frozen=True)
class ChangeSequenceColumns:
    """The ``add-column`` rules whose expression is ``$AR_H_CHANGE_SEQ``: (schema, table patterns, column name)."""

    rules: tuple[tuple[re.Pattern, re.Pattern, str], ...] = ()

    @classmethod
    def parse(cls, table_mappings: str | None) -> ChangeSequenceColumns:
        found = []
        for rule in _rules(table_mappings):
            if (
                rule.get("rule-type") == "transformation"
                and rule.get("rule-target") == "column"
                and rule.get("rule-action") == "add-column"
                and str(rule.get("expression", "")).strip() == CHANGE_SEQ
                and rule.get("value")
            ):
                schema, table = _locator(rule, wildcards=True)
                found.append((schema, table, str(rule["value"])))
        return cls(tuple(found))

    def for_table(self, schema: str, table: str) -> tuple[str, ...]:
        names: list[str] = []
        for schema_pattern, table_pattern, name in self.rules:
            if schema_pattern.fullmatch(schema) and table_pattern.fullmatch(table) and name not in names:
                names.append(name)
        return tuple(names)


class ChangeSequence:
    """:func:`change_sequence` for the changes of one transaction, with its prefix computed once."""

    __slots__ = ("_base", "_stamp")

    def __init__(self, commit_time: datetime, commit_lsn: int):
        self._stamp = f"{commit_time:%Y%m%d%H%M%S}{commit_time.microsecond // 10000:02d}"
        self._base = (commit_lsn & ((1 << 43) - 1)) << 20

    def of(self, index: int) -> str:
        return f"{self._stamp}{self._base | min(index, (1 << 20) - 1):019d}"


def change_sequence(commit_time: datetime, commit_lsn: int, index: int) -> str:
    """``$AR_H_CHANGE_SEQ`` of the ``index``-th change of the transaction whose commit record ends at ``commit_lsn``.

    16 digits of the commit time (to the hundredth of a second), then 19 digits that grow in commit order and,
    within a transaction, in change order: the commit LSN (43 bits, 8 TB of WAL before it wraps) above a 20-bit
    change number. The same change always gets the same number, so a change replayed after a restart is an
    exact duplicate of the first copy.
    """
    stamp = f"{commit_time:%Y%m%d%H%M%S}{commit_time.microsecond // 10000:02d}"
    record = ((commit_lsn & ((1 << 43) - 1)) << 20) | min(index, (1 << 20) - 1)
    return f"{stamp}{record:019d}"


def _name_pattern(name: str, wildcards: bool) -> re.Pattern:
    """A table-mapping schema or table name as a regex: ``%`` any run, ``_`` one character, ``[ab]``/``[a-d]``
    a set or range (so ``[_]`` is a literal underscore)."""
    if not wildcards:
        return re.compile(re.escape(name))
    parts, i = [], 0
    while i < len(name):
        char = name[i]
        end = name.find("]", i + 2) if char == "[" else -1
        if char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        elif end > 0:
            parts.append("[" + "".join(c if c == "-" else re.escape(c) for c in name[i + 1 : end]) + "]")
            i = end
        else:
            parts.append(re.escape(char))
        i += 1
    return re.compile("".join(parts), re.DOTALL)
