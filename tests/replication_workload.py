"""What a replication test runs on its source: two tables, random transactions that remember exactly what they
committed, and the landed change stream read back in commit order (shared by the DMS data-plane tests and the
fault suite)."""

from __future__ import annotations

import random
from datetime import UTC

import psycopg
from replication_helpers import wait_for

from finetune_pipeline.datasets.contracts import TableContract
from finetune_pipeline.datasets.dms_format import OP, SEQ, TS

ACCOUNTS = TableContract.model_validate(
    {
        "table": "public.accounts",
        "primary_key": ["id"],
        "columns": [
            {"name": "id", "type": "int64", "nullable": False},
            {"name": "owner", "type": "string", "nullable": False},
            {"name": "balance", "type": "float64"},
            {"name": "active", "type": "string"},  # DMS writes PostgreSQL booleans as 'true'/'false'
            {"name": "updated_at", "type": "timestamp[us, UTC]"},
            {"name": "note", "type": "string"},  # added by ALTER TABLE half-way through
        ],
    }
)
TRANSFERS = TableContract.model_validate(
    {
        "table": "public.transfers",
        "primary_key": ["id"],
        "columns": [
            {"name": "id", "type": "int64", "nullable": False},
            {"name": "account_id", "type": "int64"},
            {"name": "amount", "type": "float64"},
            {"name": "memo", "type": "string"},
        ],
    }
)
SCHEMA = """
CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance double precision, active boolean,
                       updated_at timestamptz);
CREATE TABLE transfers (id bigint PRIMARY KEY, account_id bigint, amount double precision, memo text);
"""
BOTH = ("public.accounts", "public.transfers")


def as_read(contract: TableContract, values: dict) -> dict:
    """A row as the reader returns it: every contract column, booleans as DMS's strings, times in UTC."""
    out = {}
    for column in contract.column_names:
        value = values.get(column)
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif hasattr(value, "astimezone"):
            value = value.astimezone(UTC)
        out[column] = value
    return out


class Workload:
    """Random transactions on the source that remember exactly what they committed, in commit order."""

    def __init__(self, source, seed: int = 7, newlines: bool = True):
        self.source = source
        self.newline = "\n" if newlines else ""
        self.conn = source.connect()
        self.random = random.Random(seed)
        self.live: dict[str, dict[int, dict]] = {"public.accounts": {}, "public.transfers": {}}
        self.committed: list[tuple[str, str, int, dict | None]] = []  # (table, op, key, row after or None)
        self.next_id = 1
        self.has_note = False

    def _values(self, table: str, update: bool) -> dict:
        pick = self.random
        if table == "public.accounts":
            values = {"owner": f"owner {pick.randrange(10_000)}, \"it's\"{self.newline}",
                      "balance": pick.uniform(-1e4, 1e4), "active": pick.random() < 0.7}  # fmt: skip
            if self.has_note:
                values["note"] = pick.choice([None, "vip", "watch, list"])
            if update and pick.random() < 0.5:
                values = {"balance": values["balance"]}
            return values
        return {"account_id": pick.randrange(100), "amount": round(pick.uniform(0, 500), 2),
                "memo": pick.choice([None, "", "rent", "a " * 50])}  # fmt: skip

    def _statement(self, table: str, op: str, key: int) -> tuple:
        short = table.split(".")[1]
        if op == "D":
            self.conn.execute(f"DELETE FROM {short} WHERE id = %s", [key])
            return table, "D", key, None
        values = self._values(table, update=op == "U")
        stamp = table == "public.accounts"  # accounts.updated_at = now(): the same for the whole transaction
        if op == "I":
            names = ["id", *values] + (["updated_at"] if stamp else [])
            marks = ["%s"] * (len(values) + 1) + (["now()"] if stamp else [])
            sql = f"INSERT INTO {short} ({', '.join(names)}) VALUES ({', '.join(marks)}) RETURNING *"
            cursor = self.conn.execute(sql, [key, *values.values()])
        else:
            assignments = [f"{name} = %s" for name in values] + (["updated_at = now()"] if stamp else [])
            sql = f"UPDATE {short} SET {', '.join(assignments)} WHERE id = %s RETURNING *"
            cursor = self.conn.execute(sql, [*values.values(), key])
        names = [column.name for column in cursor.description]
        return table, op, key, dict(zip(names, cursor.fetchone(), strict=True))

    def transaction(self, size: int | None = None) -> None:
        """One transaction of 1-6 statements over both tables: inserts, updates (often of the row just changed)
        and deletes."""
        pick = self.random
        txn: list = []
        with self.conn.transaction():
            last = None
            for _ in range(size or pick.randint(1, 6)):
                table = pick.choice(BOTH)
                live = self._live_after(table, txn)
                op = pick.choices(["I", "U", "D"], [4, 4, 1])[0] if live else "I"
                if op == "I":
                    key, self.next_id = self.next_id, self.next_id + 1
                elif last is not None and last[0] == table and last[1] in live and pick.random() < 0.6:
                    key = last[1]  # the same row changed again within the transaction
                else:
                    key = pick.choice(sorted(live))
                txn.append(self._statement(table, op, key))
                last = (table, key)
        for table, op, key, row in txn:
            if op == "D":
                self.live[table].pop(key)
            else:
                self.live[table][key] = row
        self.committed.extend(txn)

    def _live_after(self, table: str, txn: list) -> set[int]:
        keys = set(self.live[table])
        for name, op, key, _ in txn:
            if name == table:
                (keys.discard if op == "D" else keys.add)(key)
        return keys

    def add_note_column(self) -> None:
        self.conn.execute("ALTER TABLE accounts ADD COLUMN note text")
        self.has_note = True

    def reconnect(self) -> None:
        self.conn.close()
        self.conn = wait_for(lambda: _connect(self.source), what="the server back")

    def expected(self, since: int = 0) -> list[tuple]:
        """The committed changes from the ``since``-th on, as the reader returns them."""
        contracts = {"public.accounts": ACCOUNTS, "public.transfers": TRANSFERS}
        return [(table, op, key, None if row is None else as_read(contracts[table], row))
                for table, op, key, row in self.committed[since:]]  # fmt: skip

    def final_state(self) -> dict:
        contracts = {"public.accounts": ACCOUNTS, "public.transfers": TRANSFERS}
        return {table: {key: as_read(contracts[table], row) for key, row in rows.items()}
                for table, rows in self.live.items()}  # fmt: skip


def _connect(source):
    try:
        return source.connect()
    except psycopg.OperationalError:
        return None


def landed(task, contracts=(ACCOUNTS, TRANSFERS)) -> list[tuple]:
    """Every landed CDC change of the tables, in commit order ((_dms_ts, _dms_seq), as the merge orders them)."""
    events = []
    for contract in contracts:
        for event in task.events(contract).to_pylist():
            key = event["id"]
            row = None if event[OP] == "D" else {name: event[name] for name in contract.column_names}
            events.append(((event[TS], event[SEQ]), (contract.table, event[OP], key, row)))
    events.sort(key=lambda item: item[0])
    return [change for _, change in events]
