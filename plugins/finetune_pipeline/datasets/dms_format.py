"""AWS DMS's S3 target format: file names, reading files as typed change events, and writing such files.

Layout: ``<root>/<schema>/<table>/LOAD00000001.parquet`` (full load, hex counter) and CDC files named by time,
``<root>/<schema>/<table>/20261126-093012345.parquet`` (yyyyMMdd-HHmmssSSS), so key order is time order. DMS
names them to the millisecond, as its transaction files (``CDC_TXN-20201117153046033.csv``) and walkthroughs
(``20221023-013830913.parquet``) show; the user guide's one example with a tenth digit, ``20141029-1134010000.csv``,
is read too (the extra digit as tenths of a millisecond), and sorts among 9-digit names in time order.
Columns: ``Op`` (I/U/D; with IncludeOpForFullLoad the LOAD rows carry I), the commit timestamp added by the
TimestampColumnName setting (a STRING ``yyyy-MM-dd HH:mm:ss.SSSSSS``, here ``_dms_ts``), the change sequence
from the ``$AR_H_CHANGE_SEQ`` header (35 digits, here ``_dms_seq``), then the table's columns. DMS writes CSV
without a header row unless AddColumnName is set; a header-less file's columns come from the contract.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from finetune_pipeline.datasets.dms_target import OP_COLUMN as OP
from finetune_pipeline.datasets.dms_target import SEQUENCE_COLUMN as SEQ
from finetune_pipeline.datasets.dms_target import SEQUENCE_LENGTH as SEQ_LENGTH
from finetune_pipeline.datasets.dms_target import TIMESTAMP_COLUMN as TS

if TYPE_CHECKING:  # annotations only: the snapshot export imports this module without pydantic
    from finetune_pipeline.datasets.contracts import TableContract

OPS = ("I", "U", "D")
DMS_TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
Format = Literal["parquet", "csv"]

_CDC_RE = re.compile(r"^(\d{8}-\d{9,10})\.(parquet|csv)$")
_LOAD_RE = re.compile(r"^LOAD([0-9A-F]{8})\.(parquet|csv)$")
_TS_TYPE = pa.timestamp("us", tz="UTC")


class FileKind(StrEnum):
    LOAD = "load"
    CDC = "cdc"


@dataclass(frozen=True)
class DmsFile:
    """A landing object recognised as a DMS data file."""

    key: str
    kind: FileKind
    fmt: Format
    size: int = 0
    etag: str = ""

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class CsvSettings:
    """How DMS writes CSV (S3 endpoint settings AddColumnName, IncludeOpForFullLoad, CsvNullValue)."""

    header: bool = False
    include_op_for_full_load: bool = True
    delimiter: str = ","
    null_value: str = ""


class DmsFileError(Exception):
    """A landing file that cannot be applied; ``reason`` is a short code, ``detail`` says what and where."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class FileShape:
    """What a quick look at a file (Parquet footer, CSV header) found before reading its rows."""

    rows: int | None
    data_bytes: int
    extra_columns: list[str] = field(default_factory=list)
    filled_columns: list[str] = field(default_factory=list)


def cdc_file_name(ts: datetime, fmt: Format = "parquet") -> str:
    """DMS CDC file name for a time: yyyyMMdd-HHmmssSSS.<fmt> (UTC)."""
    ts = ts.astimezone(UTC) if ts.tzinfo else ts
    return f"{ts:%Y%m%d-%H%M%S}{ts.microsecond // 1000:03d}.{fmt}"


def load_file_name(n: int, fmt: Format = "parquet") -> str:
    """DMS full-load file name: LOAD + 8-digit upper-case hex counter starting at 1."""
    if n < 1:
        raise ValueError("full-load files are numbered from 1")
    return f"LOAD{n:08X}.{fmt}"


def cdc_name_time(name: str) -> datetime:
    """The time encoded in a CDC file name."""
    match = _CDC_RE.match(name.rsplit("/", 1)[-1])
    if not match:
        raise ValueError(f"not a DMS CDC file name: {name!r}")
    stamp = match.group(1)
    return datetime.strptime(stamp.ljust(21, "0"), "%Y%m%d-%H%M%S%f").replace(tzinfo=UTC)


def classify(key: str, table_prefix: str, size: int = 0, etag: str = "") -> DmsFile | None:
    """A key directly under table_prefix that DMS would have written, else None (sub-folders, other files)."""
    rest = key[len(table_prefix) :].lstrip("/") if key.startswith(table_prefix) else None
    if not rest or "/" in rest:
        return None
    if match := _CDC_RE.match(rest):
        return DmsFile(key, FileKind.CDC, match.group(2), size, etag)  # type: ignore[arg-type]
    if match := _LOAD_RE.match(rest):
        return DmsFile(key, FileKind.LOAD, match.group(2), size, etag)  # type: ignore[arg-type]
    return None


def event_schema(contract: TableContract) -> pa.Schema:
    """Schema of normalised change events: Op, _dms_ts (timestamp[us, UTC]), _dms_seq, then the table."""
    lead = [pa.field(OP, pa.string()), pa.field(TS, _TS_TYPE), pa.field(SEQ, pa.string())]
    return pa.schema([*lead, *contract.arrow_schema()])


# ---------------------------------------------------------------------------------------------------- types


def _base(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def compatible(src: pa.DataType, dst: pa.DataType) -> bool:
    """True if src converts to dst without changing meaning (same type or a widening); else a type change."""
    src = _base(src)
    if src == dst or pa.types.is_null(src):
        return True
    if pa.types.is_string(dst):
        return pa.types.is_string(src) or pa.types.is_large_string(src) or pa.types.is_string_view(src)
    if pa.types.is_integer(dst) and pa.types.is_integer(src):
        if pa.types.is_signed_integer(src) and pa.types.is_unsigned_integer(dst):
            return False
        widen = src.bit_width < dst.bit_width
        return (
            widen
            if pa.types.is_signed_integer(dst) == pa.types.is_signed_integer(src)
            else (pa.types.is_unsigned_integer(src) and widen)
        )
    if pa.types.is_floating(dst) and pa.types.is_floating(src):
        return src.bit_width <= dst.bit_width
    if pa.types.is_timestamp(dst) and pa.types.is_timestamp(src):
        return True
    return bool(pa.types.is_date(dst) and pa.types.is_date(src))


def coerce(arr: pa.Array | pa.ChunkedArray, dst: pa.DataType, column: str) -> pa.Array | pa.ChunkedArray:
    """Convert a compatible column to the contract type (naive timestamps are taken as UTC)."""
    src = arr.type
    if src == dst:
        return arr
    if not compatible(src, dst):
        raise DmsFileError("type_changed", f"column {column!r} is {src}, contract says {dst}")
    if pa.types.is_dictionary(src):
        arr = arr.cast(src.value_type)
    try:
        return pc.cast(arr, dst, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise DmsFileError("bad_value", f"column {column!r} does not convert to {dst}: {err}") from None


def parse_dms_timestamp(arr: pa.Array, column: str = TS) -> pa.Array:
    """DMS timestamp strings (yyyy-MM-dd HH:mm:ss[.ffffff], UTC) or timestamps -> timestamp[us, UTC]."""
    arr = arr.cast(_base(arr.type)) if pa.types.is_dictionary(arr.type) else arr
    try:
        if pa.types.is_timestamp(arr.type):
            return pc.cast(arr, _TS_TYPE, safe=True)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            return pc.cast(pc.cast(arr, pa.timestamp("us")), _TS_TYPE)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise DmsFileError("bad_timestamp", f"column {column!r}: {err}") from None
    raise DmsFileError("type_changed", f"column {column!r} is {arr.type}, expected a DMS timestamp string")


def check_sequence(arr: pa.Array) -> None:
    """Every change sequence must be 35 ASCII digits (YYYYMMDDHHmmSShh + 19-digit change number)."""
    # Imported here: the snapshot export imports this module for its file names and columns, and runs
    # without numpy (its ``__main__``); only the dataset sync checks sequences.
    import numpy as np

    if arr.null_count:
        raise DmsFileError("bad_sequence", f"{arr.null_count} rows without {SEQ}")
    if len(arr) == 0:
        return
    arr = arr.cast(pa.string()) if not pa.types.is_string(arr.type) else arr
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=len(arr) + 1, offset=arr.offset * 4)
    lengths = np.diff(offsets)
    if (lengths != SEQ_LENGTH).any():
        i = int(np.argmax(lengths != SEQ_LENGTH))
        raise DmsFileError("bad_sequence", f"{SEQ} {arr[i].as_py()!r} is not {SEQ_LENGTH} digits")
    data = np.frombuffer(
        arr.buffers()[2], dtype=np.uint8, count=int(offsets[-1] - offsets[0]), offset=int(offsets[0])
    )
    # Two reductions, no temporary array: a tenth of the time of testing each byte.
    if len(data) and (data.min() < ord("0") or data.max() > ord("9")):
        raise DmsFileError("bad_sequence", f"{SEQ} values must be digits only")


# ---------------------------------------------------------------------------------------------------- reading


def _header_columns(kind: FileKind, contract: TableContract, csv: CsvSettings) -> list[str]:
    lead = [TS, SEQ] if kind is FileKind.LOAD and not csv.include_op_for_full_load else [OP, TS, SEQ]
    return lead + contract.column_names


def _plan_columns(names: list[str], kind: FileKind, contract: TableContract) -> FileShape:
    present = set(names)
    required = [SEQ, TS, OP] if kind is FileKind.CDC else []
    missing_meta = [c for c in required if c not in present]
    if missing_meta:
        raise DmsFileError(
            "missing_column", f"DMS column(s) {missing_meta} missing (a CDC file needs Op/_dms_ts/_dms_seq)"
        )
    filled = []
    for col in contract.columns:
        if col.name in present:
            continue
        if col.name in contract.primary_key:
            raise DmsFileError("missing_column", f"primary key column {col.name!r} missing")
        if not col.nullable:
            raise DmsFileError("missing_column", f"non-nullable column {col.name!r} missing")
        filled.append(col.name)
    extra = [n for n in names if n not in set(contract.column_names) | {OP, TS, SEQ}]
    return FileShape(rows=None, data_bytes=0, extra_columns=extra, filled_columns=filled)


def footer_ranges(path: str | Path, column: str) -> list[tuple[object, object]] | None:
    """(min, max) of ``column`` in each row group of a Parquet file, from its footer; None when the file
    lacks the column or a row group lacks the statistics."""
    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    if column not in names:
        return None
    stats = [meta.row_group(g).column(names.index(column)).statistics for g in range(meta.num_row_groups)]
    if not all(s is not None and s.has_min_max for s in stats):
        return None
    return [(s.min, s.max) for s in stats]


def _decoded_bytes(pf: pq.ParquetFile, rows: int, sample: int = 4096) -> int:
    """In-memory size of a file's rows, from decoding a small sample: Parquet's own sizes are of encoded
    (often dictionary) pages and undercount repetitive strings several times over."""
    try:
        first = next(pf.iter_batches(batch_size=min(sample, rows)))
    except (StopIteration, pa.ArrowInvalid, OSError):
        return sum(pf.metadata.row_group(i).total_byte_size for i in range(pf.num_row_groups))
    return int(first.nbytes / max(1, first.num_rows) * rows)


def inspect_file(
    path: str | Path, f: DmsFile, contract: TableContract, csv: CsvSettings | None = None
) -> FileShape:
    """Check a file's shape before reading rows: Parquet footer (columns, types) or the CSV header."""
    csv = csv or CsvSettings()
    size = os.path.getsize(path)
    if f.fmt == "parquet":
        try:
            meta = pq.ParquetFile(path)
            schema = meta.schema_arrow
        except (pa.ArrowInvalid, OSError) as err:
            raise DmsFileError("unreadable", f"not a readable Parquet file: {err}") from None
        shape = _plan_columns(schema.names, f.kind, contract)
        for col in contract.columns:
            if col.name in schema.names and not compatible(schema.field(col.name).type, col.arrow_type):
                raise DmsFileError(
                    "type_changed",
                    f"column {col.name!r} is {schema.field(col.name).type}, contract says {col.type}",
                )
        if OP in schema.names and not compatible(schema.field(OP).type, pa.string()):
            raise DmsFileError("type_changed", f"column {OP!r} is {schema.field(OP).type}, expected string")
        shape.rows = meta.metadata.num_rows
        shape.data_bytes = _decoded_bytes(meta, shape.rows) if shape.rows else 0
        return shape
    shape = FileShape(rows=None, data_bytes=0)
    if csv.header:
        try:
            names = _csv_reader(path, f, contract, csv, batch_bytes=1 << 16).schema.names
        except (pa.ArrowInvalid, OSError) as err:
            raise DmsFileError("unreadable", f"CSV header: {err}") from None
        shape = _plan_columns(names, f.kind, contract)
    shape.data_bytes = size
    return shape


def _csv_reader(path: str | Path, f: DmsFile, contract: TableContract, csv: CsvSettings, batch_bytes: int):
    types = {OP: pa.string(), TS: pa.string(), SEQ: pa.string()}
    for col in contract.columns:
        t = col.arrow_type
        # CSV timestamps carry no zone; parse naive and label UTC afterwards, as DMS writes UTC.
        types[col.name] = pa.timestamp(t.unit) if pa.types.is_timestamp(t) else t
    read = pcsv.ReadOptions(block_size=batch_bytes)
    if not csv.header:
        read.column_names = _header_columns(f.kind, contract, csv)
    convert = pcsv.ConvertOptions(
        column_types=types,
        null_values=[csv.null_value],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    return pcsv.open_csv(
        path,
        read_options=read,
        # DMS quotes a value holding a line break (RFC 4180). Arrow's docs ask for newlines_in_values then; its
        # streaming reader happens to cope without (tested), a multi-threaded read would not.
        parse_options=pcsv.ParseOptions(delimiter=csv.delimiter, newlines_in_values=True),
        convert_options=convert,
    )


def _normalize(batch: pa.RecordBatch, f: DmsFile, contract: TableContract) -> pa.RecordBatch:
    n = batch.num_rows
    names = batch.schema.names
    if OP in names:
        op = batch.column(OP)
        op = op.cast(pa.string()) if not pa.types.is_string(op.type) else op
        # Built here, not at import: pa.array on Python values imports pandas, which the export does without.
        ok = pc.is_in(op, pa.array(OPS, pa.string())) if f.kind is FileKind.CDC else pc.equal(op, "I")
        ok = pc.fill_null(ok, False)
        if not pc.all(ok).as_py():
            bad = op.filter(pc.invert(ok))
            sample = bad.slice(0, 3).to_pylist()
            want = "I/U/D" if f.kind is FileKind.CDC else "I (full load)"
            raise DmsFileError("bad_op", f"{len(bad)} rows with {OP} not in {want}, e.g. {sample}")
    else:
        op = pa.repeat(pa.scalar("I"), n)
    ts = parse_dms_timestamp(batch.column(TS)) if TS in names else pa.nulls(n, _TS_TYPE)
    if f.kind is FileKind.CDC:
        if ts.null_count:
            raise DmsFileError("bad_timestamp", f"{ts.null_count} rows without {TS}")
        seq = batch.column(SEQ)
        check_sequence(seq)
        seq = seq.cast(pa.string()) if seq.type != pa.string() else seq
    else:
        # Full-load rows carry no change sequence: they are the snapshot every CDC event comes after.
        seq = pa.nulls(n, pa.string())
    columns = [op, ts, seq]
    for key in contract.primary_key:
        if key in names and batch.column(key).null_count:
            raise DmsFileError("null_key", f"{batch.column(key).null_count} rows without primary key {key!r}")
    for col in contract.columns:
        if col.name in names:
            columns.append(coerce(batch.column(col.name), col.arrow_type, col.name))
        else:
            columns.append(pa.nulls(n, col.arrow_type))
    return pa.RecordBatch.from_arrays(columns, schema=event_schema(contract))


def read_events(
    path: str | Path,
    f: DmsFile,
    contract: TableContract,
    csv: CsvSettings | None = None,
    batch_rows: int = 131_072,
) -> Iterator[pa.RecordBatch]:
    """Stream a DMS file as normalised change-event batches; raises DmsFileError on anything unusable."""
    csv = csv or CsvSettings()
    try:
        if f.fmt == "parquet":
            shape = inspect_file(path, f, contract, csv)
            pf = pq.ParquetFile(path)
            wanted = [c for c in pf.schema_arrow.names if c not in shape.extra_columns]
            for batch in pf.iter_batches(batch_size=batch_rows, columns=wanted, use_threads=True):
                yield _normalize(batch, f, contract)
            return
        if os.path.getsize(path) == 0:
            # A header-less CSV with no rows is valid (nothing changed); with AddColumnName it lacks a header.
            if csv.header:
                raise DmsFileError("unreadable", "empty file, expected a header row")
            return
        reader = _csv_reader(path, f, contract, csv, batch_bytes=max(1 << 20, batch_rows * 64))
        if csv.header:
            _plan_columns(reader.schema.names, f.kind, contract)
        for batch in reader:
            yield _normalize(batch, f, contract)
    except DmsFileError:
        raise
    except (
        pa.ArrowInvalid,
        pa.ArrowTypeError,
        pa.ArrowNotImplementedError,
        OSError,
        UnicodeDecodeError,
    ) as err:
        reason = "bad_row" if f.fmt == "csv" else "unreadable"
        raise DmsFileError(reason, str(err).splitlines()[0][:500]) from None


# ---------------------------------------------------------------------------------------------------- writing


def _format_ts(arr: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    # DMS writes timestamps as UTC wall-clock text with microseconds, no zone.
    if not pa.types.is_timestamp(arr.type):
        return arr
    us = pc.cast(arr, pa.timestamp("us", tz=arr.type.tz))
    naive = pc.cast(pc.cast(us, pa.int64()), pa.timestamp("us"))
    return pc.strftime(naive, format="%Y-%m-%d %H:%M:%S")


def to_dms_table(table: pa.Table) -> pa.Table:
    """Order columns as DMS does (Op, _dms_ts, _dms_seq, table columns); _dms_ts becomes DMS's string."""
    lead = [c for c in (OP, TS, SEQ) if c in table.column_names]
    rest = [c for c in table.column_names if c not in lead]
    table = table.select(lead + rest)
    if TS in table.column_names:
        table = table.set_column(table.schema.get_field_index(TS), TS, _format_ts(table.column(TS)))
    return table


def write_dms_file(
    store,
    key: str,
    table: pa.Table,
    fmt: Format = "parquet",
    *,
    csv_header: bool = False,
    row_group_rows: int = 1_000_000,
) -> None:
    """Write a table as DMS would (Parquet, or CSV without a header unless csv_header) and put it at key."""
    table = to_dms_table(table)
    fd, tmp = tempfile.mkstemp(prefix="ftp-dms-", suffix=f".{fmt}")
    os.close(fd)
    try:
        if fmt == "parquet":
            pq.write_table(table, tmp, row_group_size=row_group_rows)
        elif fmt == "csv":
            text = table.select(table.column_names)
            for i, name in enumerate(text.column_names):
                if pa.types.is_timestamp(text.schema.field(i).type):
                    text = text.set_column(i, name, _format_ts(text.column(i)))
            pcsv.write_csv(text, tmp, pcsv.WriteOptions(include_header=csv_header))
        else:
            raise ValueError(f"unknown DMS file format {fmt!r}")
        store.put_file(key, tmp)
    finally:
        os.unlink(tmp)
