"""MySQL: the binlog checks and the consistent snapshot's file:position, on a fake DB-API connection."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from finetune_pipeline.export.errors import PreflightError
from finetune_pipeline.export.manifest import read_manifest
from finetune_pipeline.export.mysql import check_binlog_settings, export_mysql, start_consistent_snapshot


class FakeCursor:
    def __init__(self, answers: dict[str, list], fail: tuple[str, ...] = ()):
        self.answers, self.fail, self.issued, self._rows = answers, fail, [], []

    def execute(self, query, params=None):
        self.issued.append(" ".join(query.split()))
        if any(query.startswith(prefix) for prefix in self.fail):
            raise RuntimeError("You have an error in your SQL syntax near 'BINARY LOG STATUS'")
        for prefix, rows in self.answers.items():
            if query.startswith(prefix):
                self._rows = list(rows)
                return
        self._rows = []

    def fetchone(self):
        return self._rows.pop(0) if self._rows else None

    def fetchall(self):
        rows, self._rows = self._rows, []
        return rows

    def fetchmany(self, n):
        rows, self._rows = self._rows[:n], self._rows[n:]
        return rows


class FakeConnection:
    def __init__(self, cursor):
        self._cursor = cursor

    def cursor(self):
        return self._cursor


GOOD = {"SELECT @@GLOBAL.log_bin": [(1, "ROW", "FULL", "3e11fa47-71ca-11e1-9e33-c80aa9429562")],
        "SHOW BINARY LOG STATUS": [("mysql-bin.000003", 1234, "", "", "")]}


def test_binlog_settings_that_dms_cannot_read_are_refused():
    cursor = FakeCursor({"SELECT @@GLOBAL.log_bin": [(0, "STATEMENT", "MINIMAL", "u")]})
    with pytest.raises(PreflightError) as error:
        check_binlog_settings(cursor)
    text = str(error.value)
    assert "binary logging is off" in text
    assert "binlog_format is 'STATEMENT', not ROW" in text
    assert "binlog_row_image is 'MINIMAL', not FULL" in text
    assert cursor.issued == ["SELECT @@GLOBAL.log_bin, @@GLOBAL.binlog_format, @@GLOBAL.binlog_row_image, "
                             "@@server_uuid"]


def test_the_position_is_read_under_the_lock_inside_the_snapshot_transaction():
    cursor = FakeCursor(GOOD)
    position = start_consistent_snapshot(cursor)
    assert position.cdc_start_position == "mysql-bin.000003:1234"
    assert cursor.issued == ["FLUSH TABLES WITH READ LOCK",
                             "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                             "START TRANSACTION WITH CONSISTENT SNAPSHOT", "SHOW BINARY LOG STATUS",
                             "UNLOCK TABLES"]


def test_servers_before_8_2_answer_show_master_status():
    answers = {**GOOD, "SHOW MASTER STATUS": [("binlog.000042", 157, "", "", "")]}
    cursor = FakeCursor(answers, fail=("SHOW BINARY LOG STATUS",))
    assert start_consistent_snapshot(cursor).cdc_start_position == "binlog.000042:157"
    assert cursor.issued[-2:] == ["SHOW MASTER STATUS", "UNLOCK TABLES"]


def test_the_lock_is_released_when_reading_the_position_fails():
    cursor = FakeCursor({}, fail=("SHOW",))
    cursor.fail = ("SHOW BINARY", "SHOW MASTER")
    with pytest.raises(Exception, match="understood neither"):
        start_consistent_snapshot(cursor)
    assert cursor.issued[-1] == "UNLOCK TABLES"


def test_export_writes_load_files_and_a_manifest_with_the_binlog_position(tmp_path):
    answers = {
        **GOOD,
        "SELECT COLUMN_NAME": [("id", "bigint", "PRI"), ("name", "varchar", "")],
        "SELECT `id`, `name` FROM `shop`.`customers`": [(1, "Ada"), (2, "Grace"), (3, None)],
    }
    cursor = FakeCursor(answers)
    manifest = export_mysql(FakeConnection(cursor), [("shop", "customers")], tmp_path)
    assert manifest.engine == "mysql" and manifest.slot is None
    assert manifest.cdc_start_position == "mysql-bin.000003:1234"
    assert manifest.source.system_identifier == "3e11fa47-71ca-11e1-9e33-c80aa9429562"
    assert manifest.tables["shop.customers"].rows == 3
    assert read_manifest(tmp_path) == manifest
    table = pq.read_table(tmp_path / "shop" / "customers" / "LOAD00000001.parquet")
    assert table.column_names == ["Op", "_dms_ts", "_dms_seq", "id", "name"]
    assert table.column("name").to_pylist() == ["Ada", "Grace", None]
    assert cursor.issued[-1] == "COMMIT"


def test_a_mysql_table_without_a_primary_key_is_refused(tmp_path):
    cursor = FakeCursor({**GOOD, "SELECT COLUMN_NAME": [("id", "bigint", "")]})
    with pytest.raises(PreflightError, match="table shop.log has no primary key"):
        export_mysql(FakeConnection(cursor), [("shop", "log")], tmp_path)
    assert "FLUSH TABLES WITH READ LOCK" not in cursor.issued
