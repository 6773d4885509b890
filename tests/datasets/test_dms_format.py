"""DMS S3 target format: names, the writer, and reading files (good and bad) as typed change events."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ds_helpers import at, item_events, item_load

from finetune_pipeline.datasets.dms_format import (
    OP,
    SEQ,
    TS,
    CsvSettings,
    DmsFileError,
    FileKind,
    cdc_file_name,
    cdc_name_time,
    classify,
    event_schema,
    load_file_name,
    read_events,
    write_dms_file,
)


def _read_all(store, key, contract, csv=None):
    f = classify(key, key.rsplit("/", 1)[0] + "/")
    with store.local_path(key) as path:
        return pa.Table.from_batches(list(read_events(path, f, contract, csv)), schema=event_schema(contract))


def test_file_names_follow_dms():
    ts = datetime(2026, 11, 26, 9, 30, 12, 345678, tzinfo=UTC)
    assert cdc_file_name(ts) == "20261126-093012345.parquet"
    assert cdc_file_name(ts, "csv") == "20261126-093012345.csv"
    assert load_file_name(1) == "LOAD00000001.parquet"
    assert load_file_name(10, "csv") == "LOAD0000000A.csv"
    assert cdc_name_time("x/y/20261126-093012345.parquet") == datetime(
        2026, 11, 26, 9, 30, 12, 345000, tzinfo=UTC
    )
    # Lexicographic key order is time order.
    names = [cdc_file_name(at(s)) for s in (0.001, 0.5, 59, 3600)]
    assert names == sorted(names)


def test_the_user_guides_ten_digit_cdc_name_is_read_in_time_order():
    # CHAP_Target.S3's example; DMS itself writes milliseconds (9 digits), as cdc_file_name does.
    assert cdc_name_time("20141029-1134010000.csv") == datetime(2014, 10, 29, 11, 34, 1, 0, tzinfo=UTC)
    assert cdc_name_time("20141029-1134010005.csv") == datetime(2014, 10, 29, 11, 34, 1, 500, tzinfo=UTC)
    assert classify("p/20141029-1134010000.csv", "p/").kind is FileKind.CDC
    names = ["20141029-113401000.csv", "20141029-1134010005.csv", "20141029-113401001.csv"]
    assert sorted(names) == sorted(names, key=cdc_name_time)


def test_classify_recognises_only_dms_files():
    p = "landing/shop/items/"
    assert classify(p + "LOAD00000001.csv", p).kind is FileKind.LOAD
    assert classify(p + "20261126-093012345.parquet", p).kind is FileKind.CDC
    assert classify(p + "notes.txt", p) is None
    assert classify(p + "2026/11/26/20261126-093012345.parquet", p) is None
    assert classify(p + "LOAD1.csv", p) is None


def test_parquet_round_trip_writes_dms_columns_and_reads_typed_events(store, items_contract):
    key = "landing/shop/items/" + cdc_file_name(at(10))
    write_dms_file(store, key, item_events([("I", 1, 1, 1, "a", 3, "new"), ("D", 2, 2, 1, "a", 3, "new")]))
    with store.local_path(key) as path:
        raw = pq.read_table(path)
    # As DMS writes it: Op first, the timestamp column is a string in DMS's format, then the sequence.
    assert raw.column_names[:3] == [OP, TS, SEQ]
    assert raw.schema.field(TS).type == pa.string()
    assert raw.column(TS)[0].as_py() == "2026-11-26 09:00:01.000000"
    events = _read_all(store, key, items_contract)
    assert events.schema.field(TS).type == pa.timestamp("us", tz="UTC")
    assert events.column(OP).to_pylist() == ["I", "D"]
    assert events.column(TS)[0].as_py() == at(1)
    assert len(events.column(SEQ)[0].as_py()) == 35


@pytest.mark.parametrize("header", [False, True])
def test_csv_with_and_without_header(store, items_contract, header):
    key = "landing/shop/items/" + cdc_file_name(at(10), "csv")
    write_dms_file(
        store,
        key,
        item_events([("I", 1, 1, 7, "", None, "new"), ("U", 2, 2, 7, "b,c", 5, None)]),
        "csv",
        csv_header=header,
    )
    with store.local_path(key) as path:
        first = path.read_text().splitlines()[0]
    assert first.startswith('"Op"') == header
    events = _read_all(store, key, items_contract, CsvSettings(header=header))
    assert events.column("name").to_pylist() == ["", "b,c"]  # empty string is not null
    assert events.column("qty").to_pylist() == [None, 5]
    assert events.column("status").to_pylist() == ["new", None]
    assert events.column(TS).to_pylist() == [at(1), at(2)]


def test_csv_values_holding_line_breaks_read_back_across_read_blocks(store, items_contract):
    # DMS quotes a value holding a line break (RFC 4180). Arrow reads a CSV in blocks of 1 MiB and more, cut
    # at line breaks: unless it knows values may hold them, a cut inside a quoted value breaks that row.
    rows = [("I", 1, n, n, f"line one of {n}\nline two, \"quoted\"\r\n" + "x" * 40, n, "new")
            for n in range(1, 40_001)]
    key = "landing/shop/items/" + cdc_file_name(at(10), "csv")
    write_dms_file(store, key, item_events(rows), "csv")
    with store.local_path(key) as path:
        assert path.stat().st_size > 3 << 20  # several read blocks
    events = _read_all(store, key, items_contract, CsvSettings())
    assert events.num_rows == len(rows)
    assert events.column("name").to_pylist() == [row[4] for row in rows]


def test_load_file_rows_have_no_sequence(store, items_contract):
    key = "landing/shop/items/" + load_file_name(1)
    write_dms_file(store, key, item_load([(1, "a", 1, "new")]))
    events = _read_all(store, key, items_contract)
    assert events.column(SEQ).null_count == 1
    assert events.column(OP).to_pylist() == ["I"]


def test_load_csv_without_op_column(store, items_contract):
    key = "landing/shop/items/" + load_file_name(1, "csv")
    write_dms_file(store, key, item_load([(1, "a", 1, "new")]).drop_columns([OP]), "csv")
    events = _read_all(store, key, items_contract, CsvSettings(include_op_for_full_load=False))
    assert events.column(OP).to_pylist() == ["I"]
    assert events.column("name").to_pylist() == ["a"]


# ------------------------------------------------------------------------------------------ bad files


def _error(store, key, contract, csv=None) -> DmsFileError:
    with pytest.raises(DmsFileError) as info:
        _read_all(store, key, contract, csv)
    return info.value


def test_truncated_parquet_is_unreadable(store, items_contract):
    key = "landing/shop/items/" + cdc_file_name(at(10))
    write_dms_file(store, key, item_events([("I", 1, 1, 1, "a", 3, "new")] * 50))
    data = store.get_bytes(key)
    store.put_bytes(key, data[: len(data) // 2])
    err = _error(store, key, items_contract)
    assert err.reason == "unreadable"


def test_corrupt_parquet_bytes_are_unreadable(store, items_contract):
    key = "landing/shop/items/" + cdc_file_name(at(10))
    store.put_bytes(key, b"PAR1 this is not parquet at all PAR1")
    assert _error(store, key, items_contract).reason == "unreadable"


def test_empty_parquet_object_is_unreadable(store, items_contract):
    key = "landing/shop/items/" + cdc_file_name(at(10))
    store.put_bytes(key, b"")
    assert _error(store, key, items_contract).reason == "unreadable"


def test_empty_header_less_csv_is_zero_events(store, items_contract):
    key = "landing/shop/items/" + cdc_file_name(at(10), "csv")
    store.put_bytes(key, b"")
    assert _read_all(store, key, items_contract).num_rows == 0


def test_csv_with_a_bad_row(store, items_contract):
    key = "landing/shop/items/" + cdc_file_name(at(10), "csv")
    good = f'I,2026-11-26 09:00:01.000000,{"2026112609000100" + "1".zfill(19)},1,"a",3,"new"\n'
    store.put_bytes(key, (good + 'U,2026-11-26 09:00:02.000000,x,"only four"\n').encode())
    err = _error(store, key, items_contract)
    assert err.reason == "bad_row"
    assert "column" in err.detail.lower()


def test_csv_with_a_value_that_is_not_a_number(store, items_contract):
    key = "landing/shop/items/" + cdc_file_name(at(10), "csv")
    seq = "2026112609000100" + "1".zfill(19)
    store.put_bytes(key, f'I,2026-11-26 09:00:01.000000,{seq},1,"a",three,"new"\n'.encode())
    assert _error(store, key, items_contract).reason == "bad_row"


def test_unknown_op(store, items_contract):
    key = "landing/shop/items/" + cdc_file_name(at(10))
    write_dms_file(store, key, item_events([("I", 1, 1, 1, "a", 3, "new"), ("X", 2, 2, 1, "a", 3, "new")]))
    err = _error(store, key, items_contract)
    assert err.reason == "bad_op"
    assert "'X'" in err.detail


def test_missing_primary_key_column(store, items_contract):
    key = "landing/shop/items/" + cdc_file_name(at(10))
    write_dms_file(store, key, item_events([("I", 1, 1, 1, "a", 3, "new")]).drop_columns(["item_id"]))
    err = _error(store, key, items_contract)
    assert err.reason == "missing_column"
    assert "item_id" in err.detail


def test_null_primary_key(store, items_contract):
    key = "landing/shop/items/" + cdc_file_name(at(10))
    write_dms_file(store, key, item_events([("I", 1, 1, 1, "a", 3, "new"), ("U", 2, 2, None, "b", 3, "new")]))
    err = _error(store, key, items_contract)
    assert err.reason == "null_key" and "item_id" in err.detail


def test_missing_nullable_column_reads_as_null(store, items_contract):
    key = "landing/shop/items/" + cdc_file_name(at(10))
    write_dms_file(store, key, item_events([("I", 1, 1, 1, "a", 3, "new")]).drop_columns(["status"]))
    assert _read_all(store, key, items_contract).column("status").to_pylist() == [None]


def test_type_change(store, items_contract):
    key = "landing/shop/items/" + cdc_file_name(at(10))
    table = item_events([("I", 1, 1, 1, "a", 3, "new")])
    table = table.set_column(table.schema.get_field_index("qty"), "qty", pa.array(["3"]))
    write_dms_file(store, key, table)
    err = _error(store, key, items_contract)
    assert err.reason == "type_changed"
    assert "qty" in err.detail


def test_widening_type_is_accepted(store, items_contract):
    key = "landing/shop/items/" + cdc_file_name(at(10))
    table = item_events([("I", 1, 1, 1, "a", 3, "new")])
    table = table.set_column(table.schema.get_field_index("qty"), "qty", pa.array([3], pa.int16()))
    write_dms_file(store, key, table)
    assert _read_all(store, key, items_contract).schema.field("qty").type == pa.int32()


def test_bad_change_sequence(store, items_contract):
    key = "landing/shop/items/" + cdc_file_name(at(10))
    table = item_events([("I", 1, 1, 1, "a", 3, "new")])
    table = table.set_column(table.schema.get_field_index(SEQ), SEQ, pa.array(["12345"]))
    write_dms_file(store, key, table)
    assert _error(store, key, items_contract).reason == "bad_sequence"


@pytest.mark.parametrize("bad", ["a", "/", ":", " "])
def test_a_change_sequence_of_35_characters_that_are_not_all_digits(store, items_contract, bad):
    key = "landing/shop/items/" + cdc_file_name(at(10))
    table = item_events([("I", 1, 1, 1, "a", 3, "new"), ("I", 2, 2, 2, "b", 3, "new")])
    good = table.column(SEQ)[0].as_py()
    table = table.set_column(table.schema.get_field_index(SEQ), SEQ, pa.array([good, good[:20] + bad + good[21:]]))
    write_dms_file(store, key, table)
    error = _error(store, key, items_contract)
    assert error.reason == "bad_sequence" and "digits only" in str(error)


def test_cdc_file_without_dms_columns(store, items_contract):
    key = "landing/shop/items/" + cdc_file_name(at(10))
    write_dms_file(store, key, item_events([("I", 1, 1, 1, "a", 3, "new")]).drop_columns([SEQ]))
    assert _error(store, key, items_contract).reason == "missing_column"


def test_full_load_with_a_delete_is_rejected(store, items_contract):
    key = "landing/shop/items/" + load_file_name(1)
    table = item_load([(1, "a", 1, "new")])
    table = table.set_column(0, OP, pa.array(["D"]))
    write_dms_file(store, key, table)
    assert _error(store, key, items_contract).reason == "bad_op"


def test_timestamp_column_is_dms_string_format(store, items_contract):
    key = "landing/shop/items/" + cdc_file_name(at(10))
    table = item_events([("I", 1, 1, 1, "a", 3, "new")])
    table = table.set_column(1, TS, pa.array(["26/11/2026 09:00"]))
    write_dms_file(store, key, table)
    assert _error(store, key, items_contract).reason == "bad_timestamp"
