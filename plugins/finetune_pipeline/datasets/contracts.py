"""Per-table data contracts: a typed model of include/contracts/<schema>.<table>.yaml."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from finetune_pipeline.datasets.dms_target import RESERVED_COLUMNS, TIMESTAMP_COLUMN

Severity = Literal["blocking", "warning"]
CheckKind = Literal[
    "schema",
    "not_null",
    "primary_key",
    "allowed_values",
    "range",
    "regex",
    "freshness",
    "row_count",
    "row_count_dms",
    "row_count_source",
    "files_complete",
]
DEFAULT_SEVERITY: dict[str, Severity] = {
    "schema": "blocking",
    "not_null": "blocking",
    "primary_key": "blocking",
    "allowed_values": "blocking",
    "range": "blocking",
    "regex": "blocking",
    "freshness": "warning",
    "row_count": "blocking",
    # DMS statistics and the source keep moving while the sync runs, so by default a difference beyond the
    # tolerance is reported, not blocking; a contract can make either blocking.
    "row_count_dms": "warning",
    "row_count_source": "warning",
    # Every change file listed behind and after the watermark was taken, by this sync or an earlier one.
    "files_complete": "blocking",
}

_SIMPLE_TYPES = {
    "bool": pa.bool_(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "double": pa.float64(),
    "string": pa.string(),
    "date32": pa.date32(),
}
_TS_RE = re.compile(r"^timestamp\[(s|ms|us|ns)(?:,\s*(?:tz=)?([A-Za-z0-9_/+\-:]+))?\]$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ContractError(ValueError):
    """A contract file is missing or invalid; the message names the file and the field."""


def parse_arrow_type(text: str) -> pa.DataType:
    """'int64', 'string', 'timestamp[us, UTC]' ... -> the Arrow type."""
    value = text.strip()
    if value in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[value]
    match = _TS_RE.match(value)
    if match:
        return pa.timestamp(match.group(1), tz=match.group(2))
    raise ValueError(f"unknown type {text!r}; use one of {sorted(_SIMPLE_TYPES)} or timestamp[us, UTC]")


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return timedelta(seconds=float(match.group(1)) * _DURATION_UNITS[match.group(2)])
    return value


class ColumnSpec(BaseModel):
    """One column: its type and the value checks on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    type: str
    nullable: bool = True
    allowed_values: list[Any] | None = None
    min: float | int | str | None = None
    max: float | int | str | None = None
    regex: str | None = None

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        parse_arrow_type(value)
        return value

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"invalid regular expression: {err}") from err
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ColumnSpec:
        arrow = self.arrow_type
        if self.regex is not None and not pa.types.is_string(arrow):
            raise ValueError("regex applies only to string columns")
        if (self.min is not None or self.max is not None) and not (
            pa.types.is_integer(arrow) or pa.types.is_floating(arrow) or pa.types.is_temporal(arrow)
        ):
            raise ValueError("min/max apply only to numeric or temporal columns")
        for bound in ("min", "max"):
            value = getattr(self, bound)
            if value is not None:
                try:
                    self.bound(bound)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
                    raise ValueError(f"{bound} {value!r} does not fit type {self.type}") from err
        if (
            self.min is not None
            and self.max is not None
            and self.bound("min").as_py() > self.bound("max").as_py()
        ):
            raise ValueError("min is greater than max")
        if self.allowed_values is not None:
            try:
                pa.array(self.allowed_values).cast(arrow)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
                raise ValueError(f"allowed_values do not fit type {self.type}") from err
        return self

    @property
    def arrow_type(self) -> pa.DataType:
        return parse_arrow_type(self.type)

    def bound(self, which: Literal["min", "max"]) -> pa.Scalar:
        """min or max as a scalar of the column's type (timestamps may be given as ISO strings)."""
        return pa.scalar(getattr(self, which)).cast(self.arrow_type)


class FreshnessSpec(BaseModel):
    """The newest change must be at most max_lag old (max_lag as seconds, '15m', '2h', '1d' or ISO 8601)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_lag: timedelta
    column: str = TIMESTAMP_COLUMN

    @field_validator("max_lag", mode="before")
    @classmethod
    def _parse_duration(cls, value: Any) -> Any:
        return _duration(value)


class RowCountSpec(BaseModel):
    """Allowed relative differences between the published row count and each expected one.

    ``tolerance`` is against the keys (previous rows + keys the changes made live - keys they removed, which
    DMS's at-least-once delivery cannot upset); ``dms_tolerance`` against DMS's
    table statistics and ``source_tolerance`` against a count in the source database, both ``tolerance``
    when unset.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tolerance: float = Field(default=0.0, ge=0.0)
    dms_tolerance: float | None = Field(default=None, ge=0.0)
    source_tolerance: float | None = Field(default=None, ge=0.0)


class BadFilePolicy(StrEnum):
    QUARANTINE_AND_CONTINUE = "quarantine_and_continue"
    QUARANTINE_AND_STOP = "quarantine_and_stop"


class ExtraColumnPolicy(StrEnum):
    """A landing file with columns the contract does not name (the source gained a column): ``warn`` applies
    the file without them and says so in the report; ``reject`` makes it a bad file (``bad_file_policy``)."""

    WARN = "warn"
    REJECT = "reject"


class TableContract(BaseModel):
    """What one table must look like before a version of it is published."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    table: str = Field(pattern=r"^[A-Za-z0-9_]+\.[A-Za-z0-9_]+$")
    primary_key: list[str] = Field(min_length=1)
    columns: list[ColumnSpec] = Field(min_length=1)
    freshness: FreshnessSpec | None = None
    row_count: RowCountSpec = RowCountSpec()
    severity: dict[CheckKind, Severity] = Field(default_factory=dict)
    bad_file_policy: BadFilePolicy = BadFilePolicy.QUARANTINE_AND_CONTINUE
    extra_columns: ExtraColumnPolicy = ExtraColumnPolicy.WARN

    @model_validator(mode="after")
    def _consistent(self) -> TableContract:
        names = [c.name for c in self.columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate column names: {dupes}")
        reserved = sorted(set(names) & set(RESERVED_COLUMNS))
        if reserved:
            raise ValueError(f"column names reserved for DMS metadata: {reserved}")
        for key in self.primary_key:
            if key not in names:
                raise ValueError(f"primary_key column {key!r} is not in columns")
            if self.column(key).nullable:
                raise ValueError(f"primary_key column {key!r} must be nullable: false")
        if self.freshness and self.freshness.column not in (*names, TIMESTAMP_COLUMN):
            raise ValueError(f"freshness.column {self.freshness.column!r} is not a column")
        return self

    @property
    def schema_name(self) -> str:
        return self.table.split(".", 1)[0]

    @property
    def table_name(self) -> str:
        return self.table.split(".", 1)[1]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnSpec:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    def severity_of(self, kind: str) -> Severity:
        return self.severity.get(kind, DEFAULT_SEVERITY[kind])  # type: ignore[call-overload]

    def arrow_schema(self) -> pa.Schema:
        """The table's own columns, all nullable in Arrow (nullability is enforced as a check)."""
        return pa.schema([pa.field(c.name, c.arrow_type) for c in self.columns])

    def fingerprint(self) -> str:
        """Stable hash of the contract's content: a changed contract forces re-validation of every bucket."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _describe(err: dict, data: Any) -> str:
    parts: list[str] = []
    node = data
    for loc in err["loc"]:
        if isinstance(loc, int) and isinstance(node, list) and 0 <= loc < len(node):
            name = node[loc].get("name") if isinstance(node[loc], dict) else None
            parts[-1] = f"{parts[-1]}[{loc}]" + (f"({name})" if name else "")
            node = node[loc]
            continue
        parts.append(str(loc))
        node = node.get(loc) if isinstance(node, dict) else None
    where = ".".join(parts) or "<root>"
    return f"{where}: {err['msg']}"


def parse_contract(data: Any, source: str = "<contract>") -> TableContract:
    """Validate a contract mapping; ContractError lists each bad field by path."""
    if not isinstance(data, dict):
        raise ContractError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return TableContract.model_validate(data)
    except ValidationError as err:
        lines = "; ".join(_describe(e, data) for e in err.errors())
        raise ContractError(f"{source}: {lines}") from None


def load_contract(path: str | Path) -> TableContract:
    """Read and validate one YAML contract. The file name must be <schema>.<table>.yaml matching `table`."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ContractError(f"{path}: contract file not found") from None
    except yaml.YAMLError as err:
        raise ContractError(f"{path}: not valid YAML: {err}") from None
    contract = parse_contract(data, str(path))
    if path.name not in (f"{contract.table}.yaml", f"{contract.table}.yml"):
        raise ContractError(f"{path}: table: {contract.table!r} does not match the file name")
    return contract


def load_contracts(directory: str | Path) -> dict[str, TableContract]:
    """Every <schema>.<table>.yaml in a folder, keyed by 'schema.table'.

    :raises ContractError: the folder is missing or holds no contract: a dataset with no tables is never what
        was meant (a wrong path, a failed deploy), and publishing one would hide every table from training.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ContractError(f"{directory}: contracts folder not found")
    contracts = {}
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        contract = load_contract(path)
        contracts[contract.table] = contract
    if not contracts:
        raise ContractError(f"{directory}: no contracts (<schema>.<table>.yaml) in the contracts folder")
    return contracts
