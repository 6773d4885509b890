"""localaws's DMS data plane against a real PostgreSQL (wal_level=logical): what the source commits lands in S3
exactly as DMS writes it, read back with the pipeline's own reader (finetune_pipeline.datasets.dms_format)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter

import psycopg
import pytest
from replication_helpers import FOLDER, wait_for
from replication_workload import ACCOUNTS, BOTH, SCHEMA, TRANSFERS, Workload, as_read, landed

from finetune_pipeline.datasets.dms_format import OP, SEQ, TS, CsvSettings, FileKind


@pytest.fixture
def workload(source):
    source.execute(SCHEMA)
    load = Workload(source)
    yield load
    load.conn.close()


@pytest.fixture
def cdc(replication, source, workload):
    """A running CDC task from a slot created now, at the slot's consistent point."""

    def start(**kwargs):
        lsn = source.create_slot("dms_slot")
        task = replication(tables=BOTH, postgres={"SlotName": "dms_slot", "PluginName": "test-decoding"}, **kwargs)
        task.start(CdcStartPosition=lsn)
        task.start_lsn = lsn
        return task

    return start


def test_random_transactions_land_as_the_committed_change_stream(cdc, workload):
    task = cdc()
    for number in range(40):
        if number == 20:
            workload.add_note_column()  # a nullable column added while CDC runs
        workload.transaction()
    task.flush()
    expected = workload.expected()
    wait_for(lambda: len(landed(task)) >= len(expected), what="every change to land")

    assert landed(task) == expected
    ops = Counter(op for _, op, _, _ in expected)
    assert ops["I"] and ops["U"] and ops["D"]
    keys_changed = Counter((table, key) for table, _, key, _ in expected)
    assert max(keys_changed.values()) >= 3  # one key changed many times, within and across transactions


@pytest.fixture
def small_fetches(monkeypatch):
    """Fetches of a few rows, so every fetch is full and the next is read ahead on the decoding thread: the
    names of the threads that fetched."""
    from localaws import dms_postgres, dms_replication

    monkeypatch.setattr(dms_replication, "FETCH_CHANGES", 5)
    fetched_by: list[str] = []
    fetch = dms_postgres.DecodingSession._fetch

    def counted(self, limit, now):
        fetched_by.append(threading.current_thread().name)
        return fetch(self, limit, now)

    monkeypatch.setattr(dms_postgres.DecodingSession, "_fetch", counted)
    return fetched_by


def test_changes_read_ahead_while_a_batch_is_parsed_land_as_the_committed_stream(cdc, workload, small_fetches):
    task = cdc()
    for _ in range(15):
        workload.transaction()
    task.stop()  # with a fetch read ahead, possibly: the next session reads again from the slot
    for _ in range(15):
        workload.transaction()
    task.start("resume-processing")
    task.flush()
    expected = workload.expected()
    wait_for(lambda: len(landed(task)) >= len(expected), what="every change to land")
    assert landed(task) == expected
    assert any(name.startswith("dms-decode") for name in small_fetches)


def test_a_decoding_session_on_a_slot_that_is_gone_fails_with_the_reason(source):
    from psycopg.conninfo import conninfo_to_dict

    from localaws.dms_postgres import DecodingSession, PostgresSource, SourceError

    params = conninfo_to_dict(source.server.url(database=source.name))
    endpoint = PostgresSource(host=params["host"], port=int(params["port"]), user=params["user"],
                              password=params["password"], database=source.name)  # fmt: skip
    with pytest.raises(SourceError, match="Replication slot gone_slot does not exist any more"):
        DecodingSession(endpoint, "gone_slot", None)


def test_files_are_dms_files_under_bucket_folder_schema_table(cdc, workload):
    task = cdc()
    workload.transaction(4)
    task.flush()
    keys = wait_for(lambda: task.files(), what="files")
    for key in keys:
        folder, schema, table, name = key.split("/")
        assert (folder, schema) == (FOLDER, "public") and table in ("accounts", "transfers")
        assert len(name) == len("20261201-071154149.parquet") and name[8] == "-"  # yyyyMMdd-HHmmssSSS
    events = task.events(ACCOUNTS)
    assert events.column_names[:3] == [OP, TS, SEQ]
    assert all(len(seq) == 35 and seq.isdigit() for seq in events.column(SEQ).to_pylist())


def test_a_cdc_file_is_written_at_cdc_max_batch_interval(cdc, workload):
    task = cdc(s3_settings={"CdcMaxBatchInterval": 30})
    workload.transaction(3)
    task.caught_up()
    task.advance(29)
    with pytest.raises(AssertionError, match="timed out"):
        wait_for(lambda: task.files(), timeout=1.5, what="a file before the interval")
    task.advance(1)
    wait_for(lambda: task.files(), what="a file at the interval")


def test_a_cdc_file_is_written_at_cdc_min_file_size_without_waiting(cdc, workload):
    task = cdc(s3_settings={"CdcMaxBatchInterval": 3600, "CdcMinFileSize": 1})
    for _ in range(30):
        workload.transaction(6)
    keys = wait_for(lambda: len(task.files()) >= 3 and task.files(), what="files written by size")
    assert keys == sorted(set(keys))  # names never repeat, even with the clock frozen


def test_the_slot_moves_only_after_s3_took_the_file(cdc, workload, source, s3):
    task = cdc()
    workload.transaction(3)
    task.flush()
    wait_for(lambda: task.files(), what="the first file")
    acknowledged = wait_for(
        lambda: (lsn := source.slot("dms_slot")["confirmed_flush_lsn"]) != task.start_lsn and lsn,
        what="an acknowledgement",
    )
    checkpoint = wait_for(lambda: task.describe().get("RecoveryCheckpoint"), what="a checkpoint")
    assert checkpoint.startswith("checkpoint:V1#") and _checkpoint_lsn(checkpoint) == _lsn(acknowledged)

    for key in task.files():
        s3.delete_object(Bucket=task.bucket, Key=key)
    s3.delete_bucket(Bucket=task.bucket)  # every PUT fails from now on
    since = len(workload.committed)
    workload.transaction(3)
    task.flush()
    time.sleep(1.5)
    assert source.slot("dms_slot")["confirmed_flush_lsn"] == acknowledged
    assert task.status() == "running"  # a target error is retried, as DMS retries it

    s3.create_bucket(Bucket=task.bucket)
    wait_for(lambda: task.files(), what="the retried PUT")
    wait_for(lambda: source.slot("dms_slot")["confirmed_flush_lsn"] != acknowledged, what="the slot to move")
    assert landed(task) == workload.expected(since)


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def _checkpoint_lsn(checkpoint: str) -> int:
    return _lsn(checkpoint.split("#")[2])


def test_stop_and_resume_lose_nothing(cdc, workload):
    task = cdc()
    for _ in range(10):
        workload.transaction()
    task.stop()  # writes what it buffered and acknowledges it
    for _ in range(10):
        workload.transaction()  # while the task is stopped
    task.start("resume-processing")
    for _ in range(10):
        workload.transaction()
    task.flush()
    expected = workload.expected()
    wait_for(lambda: len(landed(task)) >= len(expected), what="every change")
    assert landed(task) == expected


def _csv_round_trip(replication, source, workload, header: bool) -> None:
    slot = f"csv_{int(header)}"
    lsn = source.create_slot(slot)
    task = replication(tables=BOTH, postgres={"SlotName": slot},
                       s3_settings={"DataFormat": "csv", "AddColumnName": header})  # fmt: skip
    task.start(CdcStartPosition=lsn)
    since = len(workload.committed)
    for _ in range(6):
        workload.transaction()
    task.flush()
    expected = workload.expected(since)
    csv = CsvSettings(header=header)

    def events() -> list[tuple]:
        found = []
        for contract in (ACCOUNTS, TRANSFERS):
            for event in task.events(contract, csv).to_pylist():
                row = None if event[OP] == "D" else {n: event[n] for n in contract.column_names}
                found.append(((event[TS], event[SEQ]), (contract.table, event[OP], event["id"], row)))
        return [change for _, change in sorted(found, key=lambda e: e[0])]

    wait_for(lambda: len(events()) >= len(expected), what="the CSV files")
    assert events() == expected
    assert all(key.endswith(".csv") for key in task.files())
    task.stop()


@pytest.mark.parametrize("header", [False, True], ids=["no-header", "AddColumnName"])
def test_csv_files_read_back_with_and_without_a_header(replication, source, header):
    # A CSV file without a header row carries no column names: its columns must be the contract's, all of them.
    source.execute(SCHEMA + "ALTER TABLE accounts ADD COLUMN note text;")
    workload = Workload(source, newlines=False)
    workload.has_note = True
    _csv_round_trip(replication, source, workload, header)


def test_csv_values_holding_newlines_read_back(replication, source):
    # Header-less, so the table has every contract column from the start (as in the test above).
    source.execute(SCHEMA + "ALTER TABLE accounts ADD COLUMN note text;")
    workload = Workload(source)  # owners end in a line break: DMS quotes the value (RFC 4180)
    workload.has_note = True
    _csv_round_trip(replication, source, workload, header=False)


def test_snapshot_at_the_exported_snapshot_plus_cdc_from_its_lsn_is_the_final_state(replication, source, workload):
    for _ in range(10):
        workload.transaction()  # before the slot: in the snapshot, never in CDC
    replication_conn = psycopg.connect(source.server.url(database=source.name), autocommit=True,
                                       replication="database")  # fmt: skip
    _, lsn, snapshot, _ = replication_conn.execute(
        "CREATE_REPLICATION_SLOT snap_slot LOGICAL test_decoding (SNAPSHOT 'export')"
    ).fetchone()
    after_slot = len(workload.committed)
    for _ in range(10):
        workload.transaction()  # after the consistent point: in CDC, not in the snapshot
    with source.connect() as reader:
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        reader.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        state = {}
        for contract in (ACCOUNTS, TRANSFERS):
            cursor = reader.execute(f"SELECT * FROM {contract.table}")
            names = [c.name for c in cursor.description]
            state[contract.table] = {row[0]: as_read(contract, dict(zip(names, row, strict=True))) for row in cursor}
        reader.execute("COMMIT")
    replication_conn.close()
    for _ in range(10):
        workload.transaction()

    task = replication(tables=BOTH, postgres={"SlotName": "snap_slot", "PluginName": "test-decoding"})
    task.start(CdcStartPosition=lsn)
    task.flush()
    expected = workload.expected(since=after_slot)
    wait_for(lambda: len(landed(task)) >= len(expected), what="the changes after the consistent point")

    assert landed(task) == expected  # nothing from before the LSN, nothing missing after it
    for table, op, key, row in landed(task):
        if op == "D":
            state[table].pop(key, None)
        else:
            state[table][key] = row
    assert state == workload.final_state()


def test_full_load_and_cdc_from_dms_own_slot_is_the_final_state(replication, source, workload):
    for _ in range(15):
        workload.transaction()
    task = replication(migration_type="full-load-and-cdc", tables=BOTH)
    task.start()
    wait_for(lambda: task.describe()["ReplicationTaskStats"].get("TablesLoaded") == 2, what="the full load")
    for _ in range(15):
        workload.transaction()
    task.flush()

    def state() -> dict:
        tables = {}
        for contract in (ACCOUNTS, TRANSFERS):
            rows = {}
            events = task.events(contract, kinds=(FileKind.LOAD,)).to_pylist()
            events += sorted(task.events(contract).to_pylist(), key=lambda e: (e[TS], e[SEQ]))
            for event in events:
                if event[OP] == "D":
                    rows.pop(event["id"], None)
                else:
                    rows[event["id"]] = {n: event[n] for n in contract.column_names}
            tables[contract.table] = rows
        return tables

    with contextlib.suppress(AssertionError):
        wait_for(lambda: state() == workload.final_state(), what="load plus changes to equal the source")
    assert state() == workload.final_state()
    own = [name for name in _slots(source) if name != "dms_slot"]
    assert len(own) == 1  # DMS made a slot of its own for the task
    statistics = task.statistics()
    assert statistics["public.accounts"]["FullLoadRows"] > 0
    assert statistics["public.accounts"]["TableState"] == "Table completed"


def _slots(source) -> list[str]:
    with source.connect() as conn:
        return [name for (name,) in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = current_database() AND NOT temporary"
        )]  # fmt: skip


def test_a_full_load_task_writes_load_files_then_stops(replication, source):
    source.execute("CREATE TABLE big (id bigint PRIMARY KEY, body text); CREATE TABLE empty (id int PRIMARY KEY);"
                   "INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 3000) g")  # fmt: skip
    task = replication(migration_type="full-load", tables=("public.big", "public.empty"),
                       s3_settings={"MaxFileSize": 64})  # fmt: skip
    task.start(run=False)
    task.advance(task.timing["task_starting"])
    wait_for(lambda: task.status() == "stopped", what="the full load to finish")
    described = task.describe()
    assert described["StopReason"] == "Stop Reason FULL_LOAD_ONLY_FINISHED"
    keys = task.files()
    assert len(keys) > 1 and keys[0].endswith("/public/big/LOAD00000001.parquet")  # split at MaxFileSize (KB)
    assert not any("/empty/" in key for key in keys)  # DMS makes no folder for an empty table
    statistics = task.statistics()
    assert statistics["public.big"]["FullLoadRows"] == 3000
    assert statistics["public.empty"]["FullLoadRows"] == 0


def test_statistics_count_what_was_written(cdc, workload):
    task = cdc()
    for _ in range(20):
        workload.transaction()
    task.flush()
    expected = workload.expected()
    wait_for(lambda: len(landed(task)) >= len(expected), what="every change")
    statistics = task.statistics()
    for table in BOTH:
        counts = Counter(op for name, op, _, _ in expected if name == table)
        entry = statistics[table]
        assert (entry["Inserts"], entry["Updates"], entry["Deletes"]) == (counts["I"], counts["U"], counts["D"])
        assert (entry["AppliedInserts"], entry["FullLoadRows"]) == (counts["I"], 0)
