"""The chunked writer: memory bounded by one row group, however many rows go through it."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from finetune_pipeline.export.load_files import LoadFileWriter, dictionary_columns

ROW_GROUP_BYTES = 256 * 1024


def batch(start: int, rows: int = 2000) -> pa.RecordBatch:
    ids = pa.array(range(start, start + rows), pa.int64())
    notes = pa.array([f"note {i} " * (1 + i % 7) for i in range(start, start + rows)], pa.string())
    return pa.RecordBatch.from_arrays([ids, notes], names=["id", "note"])


def test_memory_stays_flat_while_rows_keep_coming(tmp_path):
    writer = LoadFileWriter(tmp_path, "chunk", datetime(2026, 12, 1, tzinfo=UTC), row_group_bytes=ROW_GROUP_BYTES)
    batches = [batch(n * 2000) for n in range(120)]  # about 40 row groups
    total = sum(b.nbytes for b in batches)
    baseline = pa.total_allocated_bytes() - sum(b.nbytes for b in batches)
    held = []
    for n, item in enumerate(batches):
        writer.write(item)
        batches[n] = None  # the writer's copy, if it keeps one, is then the only one
        # What the writer holds: the batches of the row group it is filling, never more than one group.
        assert writer._buffered < ROW_GROUP_BYTES
        held.append(pa.total_allocated_bytes() - baseline - sum(b.nbytes for b in batches if b is not None))
    paths = writer.close()
    first, last = max(held[:30]), max(held[-30:])
    # Flat: the last row groups hold no more than the first ones did (not a byte more per row group written).
    assert last <= first + ROW_GROUP_BYTES // 4, (first, last)
    # Bounded by a row group and its encoding (padding included), far below what went through.
    assert max(held) < 6 * ROW_GROUP_BYTES < total / 5
    files = [pq.ParquetFile(path) for path in paths]
    assert sum(f.metadata.num_rows for f in files) == writer.rows == 240_000
    assert sum(f.metadata.num_row_groups for f in files) > 30


def test_the_rows_are_what_the_projects_dms_writer_makes_of_them(tmp_path):
    from finetune_pipeline.datasets.dms_format import OP, SEQ, TS, to_dms_table

    load_time = datetime(2026, 12, 1, 9, 30, 5, 123456, tzinfo=UTC)
    writer = LoadFileWriter(tmp_path, "chunk", load_time, row_group_bytes=ROW_GROUP_BYTES)
    rows = [batch(0), batch(2000, rows=10)]
    for item in rows:
        writer.write(item)
    (path,) = writer.close()
    table = pa.Table.from_batches(rows)
    n = table.num_rows
    expected = to_dms_table(pa.Table.from_arrays(
        [pa.array(["I"] * n), pa.array([load_time] * n, pa.timestamp("us", tz="UTC")), pa.nulls(n, pa.string()),
         *table.columns], names=[OP, TS, SEQ, *table.column_names]))
    written = pq.read_table(path)
    assert written.schema == expected.schema
    assert written.equals(expected)
    assert written.column(TS)[0].as_py() == "2026-12-01 09:30:05.123456"


def test_a_naive_load_time_is_taken_as_utc(tmp_path):
    writer = LoadFileWriter(tmp_path, "chunk", datetime(2026, 12, 1, 9, 30, 5))
    writer.write(batch(0, rows=3))
    (path,) = writer.close()
    assert pq.read_table(path).column("_dms_ts").to_pylist() == ["2026-12-01 09:30:05.000000"] * 3


def test_each_file_is_reported_once_as_soon_as_it_is_complete_and_none_after_an_abort(tmp_path):
    closed = []

    def on_closed(path):
        closed.append((path, pq.ParquetFile(path).metadata.num_rows))  # complete: its footer is written

    writer = LoadFileWriter(tmp_path, "chunk", datetime(2026, 12, 1, tzinfo=UTC), row_group_bytes=ROW_GROUP_BYTES,
                            max_file_bytes=1, on_file_closed=on_closed)  # a file per row group
    for n in range(12):
        writer.write(batch(n * 2000))
    assert len(closed) >= 3 and [path for path, _ in closed] == writer.paths  # reported as the rows still come
    writer.write(batch(24_000, rows=10))
    paths = writer.close()
    assert len(paths) == len(closed) and [path for path, _ in closed] == paths
    assert sum(rows for _, rows in closed) == writer.rows
    aborted = LoadFileWriter(tmp_path / "aborted", "chunk", datetime(2026, 12, 1, tzinfo=UTC),
                             row_group_bytes=ROW_GROUP_BYTES, on_file_closed=on_closed)
    aborted.write(batch(0, rows=10))
    aborted._flush()
    aborted.abort()
    assert len(closed) == len(paths) and not list((tmp_path / "aborted").iterdir())


def test_dictionary_pages_only_for_the_constant_dms_columns_and_columns_whose_values_repeat(tmp_path):
    rows = 20_000
    data = pa.RecordBatch.from_arrays(
        [pa.array(range(rows), pa.int64()), pa.array(["agent", "customer"] * (rows // 2)),
         pa.array([i % 1000 for i in range(rows)], pa.int32()), pa.array([f"free text {i}" for i in range(rows)])],
        names=["id", "author", "score", "body"])
    writer = LoadFileWriter(tmp_path, "chunk", datetime(2026, 12, 1, tzinfo=UTC))
    writer.write(data)
    (path,) = writer.close()
    meta = pq.ParquetFile(path).metadata
    encoded = {meta.schema.column(i).name: meta.row_group(0).column(i).has_dictionary_page
               for i in range(meta.num_columns)}
    assert encoded == {"Op": True, "_dms_ts": True, "_dms_seq": False, "id": False, "author": True, "score": True,
                       "body": False}
    # A few rows say nothing of repetition: a two-valued column among three rows is not worth a dictionary.
    assert dictionary_columns(pa.Table.from_batches([data]).slice(0, 3)) == ["Op", "_dms_ts"]
    # Only the bytes differ: the values read back as the plain strings and integers they were.
    assert pq.read_table(path).select(data.schema.names).equals(pa.Table.from_batches([data]))


def test_the_files_are_zstd_and_the_dataset_syncs_reader_reads_them(tmp_path):
    from finetune_pipeline.datasets.contracts import TableContract
    from finetune_pipeline.datasets.dms_format import DmsFile, FileKind, read_events

    writer = LoadFileWriter(tmp_path, "chunk", datetime(2026, 12, 1, 9, 30, tzinfo=UTC))
    writer.write(batch(0))
    (path,) = writer.close()
    meta = pq.ParquetFile(path).metadata
    assert {meta.row_group(0).column(i).compression for i in range(meta.num_columns)} == {"ZSTD"}
    contract = TableContract.model_validate({"table": "public.notes", "primary_key": ["id"], "columns": [
        {"name": "id", "type": "int64", "nullable": False}, {"name": "note", "type": "string"}]})
    events = pa.Table.from_batches(list(read_events(path, DmsFile("public/notes/LOAD00000001.parquet",
                                                                  FileKind.LOAD, "parquet"), contract)))
    assert events.select(["id", "note"]).equals(pa.Table.from_batches([batch(0)]))
    assert set(events.column("Op").to_pylist()) == {"I"}
    assert events.column("_dms_ts")[0].as_py() == datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
