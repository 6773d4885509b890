"""PostgreSQL's ``test_decoding`` output, parsed into row changes, and PostgreSQL values as DMS types them.

DMS reads a PostgreSQL source through a logical replication slot with the ``test_decoding`` plugin
(https://docs.aws.amazon.com/dms/latest/userguide/CHAP_Task.CDC.html: "For PostgreSQL, AWS DMS sets up
logical replication slots and uses the test_decoding plugin"). The plugin prints one line per change::

    BEGIN 756
    table public.t: INSERT: id[integer]:1 name[text]:'it''s' amount[numeric]:12.50
    table public.t: UPDATE: old-key: id[integer]:1 new-tuple: id[integer]:2 name[text]:'b' ...
    table public.t: DELETE: id[integer]:2
    COMMIT 756 (at 2026-12-01 06:59:33.271503+00)

(contrib/test_decoding/test_decoding.c: identifiers through ``quote_identifier``, values through the type's
output function, quoted unless numeric or boolean, ``null``, and ``unchanged-toast-datum`` for a TOASTed
value an UPDATE did not change.)

Types follow the DMS user guide's PostgreSQL source mapping (CHAP_Source.PostgreSQL, "Source data types for
PostgreSQL") and its S3 Parquet target mapping (CHAP_Target.S3, "Target data types for S3 Parquet").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, time

import pyarrow as pa

# A value the UPDATE left unchanged because it is TOASTed; DMS looks it up in the source table instead.
UNCHANGED = object()

_IDENT = r'(?:"(?:[^"]|"")*"|[^\s"\[.:]+)'
_TABLE_HEAD = re.compile(rf"^table ({_IDENT})\.({_IDENT}): (INSERT|UPDATE|DELETE|TRUNCATE): ")
_COMMIT = re.compile(r"^COMMIT (\d+)(?: \(at (.+)\))?$")
_BEGIN = re.compile(r"^BEGIN (\d+)$")
OPS = {"INSERT": "I", "UPDATE": "U", "DELETE": "D"}


@dataclass(slots=True)
class RowChange:
    """One row change: its table, I/U/D, and (name, type, text value) of each column it carries."""

    schema: str
    table: str
    op: str
    names: tuple[str, ...]
    types: tuple[str, ...]
    values: list  # str | None | UNCHANGED, aligned with names
    key_changed: bool = False  # an UPDATE that changed the primary key (old-key: ... new-tuple: ...)
    size: int = 0  # the line's length: about what the change takes in a CSV file (for CdcMinFileSize)


@dataclass(slots=True)
class Transaction:
    """A committed transaction as the slot returns it: whole, with the end LSN of its commit record."""

    xid: int
    end_lsn: int = 0
    commit_time: datetime | None = None
    changes: list[RowChange] = field(default_factory=list)
    truncated: list[tuple[str, str]] = field(default_factory=list)


def parse_lsn(text: str) -> int:
    """``0/1AF7CB8`` (PostgreSQL's pg_lsn text form) as an integer; ValueError otherwise."""
    high, sep, low = text.strip().partition("/")
    if not sep or not re.fullmatch(r"[0-9A-Fa-f]{1,8}", high) or not re.fullmatch(r"[0-9A-Fa-f]{1,8}", low):
        raise ValueError(f"not a PostgreSQL LSN: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def unquote_identifier(text: str) -> str:
    return text[1:-1].replace('""', '"') if text.startswith('"') else text


def _value(raw: str):
    if raw == "null":
        return None
    if raw == "unchanged-toast-datum":
        return UNCHANGED
    if raw.startswith("'"):
        return raw[1:-1].replace("''", "'")
    if raw.startswith("B'"):
        return raw[2:-1]
    return raw


def _value_at(text: str, pos: int) -> tuple[object, int]:
    """The value starting at ``pos`` and where the next column starts; a quoted value may hold spaces,
    newlines and doubled quotes."""
    if text.startswith("'", pos):
        close = pos + 1
        doubled = False
        while True:
            close = text.find("'", close)
            if text.startswith("'", close + 1):
                close += 2
                doubled = True
                continue
            break
        value = text[pos + 1 : close]
        return (value.replace("''", "'") if doubled else value), close + 2
    space = text.find(" ", pos)
    if space < 0:
        space = len(text)
    return _value(text[pos:space]), space + 1


def _columns(text: str) -> tuple[tuple[str, ...], tuple[str, ...], list, tuple[str, ...]]:
    """Split ``name[type]:value name[type]:value ...`` with str.find, which is several times faster than a regex
    over long rows. Also returns each column's ``name[type]:`` text, which :func:`_values_as` matches."""
    names, types, values, prefixes = [], [], [], []
    pos, end = 0, len(text)
    find = text.find
    while pos < end:
        start = pos
        if text[pos] == '"':
            close = pos + 1
            while True:
                close = find('"', close)
                if text.startswith('"', close + 1):
                    close += 2
                    continue
                break
            names.append(text[pos + 1 : close].replace('""', '"'))
            pos = close + 1
        else:
            bracket = find("[", pos)
            names.append(text[pos:bracket])
            pos = bracket
        colon = find("]:", pos)
        types.append(text[pos + 1 : colon])
        pos = colon + 2
        prefixes.append(text[start:pos])
        value, pos = _value_at(text, pos)
        values.append(value)
    return tuple(names), tuple(types), values, tuple(prefixes)


def _values_as(text: str, prefixes: tuple[str, ...]) -> list | None:
    """The values of a row whose columns are exactly ``prefixes`` (the ``name[type]:`` of each, in order),
    else None. A table's rows repeat their names and types: checking each with one ``startswith`` halves the
    cost of a change, the replication's main cost."""
    values = []
    pos = 0
    startswith = text.startswith
    for prefix in prefixes:
        if not startswith(prefix, pos):
            return None
        value, pos = _value_at(text, pos + len(prefix))
        values.append(value)
    return values if pos >= len(text) else None


# A table's columns as its last change of a kind carried them: (names, types, prefixes) by (head, action).
Layouts = dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]


def parse_change(data: str, layouts: Layouts | None = None) -> RowChange | tuple[str, str] | None:
    """A ``table ...`` line as a RowChange, a TRUNCATE as its (schema, table), anything else None. ``layouts``:
    where to keep each table's columns, so that the next change of it is split faster."""
    head = _TABLE_HEAD.match(data)
    if head is None:
        return None  # e.g. a logical decoding message
    schema, table = unquote_identifier(head.group(1)), unquote_identifier(head.group(2))
    action = head.group(3)
    if action == "TRUNCATE":
        return schema, table
    rest = data[head.end() :]
    key_changed = False
    if action == "UPDATE" and rest.startswith("old-key: "):
        # Only the new tuple matters to the target; the old key tells that the primary key changed.
        _, _, rest = rest.partition(" new-tuple: ")
        key_changed = True
    if rest == "(no-tuple-data)":
        names, types, values = (), (), []
    else:
        key = (head.group(0), action)
        known = layouts.get(key) if layouts is not None else None
        values = _values_as(rest, known[2]) if known is not None else None
        if values is not None:
            names, types = known[0], known[1]
        else:
            names, types, values, prefixes = _columns(rest)
            if layouts is not None:
                layouts[key] = (names, types, prefixes)
    return RowChange(schema, table, OPS[action], names, types, values, key_changed, len(data))


def parse_commit(data: str) -> tuple[int, datetime | None] | None:
    match = _COMMIT.match(data)
    if match is None:
        return None
    return int(match.group(1)), (parse_timestamptz(match.group(2)) if match.group(2) else None)


def parse_begin(data: str) -> int | None:
    match = _BEGIN.match(data)
    return int(match.group(1)) if match else None


def parse_timestamptz(text: str) -> datetime:
    """A timestamptz in PostgreSQL's ISO output (``2026-12-01 06:59:33.27+00``) as an aware UTC datetime."""
    return datetime.fromisoformat(text).astimezone(UTC)


# ------------------------------------------------------------------------------------------------ types

# DMS's documented default for NUMERIC without precision and scale (CHAP_Source.PostgreSQL, data types).
DEFAULT_NUMERIC = (28, 6)
_INTEGERS = {"smallint": pa.int16(), "integer": pa.int32(), "bigint": pa.int64(), "oid": pa.int64()}
_FLOATS = {"real": pa.float32(), "double precision": pa.float64()}
_NUMERIC_MOD = re.compile(r"^numeric\((\d+),(\d+)\)$")
# PostgreSQL prints these as 'infinity'; DMS truncates them to '9999-12-31 23:59:59' and '4713-01-01 00:00:00 BC'
# (CHAP_Source.PostgreSQL, TIMESTAMP row); Arrow has no year before 1, so -infinity becomes 0001-01-01.
_TS_INFINITY = {"infinity": "9999-12-31 23:59:59", "-infinity": "0001-01-01 00:00:00"}


@dataclass(frozen=True)
class ColumnType:
    """A source column's type as PostgreSQL formats it (``format_type`` with its typmod), and its DMS type."""

    pg_type: str
    parquet_ms: bool = False  # ParquetTimestampInMillisecond
    boolean_as_boolean: bool = False  # PostgreSQLSettings.MapBooleanAsBoolean

    @property
    def base(self) -> str:
        return self.pg_type.split("(", 1)[0].strip()

    def arrow_type(self) -> pa.DataType:
        base, unit = self.base, "ms" if self.parquet_ms else "us"
        if self.pg_type.endswith("[]"):
            return pa.string()  # ARRAY -> NCLOB -> STRING
        if base in _INTEGERS:
            return _INTEGERS[base]
        if base in _FLOATS:
            return _FLOATS[base]
        if base == "numeric":
            precision, scale = self.numeric_precision()
            # NUMERIC(p,s) with p from 0 to 38 is NUMERIC; 39 or more is STRING.
            return pa.decimal128(precision, scale) if precision <= 38 else pa.string()
        if base == "money":
            return pa.decimal128(38, 4)  # MONEY -> NUMERIC(38,4)
        if base in ("timestamp with time zone", "timestamp without time zone", "timestamp"):
            return pa.timestamp(unit)  # TIMESTAMP [(z)] -> DATETIME -> TIMESTAMP, written in UTC
        if base == "date":
            return pa.date32()
        if base in ("time without time zone", "time"):
            return pa.time32("ms")  # TIME -> TIME -> TIME32
        if base == "bytea":
            return pa.binary()  # BYTEA -> BLOB -> BINARY
        if base == "boolean" and self.boolean_as_boolean:
            return pa.bool_()
        # BOOLEAN -> CHAR(5) 'true'/'false' by default; text, varchar, uuid, json, enums... -> STRING
        return pa.string()

    def numeric_precision(self) -> tuple[int, int]:
        match = _NUMERIC_MOD.match(self.pg_type.replace(" ", ""))
        return (int(match.group(1)), int(match.group(2))) if match else DEFAULT_NUMERIC

    def to_arrow(self, values: list) -> pa.Array:
        """Text values (PostgreSQL's output form, None for NULL) as an array of the DMS type."""
        target = self.arrow_type()
        base = self.base
        if base == "boolean":
            texts = [None if v is None else ("true" if v in ("t", "true") else "false") for v in values]
            strings = pa.array(texts, pa.string())
            return strings.cast(pa.bool_()) if pa.types.is_boolean(target) else strings
        if pa.types.is_timestamp(target):
            zoned = base == "timestamp with time zone"
            suffix = "+00" if zoned else ""
            texts = [v if v is None or v not in _TS_INFINITY else _TS_INFINITY[v] + suffix for v in values]
            parsed = pa.array(texts, pa.string()).cast(pa.timestamp("us", tz="UTC" if zoned else None))
            if zoned:
                parsed = parsed.cast(pa.int64()).cast(pa.timestamp("us"))
            return parsed.cast(target, safe=False)
        if pa.types.is_time32(target):
            return pa.array([None if v is None else _ms_of_day(v) for v in values], pa.int32()).cast(target)
        if pa.types.is_binary(target):
            return pa.array([None if v is None else bytes.fromhex(v[2:]) for v in values], pa.binary())
        strings = pa.array(values, pa.string())
        if pa.types.is_string(target):
            return strings
        if pa.types.is_decimal(target) and base == "money":
            strings = pa.array([None if v is None else re.sub(r"[^0-9.\-]", "", v) for v in values], pa.string())
        return strings.cast(target)


def _ms_of_day(text: str) -> int:
    moment = time.fromisoformat(text.split("+")[0].split("-")[0])
    return ((moment.hour * 60 + moment.minute) * 60 + moment.second) * 1000 + moment.microsecond // 1000
