"""The PostgreSQL export against a real server: one consistent snapshot, the slot that continues it, and
files the project's reader reads back as the source's rows."""

from __future__ import annotations

import socket
import threading

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from finetune_pipeline.datasets.contracts import TableContract
from finetune_pipeline.datasets.dms_format import DmsFile, FileKind, read_events
from finetune_pipeline.export import binary_copy, postgres
from finetune_pipeline.export.errors import PreflightError, SourceUnreachableError
from finetune_pipeline.export.manifest import MANIFEST_NAME, describe_file, read_manifest
from finetune_pipeline.export.postgres import PostgresExport, retained_wal

CONTRACT_COLUMNS = [
    {"name": "id", "type": "int64", "nullable": False},
    {"name": "note", "type": "string"},
    {"name": "amount", "type": "float64"},
    {"name": "flag", "type": "bool"},
    {"name": "seen_at", "type": "timestamp[us, UTC]"},
    {"name": "day", "type": "date32"},
]


def make_items(source, rows: int = 1000, name: str = "items") -> None:
    source.sql(f"""
        CREATE TABLE {source.schema}.{name} (id bigint PRIMARY KEY, note text, amount float8, flag bool,
                                             seen_at timestamptz, day date);
        INSERT INTO {source.schema}.{name}
        SELECT g, CASE WHEN g % 7 = 0 THEN NULL WHEN g % 11 = 0 THEN '' ELSE 'line ' || g || E'\n"quoted", yes' END,
               g / 3.0, g % 2 = 0, timestamptz '2026-11-26 09:00:00+00' + g * interval '1.5 second',
               date '2026-01-01' + (g % 300)
        FROM generate_series(1, {rows}) g""")


def read_back(export_dir, manifest, source, name="items") -> list[dict]:
    contract = TableContract.model_validate(
        {"table": f"{source.schema}.{name}", "primary_key": ["id"], "columns": CONTRACT_COLUMNS})
    rows = []
    for item in manifest.files:
        if item.key.startswith(f"{source.schema}/{name}/"):
            f = DmsFile(item.key, FileKind.LOAD, "parquet")
            for batch in read_events(export_dir / item.key, f, contract):
                rows += pa.Table.from_batches([batch]).drop_columns(["Op", "_dms_ts", "_dms_seq"]).to_pylist()
    return sorted(rows, key=lambda row: row["id"])


def source_rows(source, name="items") -> list[dict]:
    result = source.sql(f"SELECT id, note, amount, flag, seen_at, day FROM {source.schema}.{name} ORDER BY id")
    keys = ["id", "note", "amount", "flag", "seen_at", "day"]
    return [dict(zip(keys, row, strict=True)) for row in result]


def test_export_reads_back_through_the_reader_exactly(source, tmp_path):
    make_items(source)
    result = PostgresExport(source.url, [source.table("items", "id")], source.settings(tmp_path)).run()
    manifest = result.manifest
    assert manifest.engine == "postgres"
    assert manifest.slot.name == source.slot and manifest.slot.plugin == "test_decoding"
    assert manifest.cdc_start_position.count("/") == 1
    assert manifest.source.system_identifier.isdigit() and manifest.source.timeline >= 1
    assert manifest.tables[f"{source.schema}.items"].rows == 1000
    assert [f.key for f in manifest.files] == [f"{source.schema}/items/LOAD00000001.parquet"]
    assert read_back(tmp_path, manifest, source) == source_rows(source)
    assert read_manifest(tmp_path) == manifest
    assert manifest.wal["retained_bytes"] >= 0 and manifest.wal["wal_status"] in ("reserved", "extended")
    # The slot the export created is the one DMS will read: logical, test_decoding, at the manifest's LSN.
    slot = source.sql("SELECT plugin, slot_type, confirmed_flush_lsn::text FROM pg_replication_slots "
                      "WHERE slot_name = %s", (source.slot,))
    assert slot == [("test_decoding", "logical", manifest.cdc_start_position)]


def test_the_snapshot_excludes_changes_after_the_slot_and_the_slot_has_them(source, tmp_path, monkeypatch):
    """A change committed after the slot's consistent point, while the export still runs, is not in the files,
    and decodes from the slot: nothing lost, nothing twice."""
    make_items(source, rows=300)
    original = PostgresExport._export_tables

    def change_then_export(self, tables, snapshot, load_time):
        source.sql(f"INSERT INTO {source.schema}.items (id, note) VALUES (100000, 'after the snapshot')")
        source.sql(f"UPDATE {source.schema}.items SET note = 'changed later' WHERE id = 1")
        source.sql(f"DELETE FROM {source.schema}.items WHERE id = 2")
        return original(self, tables, snapshot, load_time)

    monkeypatch.setattr(PostgresExport, "_export_tables", change_then_export)
    manifest = PostgresExport(source.url, [source.table("items")], source.settings(tmp_path, workers=3)).run().manifest
    rows = {row["id"]: row for row in read_back(tmp_path, manifest, source)}
    assert len(rows) == 300 and 100000 not in rows and 2 in rows and rows[1]["note"] != "changed later"
    changes = [data for (data,) in source.sql(
        "SELECT data FROM pg_logical_slot_peek_changes(%s, NULL, NULL)", (source.slot,))]
    table = f"table {source.schema}.items"
    assert any(c.startswith(f"{table}: INSERT: id[bigint]:100000") for c in changes)
    assert any(c.startswith(f"{table}: UPDATE: id[bigint]:1 ") for c in changes)
    assert any(c.startswith(f"{table}: DELETE: id[bigint]:2") for c in changes)


def test_large_tables_are_split_across_sessions_and_files_without_losing_a_row(source, tmp_path):
    make_items(source, rows=20_000)
    settings = source.settings(tmp_path, workers=3, chunk_bytes=400_000, row_group_bytes=200_000,
                               max_file_bytes=300_000)
    manifest = PostgresExport(source.url, [source.table("items")], settings).run().manifest
    keys = [f.key for f in manifest.files]
    assert len(keys) > 3
    assert keys == [f"{source.schema}/items/LOAD{n:08X}.parquet" for n in range(1, len(keys) + 1)]
    assert read_back(tmp_path, manifest, source) == source_rows(source)
    assert manifest.tables[f"{source.schema}.items"].files == len(keys)


def test_the_checksums_each_session_took_as_a_file_closed_are_those_of_the_file_under_its_dms_name(
        source, tmp_path):
    make_items(source, rows=20_000)
    settings = source.settings(tmp_path, workers=2, chunk_bytes=400_000, row_group_bytes=200_000,
                               max_file_bytes=300_000)
    manifest = PostgresExport(source.url, [source.table("items")], settings).run().manifest
    assert len(manifest.files) > 3
    assert manifest.files == [describe_file(tmp_path, tmp_path / item.key, settings.part_size)
                              for item in manifest.files]
    assert manifest.tables[f"{source.schema}.items"].bytes == sum(item.size for item in manifest.files)
    assert read_manifest(tmp_path) == manifest


def test_a_table_without_a_primary_key_is_refused_with_the_fix(source, tmp_path):
    make_items(source, rows=10)
    source.sql(f"CREATE TABLE {source.schema}.events (id bigint, what text)")
    with pytest.raises(PreflightError) as error:
        PostgresExport(source.url, [source.table("items"), source.table("events"), source.table("missing")],
                       source.settings(tmp_path)).run()
    message = str(error.value)
    assert f"table {source.schema}.events has no primary key" in message
    assert "ADD PRIMARY KEY" in message
    assert f"table {source.schema}.missing does not exist" in message
    assert not source.sql("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (source.slot,))


def test_a_configured_key_that_is_not_the_real_one_is_refused(source, tmp_path):
    make_items(source, rows=10)
    with pytest.raises(PreflightError, match=r"the config says primary key \['note'\], the database says \['id'\]"):
        PostgresExport(source.url, [source.table("items", "note")], source.settings(tmp_path)).run()


def test_a_wal_keep_limit_the_trip_would_pass_is_refused(source, tmp_path):
    make_items(source, rows=10)
    # The embedded server keeps at most 4 GB for a slot; 30 days at 1 GiB/day would invalidate it.
    settings = source.settings(tmp_path, wal_bytes_per_day=2**30, wal_retention_days=30)
    with pytest.raises(PreflightError, match=r"max_slot_wal_keep_size is 4\.0 GiB, but 30 days at 1\.0 GiB/day"):
        PostgresExport(source.url, [source.table("items")], settings).run()
    # Unknown rate (the server's WAL statistics cover less than a day): refused too, with what to give.
    with pytest.raises(PreflightError, match="the source's WAL rate is unknown"):
        PostgresExport(source.url, [source.table("items")], source.settings(tmp_path, wal_bytes_per_day=None)).run()


def test_an_export_target_without_room_is_refused(source, tmp_path, monkeypatch):
    make_items(source, rows=10)
    monkeypatch.setattr(postgres, "_free_bytes", lambda path: 1024)
    with pytest.raises(PreflightError, match=r"the export target .* has 1\.0 KiB free, but the tables take"):
        PostgresExport(source.url, [source.table("items")], source.settings(tmp_path)).run()


def test_an_unreachable_source_is_reported_as_such():
    with pytest.raises(SourceUnreachableError, match=r"cannot reach the source database at 127\.0\.0\.1:1/appdb"):
        PostgresExport("postgresql://u:secret-pw@127.0.0.1:1/appdb", [postgres.TableSpec("public", "t")],
                       postgres.ExportSettings(export_dir=__import__("pathlib").Path("/nonexistent"))).run()


def test_a_rerun_reuses_a_matching_slot_and_refuses_a_stale_one(source, tmp_path):
    make_items(source, rows=50)
    first = PostgresExport(source.url, [source.table("items")], source.settings(tmp_path)).run()
    again = PostgresExport(source.url, [source.table("items")], source.settings(tmp_path)).run()
    assert again.reused and again.manifest == first.manifest

    # A slot left without its manifest (an export killed mid-way): refused, with how to get out of it.
    (tmp_path / MANIFEST_NAME).unlink()
    with pytest.raises(PreflightError, match=rf"slot {source.slot} was left by an earlier export .* "
                                             rf"pg_drop_replication_slot\('{source.slot}'\)"):
        PostgresExport(source.url, [source.table("items")], source.settings(tmp_path)).run()
    replaced = PostgresExport(source.url, [source.table("items")], source.settings(tmp_path, replace=True)).run()
    assert not replaced.reused
    assert replaced.manifest.cdc_start_position != first.manifest.cdc_start_position

    # An export whose slot is gone cannot start CDC at its LSN: refused unless replaced.
    source.sql("SELECT pg_drop_replication_slot(%s)", (source.slot,))
    with pytest.raises(PreflightError, match="does not exist: CDC cannot start at that export's position"):
        PostgresExport(source.url, [source.table("items")], source.settings(tmp_path)).run()


def test_an_export_that_fails_drops_its_slot_and_leaves_no_manifest(source, tmp_path, monkeypatch):
    make_items(source, rows=50)

    def explode(self, *args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(PostgresExport, "_export_tables", explode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        PostgresExport(source.url, [source.table("items")], source.settings(tmp_path)).run()
    assert not source.sql("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (source.slot,))
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_retained_wal_grows_while_nobody_reads_the_slot(source, tmp_path):
    make_items(source, rows=10)
    manifest = PostgresExport(source.url, [source.table("items")], source.settings(tmp_path)).run().manifest
    import psycopg

    with psycopg.connect(source.url, autocommit=True) as conn:
        before = retained_wal(conn, source.slot)["retained_bytes"]
        conn.execute(f"INSERT INTO {source.schema}.items (id, note) SELECT g, repeat('x', 200) "
                     "FROM generate_series(10000, 20000) g")
        after = retained_wal(conn, source.slot)
        assert retained_wal(conn, "no_such_slot") is None
    assert manifest.wal["retained_bytes"] <= before < after["retained_bytes"]
    assert after["restart_lsn"] and after["max_slot_wal_keep_size"] == "4GB"


@pytest.mark.parametrize(
    ("heap_mib", "sessions", "ranges"),
    [(8, 2, 1), (100, 2, 2), (100, 4, 3), (182, 2, 2), (2048, 2, 4), (2048, 8, 8),
     # Past one range per session, a multiple of the sessions, so that none idles at the end.
     (1457, 2, 4), (2600, 2, 6), (2048, 3, 6), (1100, 1, 3)],
)
def test_a_big_table_is_cut_into_a_range_per_session_and_chunks_stay_bounded(heap_mib, sessions, ranges):
    from finetune_pipeline.export.postgres import MIB, TableSpec, _chunks, _Table

    table = _Table(spec=TableSpec.parse("public.t"), oid=1, primary_key=["id"], columns=[], heap_bytes=heap_mib * MIB,
                   size_bytes=heap_mib * MIB, block_size=8192)
    chunks = _chunks(table, chunk_bytes=512 * MIB, sessions=sessions)
    assert len(chunks) == ranges
    # The ranges tile the pages with no gap or overlap, the last one open-ended.
    bounds = [chunk.pages for chunk in chunks]
    if ranges == 1:
        assert bounds == [None]
    else:
        assert bounds[0][0] == 0 and bounds[-1][1] is None
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
        assert all((high - low) * 8192 <= 512 * MIB for low, high in bounds[:-1])


def test_a_session_parses_each_block_before_it_reads_the_next(source, tmp_path, monkeypatch):
    """Nothing reads ahead of the parser: a session holds one block of COPY rows, however big the table."""
    make_items(source, rows=5000)
    monkeypatch.setattr(postgres, "COPY_BLOCK_BYTES", 16 * 1024)
    produced, parsed = [], []
    real_copy_blocks, real_batches = postgres.copy_blocks, postgres._CsvParser.batches

    def counting_copy_blocks(*args):
        for block in real_copy_blocks(*args):
            produced.append(len(block))
            yield block

    def counting_batches(self, block):
        assert len(produced) == len(parsed) + 1, "a block was read before the previous one was parsed"
        parsed.append(len(block))
        return real_batches(self, block)

    monkeypatch.setattr(postgres, "copy_blocks", counting_copy_blocks)
    monkeypatch.setattr(postgres._CsvParser, "batches", counting_batches)
    settings = source.settings(tmp_path, workers=1, binary_copy=False)  # the CSV path, for any table
    result = PostgresExport(source.url, [source.table("items")], settings).run()
    assert len(parsed) > 20 and parsed == produced
    assert max(parsed) <= 16 * 1024  # no row is longer than a block here
    assert result.csv_bytes == sum(parsed)
    assert read_back(tmp_path, result.manifest, source) == source_rows(source)


def _data_columns(export_dir, manifest) -> pa.Table:
    """The exported rows without the load-time column (each export has its own)."""
    tables = [pq.read_table(export_dir / item.key) for item in manifest.files if item.key.endswith(".parquet")]
    table = pa.concat_tables(tables)
    return table.select([name for name in table.column_names if name in SOURCE_COLUMNS]).sort_by("id")


SOURCE_COLUMNS = ("id", "note", "amount", "flag", "seen_at", "day")


def test_binary_copy_and_csv_copy_write_the_same_files(source, tmp_path):
    """The two read paths (ADBC's binary COPY for simple types, CSV otherwise) give the same Parquet columns:
    types, NULLs against empty strings, quotes and newlines in text, timestamps to the microsecond."""
    make_items(source, rows=3000)
    said = []
    binary = PostgresExport(source.url, [source.table("items")], source.settings(tmp_path / "binary"),
                            report=said.append).run()  # fmt: skip
    assert binary.csv_bytes == 0 and f"{source.schema}.items: binary COPY, decoded by ADBC" in said
    csv_source = type(source)(source.url, source.schema, f"{source.slot}_csv")
    csv = PostgresExport(source.url, [csv_source.table("items")],
                         csv_source.settings(tmp_path / "csv", binary_copy=False)).run()  # fmt: skip
    assert csv.csv_bytes > 0
    try:
        assert _data_columns(tmp_path / "binary", binary.manifest) == _data_columns(tmp_path / "csv", csv.manifest)
        assert _data_columns(tmp_path / "binary", binary.manifest).num_rows == 3000
    finally:
        source.sql("SELECT pg_drop_replication_slot(%s)", (f"{source.slot}_csv",))


def test_a_table_with_a_type_binary_copy_does_not_map_goes_through_csv(source, tmp_path, monkeypatch):
    source.sql(f"""
        CREATE TABLE {source.schema}.priced (id bigint PRIMARY KEY, price numeric(10, 2), tag uuid);
        INSERT INTO {source.schema}.priced
        SELECT g, g / 7.0, md5(g::text)::uuid FROM generate_series(1, 50) g""")

    def refuse(*args, **kwargs):
        raise AssertionError("numeric and uuid are exported in their text forms, through CSV")

    monkeypatch.setattr(postgres.binary_copy, "read_batches", refuse)
    said = []
    result = PostgresExport(source.url, [source.table("priced")], source.settings(tmp_path), report=said.append).run()
    assert f"{source.schema}.priced: CSV COPY (columns of type numeric, uuid keep their text form)" in said
    (item,) = result.manifest.files
    table = pq.read_table(tmp_path / item.key).sort_by("id")
    assert table.column("price").to_pylist()[:2] == ["0.14", "0.29"]
    assert table.column("tag").to_pylist()[0] == source.sql("SELECT md5('1')::uuid::text")[0][0]


def test_a_binary_session_that_cannot_connect_is_reported_as_unreachable():
    url = "postgresql://exporter:s3cret-pw@127.0.0.1:1/appdb"  # port 1: nothing listens
    schema = pa.schema([("id", pa.int64())])
    with pytest.raises(SourceUnreachableError, match="cannot open an export session .*Connection refused") as error:
        next(binary_copy.read_batches(url, "00000003-00000002-1", "SELECT 1::bigint AS id", schema))
    assert "s3cret-pw" not in str(error.value)


@pytest.mark.parametrize(
    ("conninfo", "timeout"),
    [
        ("postgresql://exporter:pw@db.example:5433/appdb", "15"),
        ("host=db.example dbname=appdb", "15"),
        ("", "15"),  # all from PG* variables and ~/.pgpass, as for psql
        ("postgresql://db.example/appdb?connect_timeout=4", "4"),  # the user's own wins
    ],
)
def test_every_session_connects_with_a_timeout(conninfo, timeout, monkeypatch):
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    monkeypatch.delenv("PGSERVICE", raising=False)
    params = psycopg.conninfo.conninfo_to_dict(postgres.with_connect_timeout(conninfo))
    given = psycopg.conninfo.conninfo_to_dict(conninfo) if conninfo else {}
    assert params.pop("connect_timeout") == timeout and given.pop("connect_timeout", timeout) == timeout
    assert params == given


@pytest.mark.parametrize("where", ["PGCONNECT_TIMEOUT", "PGSERVICE", "service="])
def test_a_timeout_set_elsewhere_is_left_to_libpq(where, monkeypatch):
    conninfo = "host=db.example dbname=appdb"
    if where == "service=":
        conninfo += " service=source"
    else:
        monkeypatch.setenv(where, "4" if where == "PGCONNECT_TIMEOUT" else "source")
    assert postgres.with_connect_timeout(conninfo) == conninfo


def test_a_binary_session_to_a_source_that_never_answers_fails_as_unreachable(monkeypatch):
    """A server that takes the connection and says nothing (a dead host behind a proxy): libpq would wait
    as long as the OS lets it, minutes; the session gives up at its connect timeout."""
    monkeypatch.setattr(postgres, "CONNECT_TIMEOUT_SECONDS", 2)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = postgres.with_connect_timeout(f"postgresql://exporter@127.0.0.1:{silent.getsockname()[1]}/appdb")
        raised = []

        def read():
            try:
                next(binary_copy.read_batches(url, "00000003-00000002-1", "SELECT 1::bigint AS id",
                                              pa.schema([("id", pa.int64())])))  # fmt: skip
            except SourceUnreachableError as error:
                raised.append(error)

        # On a thread: without the timeout the session would wait for minutes, and the test with it.
        reading = threading.Thread(target=read, daemon=True)
        reading.start()
        reading.join(timeout=10)
        assert not reading.is_alive(), "the session kept waiting past its connect timeout"
        assert raised and "cannot open an export session" in str(raised[0])


def test_the_export_gives_its_binary_sessions_the_connect_timeout(source, tmp_path, monkeypatch):
    seen = []
    read_batches = postgres.binary_copy.read_batches

    def recorded(conninfo, *args):
        seen.append(psycopg.conninfo.conninfo_to_dict(conninfo).get("connect_timeout"))
        return read_batches(conninfo, *args)

    monkeypatch.setattr(postgres.binary_copy, "read_batches", recorded)
    make_items(source)
    PostgresExport(source.url, [source.table("items", "id")], source.settings(tmp_path)).run()
    assert seen and set(seen) == {str(postgres.CONNECT_TIMEOUT_SECONDS)}


def test_a_binary_batch_takes_the_exports_schema_and_is_cast_only_where_a_type_differs():
    driver = pa.schema([pa.field("id", pa.int64(), metadata={"POSTGRESQL:type": "int8"}),
                        pa.field("owner", pa.uint32(), metadata={"POSTGRESQL:type": "oid"})])
    wanted = pa.schema([("id", pa.int64()), ("owner", pa.int64())])
    batch = pa.RecordBatch.from_arrays([pa.array([1, 2], pa.int64()), pa.array([7, 4_000_000_000], pa.uint32())],
                                       schema=driver)
    cast = binary_copy.as_schema(batch, wanted)
    assert cast.schema == wanted and cast.schema.field("id").metadata is None
    assert cast.column("owner").to_pylist() == [7, 4_000_000_000]
    same = binary_copy.as_schema(batch.select(["id"]), wanted.remove(1))
    assert same.schema == wanted.remove(1) and same.schema.field("id").metadata is None
    assert same.column(0).buffers()[1].address == batch.column(0).buffers()[1].address  # no copy
