"""A fresh schema and slot name per test on the session's embedded PostgreSQL (wal_level=logical)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from finetune_pipeline.export.postgres import ExportSettings, TableSpec


@dataclass
class Source:
    url: str
    schema: str
    slot: str

    def sql(self, query: str, params=None):
        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else None

    def table(self, name: str, key: str | None = None) -> TableSpec:
        return TableSpec(self.schema, name, (key,) if key else None)

    def settings(self, export_dir: Path, **kwargs) -> ExportSettings:
        kwargs.setdefault("wal_bytes_per_day", 1_000_000)
        kwargs.setdefault("slot_name", self.slot)
        return ExportSettings(export_dir=export_dir, **kwargs)


@pytest.fixture
def source(source_db):
    suffix = uuid.uuid4().hex[:8]
    src = Source(source_db.url(), f"s_{suffix}", f"slot_{suffix}")
    src.sql(f"CREATE SCHEMA {src.schema}")
    yield src
    for (slot,) in src.sql("SELECT slot_name FROM pg_replication_slots WHERE slot_name = %s", (src.slot,)):
        src.sql("SELECT pg_drop_replication_slot(%s)", (slot,))
    src.sql(f"DROP SCHEMA {src.schema} CASCADE")
