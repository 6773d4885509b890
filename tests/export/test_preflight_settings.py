"""Server settings the preflight refuses, on a stand-in connection (the test server's settings stay as they are)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from finetune_pipeline.export.errors import PreflightError
from finetune_pipeline.export.postgres import ExportSettings, TableSpec, preflight


class FakeConnection:
    """Answers the preflight's catalog queries from a dict of settings."""

    def __init__(self, **overrides):
        self.settings = {"wal_level": "logical", "max_replication_slots": 10, "max_wal_senders": 10,
                         "max_slot_wal_keep_size": -1, "slots_used": 0, "senders_used": 0, "can_replicate": True,
                         "version": 180001, **overrides}
        self.info = SimpleNamespace(server_version=self.settings["version"], dbname="appdb", user="replicator")

    def execute(self, query, params=None):
        s = self.settings
        if query.startswith("SHOW server_version"):
            row = [("18.1",)]
        elif "current_setting('wal_level')" in query:
            row = [(s["wal_level"], s["max_replication_slots"], s["max_wal_senders"], s["max_slot_wal_keep_size"],
                    s["slots_used"], s["senders_used"], s["can_replicate"])]
        elif "FROM pg_replication_slots WHERE slot_name" in query:
            row = []
        elif "block_size" in query:
            row = [("8192",)]
        elif "FROM pg_class c" in query:
            row = [(16384, "r", 8192, 16384, ["id"])]
        elif "FROM pg_attribute" in query:
            row = [("id", "int8")]
        elif "pg_stat_wal" in query:
            row = [(0, 10)]
        else:
            raise AssertionError(f"unexpected query {query}")
        return FakeCursor(row)


class FakeCursor(list):
    def fetchone(self):
        return self[0] if self else None

    def fetchall(self):
        return list(self)


def run(tmp_path, **overrides):
    return preflight(FakeConnection(**overrides), [TableSpec("public", "items")],
                     ExportSettings(export_dir=tmp_path, wal_bytes_per_day=10**6))


def test_a_logical_source_with_room_passes_and_warns_about_unlimited_wal(tmp_path):
    report = run(tmp_path)
    assert [table.primary_key for table in report.tables] == [["id"]]
    assert any("the slot keeps all WAL from the snapshot until DMS reads it" in w for w in report.warnings)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"wal_level": "replica"}, "wal_level is 'replica', not 'logical'"),
        ({"slots_used": 10}, "no free replication slot: 10 of max_replication_slots = 10 are used"),
        ({"senders_used": 10}, "no free WAL sender: 10 of max_wal_senders = 10 are running"),
        ({"can_replicate": False}, "may not create replication slots: ALTER ROLE replicator WITH REPLICATION"),
        ({"version": 90600}, "the export needs PostgreSQL 10 or later"),
    ],
)
def test_each_unfit_setting_is_refused_with_its_fix(tmp_path, overrides, message):
    with pytest.raises(PreflightError) as error:
        run(tmp_path, **overrides)
    assert message in str(error.value)


def test_every_problem_is_reported_at_once(tmp_path):
    with pytest.raises(PreflightError) as error:
        run(tmp_path, wal_level="minimal", slots_used=10, senders_used=10)
    assert len(error.value.problems) == 3
