"""What a DMS S3 target endpoint writes, and writing it: the layout, names, columns and formats of its files.

Everything here follows https://docs.aws.amazon.com/dms/latest/userguide/CHAP_Target.S3.html:

- files go under ``<BucketFolder>/<schema>/<table>/`` (BucketFolder, "Endpoint settings");
- full-load files are ``LOAD`` plus an 8-digit hexadecimal counter, ``LOAD00000001.parquet``, one table's rows split
  at MaxFileSize (KB); CDC files are named by the time they were created, ``yyyyMMdd-HHmmssSSS`` (milliseconds:
  the guide's transaction files are ``CDC_TXN-20201117153046033.csv``, and its walkthroughs show
  ``20221023-013830913.parquet``; the ``20141029-1134010000.csv`` in the guide's introduction, one digit
  longer, comes from an older product and is not what DMS writes);
- a CDC file is written when it is CdcMaxBatchInterval seconds old or CdcMinFileSize kilobytes large, whichever
  comes first (defaults 60 s and 32000 KB);
- the first column is ``Op`` (I/U/D) for CDC, and for full load only with IncludeOpForFullLoad; CdcInsertsOnly
  and CdcInsertsAndUpdates drop other operations ("Indicating source DB operations in migrated S3 data");
- TimestampColumnName adds a STRING column ``yyyy-MM-dd HH:mm:ss.SSSSSS``: the commit time for CDC, the transfer
  time (or, with UseTaskStartTimeForFullLoadTimestamp, the task start) for full load;
- DataFormat ``csv`` (the default; AddColumnName for a header row, CsvDelimiter, CsvRowDelimiter, CsvNullValue,
  quoting as Rfc4180) or ``parquet`` (ParquetVersion, ParquetTimestampInMillisecond, CompressionType).

Where the guide is silent, localaws picks one form and keeps to it: columns added by transformation rules
(the change sequence) come right after the timestamp column, before the table's own columns, and a NULL in
CSV is an empty field unless CsvNullValue names another string.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from moto.s3.models import s3_backends
from moto.utilities.utils import get_partition

OP = "Op"
DEFAULT_CDC_MAX_BATCH_INTERVAL = 60  # seconds
DEFAULT_CDC_MIN_FILE_SIZE = 32000  # kilobytes
DEFAULT_MAX_FILE_SIZE = 1_048_576  # kilobytes (1 GB)
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def _flag(value) -> bool:
    """DMS's boolean settings accept true/false and y/n."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "y", "yes", "1")
    return bool(value)


@dataclass(frozen=True)
class S3TargetSettings:
    """An S3 target endpoint's S3Settings, with DMS's defaults filled in."""

    bucket: str
    folder: str = ""
    data_format: str = "csv"
    csv_header: bool = False
    csv_delimiter: str = ","
    csv_row_delimiter: str = "\n"
    csv_null_value: str = ""
    include_op_for_full_load: bool = False
    cdc_inserts_only: bool = False
    cdc_inserts_and_updates: bool = False
    timestamp_column: str | None = None
    use_task_start_time_for_full_load: bool = False
    parquet_ms: bool = False
    parquet_version: str = "parquet-1-0"
    compression: str = "NONE"
    cdc_max_batch_interval: float = DEFAULT_CDC_MAX_BATCH_INTERVAL
    cdc_min_file_size_kb: int = DEFAULT_CDC_MIN_FILE_SIZE
    max_file_size_kb: int = DEFAULT_MAX_FILE_SIZE

    @classmethod
    def from_settings(cls, settings: dict | None) -> S3TargetSettings | None:
        """The target an endpoint's S3Settings describe, or None when they name no bucket."""
        settings = settings or {}
        if not settings.get("BucketName"):
            return None
        return cls(
            bucket=settings["BucketName"],
            folder=(settings.get("BucketFolder") or "").strip("/"),
            data_format=(settings.get("DataFormat") or "csv").lower(),
            csv_header=_flag(settings.get("AddColumnName", False)),
            csv_delimiter=settings.get("CsvDelimiter") or ",",
            csv_row_delimiter=settings.get("CsvRowDelimiter") or "\n",
            csv_null_value=settings.get("CsvNullValue") or "",
            include_op_for_full_load=_flag(settings.get("IncludeOpForFullLoad", False)),
            cdc_inserts_only=_flag(settings.get("CdcInsertsOnly", False)),
            cdc_inserts_and_updates=_flag(settings.get("CdcInsertsAndUpdates", False)),
            timestamp_column=settings.get("TimestampColumnName") or None,
            use_task_start_time_for_full_load=_flag(settings.get("UseTaskStartTimeForFullLoadTimestamp", False)),
            parquet_ms=_flag(settings.get("ParquetTimestampInMillisecond", False)),
            parquet_version=settings.get("ParquetVersion") or "parquet-1-0",
            compression=(settings.get("CompressionType") or "NONE").upper(),
            cdc_max_batch_interval=float(settings.get("CdcMaxBatchInterval") or DEFAULT_CDC_MAX_BATCH_INTERVAL),
            cdc_min_file_size_kb=int(settings.get("CdcMinFileSize") or DEFAULT_CDC_MIN_FILE_SIZE),
            max_file_size_kb=int(settings.get("MaxFileSize") or DEFAULT_MAX_FILE_SIZE),
        )

    @property
    def extension(self) -> str:
        if self.data_format == "parquet":
            return "parquet"
        return "csv.gz" if self.compression == "GZIP" else "csv"

    def table_prefix(self, schema: str, table: str) -> str:
        return "/".join(part for part in (self.folder, schema, table) if part) + "/"

    def load_key(self, schema: str, table: str, number: int) -> str:
        return f"{self.table_prefix(schema, table)}LOAD{number:08X}.{self.extension}"

    def cdc_key(self, schema: str, table: str, created: datetime) -> str:
        created = created.astimezone(UTC)
        name = f"{created:%Y%m%d-%H%M%S}{created.microsecond // 1000:03d}"
        return f"{self.table_prefix(schema, table)}{name}.{self.extension}"

    def keeps(self, op: str) -> bool:
        """Whether a CDC change with this operation is written at all."""
        if self.cdc_inserts_only:
            return op == "I"
        if self.cdc_inserts_and_updates:
            return op in ("I", "U")
        return True

    def cdc_has_op(self) -> bool:
        # With CdcInsertsOnly, CDC records carry an Op field only if full-load records do ("Indicating source DB
        # operations in migrated S3 data": the CDC setting then conforms to IncludeOpForFullLoad).
        return not self.cdc_inserts_only or self.include_op_for_full_load


def timestamp_text(moment: datetime) -> str:
    """TimestampColumnName's value: ``yyyy-MM-dd HH:mm:ss.SSSSSS`` in UTC."""
    return moment.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def lead_columns(
    settings: S3TargetSettings, with_op: bool, ops, timestamps, sequence_columns: dict[str, list]
) -> list[tuple[str, pa.Array]]:
    """The columns DMS puts before the table's own: Op, the timestamp column, added transformation columns."""
    columns: list[tuple[str, pa.Array]] = []
    if with_op:
        columns.append((OP, pa.array(ops, pa.string())))
    if settings.timestamp_column:
        columns.append((settings.timestamp_column, pa.array(timestamps, pa.string())))
    for name, values in sequence_columns.items():
        columns.append((name, pa.array(values, pa.string())))
    return columns


def encode(settings: S3TargetSettings, table: pa.Table) -> bytes:
    """The bytes of one DMS data file holding ``table``."""
    sink = io.BytesIO()
    if settings.data_format == "parquet":
        version = "1.0" if settings.parquet_version == "parquet-1-0" else "2.6"
        compression = "gzip" if settings.compression == "GZIP" else "none"
        pq.write_table(table, sink, version=version, compression=compression, use_dictionary=True)
        return sink.getvalue()
    text = table
    for index, column in enumerate(table.columns):
        name = table.schema.field(index).name
        # CSV holds text: timestamps with microseconds (ParquetTimestampInMillisecond has no effect on CSV).
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.string())
        if settings.csv_null_value and column.null_count:
            column = column.cast(pa.string()).fill_null(settings.csv_null_value)
        text = text.set_column(index, name, column)
    options = {"eol": settings.csv_row_delimiter} if settings.csv_row_delimiter != "\n" else {}
    # Strings are quoted (quotes inside doubled, as Rfc4180 asks); a NULL is an empty, unquoted field.
    pcsv.write_csv(
        text,
        sink,
        pcsv.WriteOptions(
            include_header=settings.csv_header, delimiter=settings.csv_delimiter, quoting_style="needed", **options
        ),
    )
    body = sink.getvalue()
    return gzip.compress(body) if settings.compression == "GZIP" else body


class S3Writer:
    """PUTs DMS files into localaws's own S3 (moto's backend, in process), as the endpoint's role would."""

    def __init__(self, account_id: str, region: str, settings: S3TargetSettings):
        self.account_id = account_id
        self.region = region
        self.settings = settings
        # (schema, table) -> the last CDC file time used, so that names never repeat on a frozen clock.
        self._last_cdc: dict[tuple[str, str], datetime] = {}

    def _backend(self):
        return s3_backends[self.account_id][get_partition(self.region)]

    def put(self, key: str, body: bytes) -> None:
        """PutObject; raises when S3 refuses it (e.g. the bucket is gone), so that nothing is acknowledged."""
        self._backend().put_object(self.settings.bucket, key, body)

    def exists(self, key: str) -> bool:
        try:
            return self._backend().get_object(self.settings.bucket, key) is not None
        except Exception:  # noqa: BLE001 - a missing bucket or key both mean "not there"
            return False

    def cdc_key(self, schema: str, table: str, created: datetime) -> str:
        """A CDC file name for a file created at ``created``, later than every earlier one of the table."""
        created = created.astimezone(UTC)
        created = created.replace(microsecond=created.microsecond // 1000 * 1000)
        last = self._last_cdc.get((schema, table))
        if last is not None and created <= last:
            created = last + timedelta(milliseconds=1)
        key = self.settings.cdc_key(schema, table, created)
        while self.exists(key):  # a file of an earlier run of the task, named in the same millisecond
            created += timedelta(milliseconds=1)
            key = self.settings.cdc_key(schema, table, created)
        self._last_cdc[(schema, table)] = created
        return key
