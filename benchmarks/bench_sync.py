"""Benchmarks for the dataset sync (not a test): prints our figures beside a reference for each.

  memory    peak RSS of a full build of an N-row table from DMS full-load files (target <= 1 GiB at 20M rows)
  validate  rows/s for a 10-check contract over Parquet incl. reading, beside pandera doing the same checks
  merge     10M change events over 2M keys: our sync (merge, Parquet files and the Iceberg commit) vs DuckDB
            doing the same last-event-per-key merge into one Parquet file (target <= 1.0x)
  scale     incremental sync of a fixed delta over 1x vs 100x already-synced history (target <= 1.3x);
            then the same 20k-event delta over a 100x larger table (200k vs 20M rows), four ways: skewed as
            change streams are (80% of the changes on the newest 5% of the keys, the rest spread over the
            older keys; target <= 2x), only on the newest 5%, only new keys (appends), and uniformly random;
            with buckets rewritten, merged on read (position delete files) and kept, and files replaced

Every sync commits to an Iceberg SQL catalog on a SQLite file, its warehouse in the run's folder.

Each measurement runs in a fresh child process so peak RSS is its own. pandera and duckdb are reference
points only (install them for this script: see the report for the pins used).

  python benchmarks/bench_sync.py                      # everything at full size (tens of minutes on 2 cores)
  python benchmarks/bench_sync.py --quick              # small sizes, a minute or two
  python benchmarks/bench_sync.py --only merge --events 2000000 --keys 400000
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from finetune_pipeline.datasets import sync_defaults
from finetune_pipeline.datasets.dms_format import cdc_file_name, load_file_name, write_dms_file
from finetune_pipeline.datasets.store import LocalStore

REPO = Path(__file__).resolve().parents[1]

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
SUBJECTS = [
    f"Subject line number {i} about the {p}" for i in range(40) for p in ("API", "dashboard", "invoice")
]
BODIES = [
    f"Body text {i}: the customer explains a problem in a couple of sentences of support prose."
    for i in range(500)
]
TICKETS_CONTRACT = (REPO / "include" / "contracts" / "public.tickets.yaml").read_text()
# The demo contract plus a regex and a non-null check: 10 checks (schema, 3x not_null, regex, allowed values,
# range, primary key, freshness, row count).
VALIDATE_CONTRACT = TICKETS_CONTRACT.replace(
    "  - name: subject\n    type: string\n    nullable: false\n",
    "  - name: subject\n    type: string\n    nullable: false\n"
    '    regex: "Subject line number [0-9]+ about the .*"\n',
)


# ------------------------------------------------------------------------------------------------ data


def tickets(ids: np.ndarray, rng: np.random.Generator, when: datetime) -> pa.Table:
    """Ticket rows for the given ids, built column-wise (no Python loop per row)."""
    n = len(ids)
    base = int(when.timestamp() * 1e6)
    return pa.table(
        {
            "ticket_id": pa.array(ids, pa.int64()),
            "customer_id": pa.array(rng.integers(1, 50_000, n), pa.int64()),
            "subject": pa.array(SUBJECTS).take(pa.array(rng.integers(0, len(SUBJECTS), n))),
            "body": pa.array(BODIES).take(pa.array(rng.integers(0, len(BODIES), n))),
            "status": pa.array(["open", "pending", "closed"]).take(pa.array(rng.integers(0, 3, n))),
            "priority": pa.array(rng.integers(1, 5, n).astype(np.int32)),
            "updated_at": pa.array(base - rng.integers(0, 86_400_000_000, n), pa.timestamp("us", tz="UTC")),
        }
    )


def dms_columns(table: pa.Table, ops: np.ndarray | str, ts: np.ndarray | None, counter0: int) -> pa.Table:
    """Prefix Op, _dms_ts, _dms_seq the way DMS writes them (ts: microseconds since the epoch)."""
    n = table.num_rows
    op = pa.array(np.full(n, ops) if isinstance(ops, str) else ops, pa.string())
    if ts is None:
        tsa = pa.nulls(n, pa.timestamp("us", tz="UTC"))
        seq = pa.nulls(n, pa.string())
    else:
        tsa = pa.array(ts, pa.timestamp("us", tz="UTC"))
        hundredths = pc.strftime(pc.cast(pc.cast(tsa, pa.int64()), pa.timestamp("us")), format="%Y%m%d%H%M%S")
        hundredths = pc.utf8_slice_codeunits(hundredths, 0, 14)
        frac = pc.cast(pa.array((ts // 10_000) % 100), pa.string())
        frac = pc.utf8_lpad(frac, 2, "0")
        counter = pc.utf8_lpad(pc.cast(pa.array(np.arange(counter0, counter0 + n)), pa.string()), 19, "0")
        seq = pc.binary_join_element_wise(hundredths, frac, counter, "")
    return pa.Table.from_arrays(
        [op, tsa, seq, *table.columns], names=["Op", "_dms_ts", "_dms_seq", *table.column_names]
    )


def write_load(store, rows: int, chunk: int = 1_000_000, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    for n, start in enumerate(range(0, rows, chunk), start=1):
        ids = np.arange(start + 1, min(rows, start + chunk) + 1)
        table = dms_columns(tickets(ids, rng, T0), "I", None, 0)
        write_dms_file(store, f"landing/public/tickets/{load_file_name(n)}", table, row_group_rows=250_000)


def write_events(
    store,
    events: int,
    keys: int,
    files: int,
    start: datetime,
    seed: int,
    counter0: int = 1,
    ops=("I", "U", "D"),
    weights=(0.2, 0.7, 0.1),
    file_interval: float = 60.0,
    every_key: bool = False,
    sample=None,
) -> list[str]:
    """CDC files with `events` changes over `keys` keys, one file per `file_interval` seconds from `start`
    (DMS's default CdcMaxBatchInterval is 60 s), commit times increasing. ``sample(rng, n)`` picks the keys
    (uniformly over 1..keys when None)."""
    rng = np.random.default_rng(seed)
    per = max(1, events // files)
    keys_out, t = [], int(start.timestamp() * 1e6)
    for f in range(files):
        n = per if f < files - 1 else events - per * (files - 1)
        if n <= 0:
            break
        if every_key:
            ids = np.arange(1, keys + 1)
        elif sample is not None:
            ids = sample(rng, n)
        else:
            ids = rng.integers(1, keys + 1, n)
        step = max(1, int(file_interval * 1e6 / n))
        ts = t + np.cumsum(rng.integers(1, 2 * step, n))
        t = int(ts[-1])
        op = np.array(ops)[rng.choice(len(ops), n, p=weights)]
        table = dms_columns(tickets(ids, rng, start), op, ts, counter0)
        counter0 += n
        key = f"landing/public/tickets/{cdc_file_name(datetime.fromtimestamp((t + 1000) / 1e6, UTC))}"
        write_dms_file(store, key, table, row_group_rows=250_000)
        keys_out.append(key)
    return keys_out


def contracts(tmp: Path, text: str = TICKETS_CONTRACT) -> Path:
    folder = tmp / "contracts"
    folder.mkdir(exist_ok=True)
    (folder / "public.tickets.yaml").write_text(text.replace("tolerance: 0.01", "tolerance: 1.0"))
    return folder


# ------------------------------------------------------------------------------------------------ children


def _rss_mb() -> float:
    """Peak RSS of this process (VmHWM). Not ru_maxrss: Linux carries that over from the parent across
    fork+exec, so a child would report the benchmark driver's own peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_sync(root: str, contracts_dir: str, full: bool, memory_mb: int, rows_per_bucket: int) -> dict:
    from finetune_pipeline.datasets.catalog import CatalogSpec
    from finetune_pipeline.datasets.sync import SyncSpec, run_sync

    store = LocalStore(root)
    spec = SyncSpec(
        landing_prefix="landing",
        dataset_prefix="ds",
        contracts_dir=contracts_dir,
        catalog=CatalogSpec(uri=f"sqlite:///{root}/catalog.db", warehouse=store.location("ds/warehouse")),
        merge_memory_bytes=memory_mb * 2**20,
        rows_per_bucket=rows_per_bucket,
        work_dir=Path(root) / "work",
    )
    (Path(root) / "work").mkdir(exist_ok=True)
    # Imported before the clock starts, as DuckDB is: an Airflow worker has them loaded, and this machine's
    # PYTHONDONTWRITEBYTECODE would otherwise add compiling pyiceberg to every child's figure.
    import pyiceberg.catalog.sql  # noqa: F401
    import pyiceberg.io.pyarrow  # noqa: F401
    import pyiceberg.table  # noqa: F401

    start = time.perf_counter()
    result = run_sync(store, spec, full_rebuild=full, now=T0 + timedelta(days=2))
    seconds = time.perf_counter() - start
    assert result.published, [c.to_dict() for c in result.failed_checks]
    table = json.loads(store.get_bytes(result.report_keys["json"]))["tables"]["public.tickets"]
    return {
        "seconds": seconds,
        "peak_rss_mb": _rss_mb(),
        "rows": result.row_counts["public.tickets"],
        "buckets_rewritten": table["buckets_rewritten"],
        "buckets_kept": table["buckets_kept"],
        "data_files_added": table["data_files_added"],
        "data_files_removed": table["data_files_removed"],
        "buckets_merged_on_read": table["buckets_merged_on_read"],
        "delete_files_added": table["delete_files_added"],
    }


def child_validate(paths: list[str], contract_path: str, use_statistics: bool) -> dict:
    from finetune_pipeline.datasets.contracts import load_contract
    from finetune_pipeline.datasets.validate import validate_parquet

    contract = load_contract(contract_path)
    start = time.perf_counter()
    report = validate_parquet(
        paths, contract, now=T0 + timedelta(hours=1), expected_rows=None, use_statistics=use_statistics
    )
    seconds = time.perf_counter() - start
    checks = len(report.results) + 1  # + row count, judged below as pandera does
    return {
        "seconds": seconds,
        "rows": report.rows,
        "checks": checks,
        "passed": report.passed,
        "peak_rss_mb": _rss_mb(),
        "columns_read": report.columns_read,
    }


def child_pandera(paths: list[str]) -> dict:
    import pandas as pd
    import pandera
    import pandera.pandas as pa_
    from pandera import Check

    now = pd.Timestamp(T0 + timedelta(hours=1))
    schema = pa_.DataFrameSchema(
        {
            "ticket_id": pa_.Column("int64", nullable=False, unique=True),
            "customer_id": pa_.Column("int64", nullable=False),
            "subject": pa_.Column(
                str,
                nullable=False,
                checks=Check.str_matches(r"^(?:Subject line number [0-9]+ about the .*)$"),
            ),
            "body": pa_.Column(str, nullable=True),
            "status": pa_.Column(str, nullable=True, checks=Check.isin(["open", "pending", "closed"])),
            "priority": pa_.Column("int32", nullable=True, checks=Check.in_range(1, 4)),
            "updated_at": pa_.Column("datetime64[us, UTC]", nullable=True),
            "_dms_ts": pa_.Column("datetime64[us, UTC]", nullable=True),
        },
        checks=[
            Check(lambda df: now - df["_dms_ts"].max() <= pd.Timedelta(hours=2), name="freshness"),
            Check(lambda df: len(df) > 0, name="row_count"),
        ],
    )
    start = time.perf_counter()
    frames = [pd.read_parquet(p) for p in paths]
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    read = time.perf_counter() - start
    schema.validate(df, lazy=True)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "read_seconds": read,
        "rows": len(df),
        "peak_rss_mb": _rss_mb(),
        "pandera": pandera.__version__,
    }


def child_duckdb(paths: list[str], out: str) -> dict:
    import duckdb

    con = duckdb.connect()
    files = ", ".join(f"'{p}'" for p in paths)
    start = time.perf_counter()
    con.execute(f"""
        COPY (
            SELECT * EXCLUDE (Op, rn) FROM (
                SELECT *, row_number() OVER (
                    PARTITION BY ticket_id ORDER BY _dms_ts DESC, _dms_seq DESC) AS rn
                FROM read_parquet([{files}])
            ) WHERE rn = 1 AND Op <> 'D'
        ) TO '{out}' (FORMAT parquet)
    """)
    seconds = time.perf_counter() - start
    rows = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0]
    return {
        "seconds": seconds,
        "rows": rows,
        "peak_rss_mb": _rss_mb(),
        "threads": con.execute("SELECT current_setting('threads')").fetchone()[0],
        "duckdb": duckdb.__version__,
    }


def child_merge_core(paths: list[str], contract_path: str) -> dict:
    """Our merge kernel alone on the same events in memory (no I/O): where the time goes."""
    from finetune_pipeline.datasets.contracts import load_contract
    from finetune_pipeline.datasets.dms_format import classify, read_events
    from finetune_pipeline.datasets.merge import merge_events

    contract = load_contract(contract_path)
    start = time.perf_counter()
    batches = []
    for p in paths:
        f = classify("landing/" + Path(p).name, "landing/")
        batches.extend(read_events(p, f, contract))
    events = pa.Table.from_batches(batches).combine_chunks()
    read = time.perf_counter() - start
    t1 = time.perf_counter()
    out = merge_events(events, contract.primary_key)
    merge = time.perf_counter() - t1
    return {
        "read_normalize_seconds": read,
        "merge_seconds": merge,
        "rows": out.live.num_rows,
        "peak_rss_mb": _rss_mb(),
    }


CHILDREN = {
    "sync": child_sync,
    "validate": child_validate,
    "pandera": child_pandera,
    "duckdb": child_duckdb,
    "merge_core": child_merge_core,
}


def run_child(name: str, **kwargs) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", name, json.dumps(kwargs)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_sync_child(root: Path, cpath: Path, memory_mb: int, full: bool = False) -> dict:
    return run_child(
        "sync",
        root=str(root),
        contracts_dir=str(cpath),
        full=full,
        memory_mb=memory_mb,
        rows_per_bucket=sync_defaults.ROWS_PER_BUCKET,
    )


# ------------------------------------------------------------------------------------------------ benches


def bench_memory(work: Path, rows: int, memory_mb: int) -> dict:
    root = work / "memory"
    store = LocalStore(root)
    t = time.perf_counter()
    write_load(store, rows)
    gen = time.perf_counter() - t
    res = run_sync_child(root, contracts(work), memory_mb, full=True)
    res["generate_seconds"] = gen
    res["rows_per_second"] = res["rows"] / res["seconds"]
    shutil.rmtree(root)
    return res


def bench_validate(work: Path, rows: int) -> dict:
    import pyarrow.parquet as pq

    root = work / "validate"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    paths = []
    for i, start in enumerate(range(0, rows, 1_000_000)):
        ids = np.arange(start + 1, min(rows, start + 1_000_000) + 1)
        t = tickets(ids, rng, T0)
        t = t.append_column(
            "_dms_ts", pa.array(np.full(len(ids), int(T0.timestamp() * 1e6)), pa.timestamp("us", tz="UTC"))
        )
        path = root / f"part-{i:05d}.parquet"
        pq.write_table(t, path)
        paths.append(str(path))
    (work / "vc").mkdir(exist_ok=True)
    cpath = str(contracts(work / "vc", VALIDATE_CONTRACT) / "public.tickets.yaml")
    ours = run_child("validate", paths=paths, contract_path=cpath, use_statistics=True)
    full_read = run_child("validate", paths=paths, contract_path=cpath, use_statistics=False)
    pandera = run_child("pandera", paths=paths)
    shutil.rmtree(root)
    return {"ours": ours, "ours_no_statistics": full_read, "pandera": pandera}


def bench_merge(work: Path, events: int, keys: int, memory_mb: int, repeat: int = 5) -> dict:
    """Ours and DuckDB alternately, ``repeat`` times each on the same files (this machine is shared, so
    alternating spreads its load over both): the median run of each."""
    root = work / "merge"
    store = LocalStore(root)
    write_events(store, events, keys, files=10, start=T0, seed=5, weights=(0.3, 0.6, 0.1))
    paths = [str(root / k) for k in sorted(i.key for i in store.list_after("landing/"))]
    cpath = contracts(work)
    core = run_child("merge_core", paths=paths, contract_path=str(cpath / "public.tickets.yaml"))
    ducks, ours = [], []
    for attempt in range(repeat):
        ducks.append(run_child("duckdb", paths=paths, out=str(work / "duck.parquet")))
        (work / "duck.parquet").unlink(missing_ok=True)
        trial = work / f"merge-run{attempt}"
        shutil.copytree(root, trial)
        ours.append(run_sync_child(trial, cpath, memory_mb, full=True))
        shutil.rmtree(trial)
    shutil.rmtree(root)
    duck = sorted(ducks, key=lambda r: r["seconds"])[len(ducks) // 2]
    mine = sorted(ours, key=lambda r: r["seconds"])[len(ours) // 2]
    duck["all_seconds"] = [round(r["seconds"], 2) for r in ducks]
    mine["all_seconds"] = [round(r["seconds"], 2) for r in ours]
    assert mine["rows"] == duck["rows"], (mine["rows"], duck["rows"])
    return {"ours": mine, "ours_core": core, "duckdb": duck}


def skewed(keys: int, newest: float, share: float):
    """Keys for a delta whose ``share`` of changes hit the newest ``newest`` of the keys (serial ids: the
    highest), the rest spread uniformly over the older ones."""
    boundary = max(1, int(keys * (1 - newest)))

    def sample(rng: np.random.Generator, n: int) -> np.ndarray:
        recent = rng.random(n) < share
        hot = rng.integers(boundary + 1, keys + 1, n)
        cold = rng.integers(1, boundary + 1, n)
        return np.where(recent, hot, cold)

    return sample


def appended(keys: int):
    """New keys after the highest: an append-only stream (inserts of new ids)."""

    taken = [keys]

    def sample(rng: np.random.Generator, n: int) -> np.ndarray:
        start, taken[0] = taken[0], taken[0] + n
        return start + 1 + rng.permutation(n)

    return sample


# Kinds of delta: how keys are picked, and the mix of operations (I, U, D).
DELTAS = {
    "skewed": (lambda keys: skewed(keys, newest=0.05, share=0.8), (0.1, 0.8, 0.1)),
    "newest": (lambda keys: skewed(keys, newest=0.05, share=1.0), (0.1, 0.8, 0.1)),
    "appends": (appended, (1.0, 0.0, 0.0)),
    "uniform": (lambda keys: None, (0.1, 0.8, 0.1)),
}


def time_delta(
    root: Path,
    cpath: Path,
    memory_mb: int,
    keys: int,
    delta: int,
    start: datetime,
    counter0: int,
    runs: int,
    sample=None,
    weights: tuple[float, float, float] = (0.1, 0.8, 0.1),
) -> dict:
    """Sync what has landed under `root`, land the fixed delta (by default 10% inserts, 80% updates, 10%
    deletes; keys from ``sample``, random by default), then run the same incremental sync `runs` times, each from a
    copy of that starting state: the median run, with the first sync's time as `first_sync_seconds`."""
    first = run_sync_child(root, cpath, memory_mb)
    write_events(
        LocalStore(root),
        delta,
        keys,
        files=2,
        start=start,
        seed=7,
        counter0=counter0,
        ops=("I", "U", "D"),
        weights=weights,
        sample=sample,
    )
    results = []
    for attempt in range(runs):
        trial = root.with_name(f"{root.name}-run{attempt}")
        shutil.copytree(root, trial)
        results.append(run_sync_child(trial, cpath, memory_mb))
        shutil.rmtree(trial)
    results.sort(key=lambda r: r["seconds"])
    res = results[len(results) // 2]
    res["all_seconds"] = [round(r["seconds"], 3) for r in results]
    res["first_sync_seconds"] = first["seconds"]
    return res


def bench_scale(
    work: Path, keys: int, history_files: int, per_file: int, delta: int, factors: list[int], memory_mb: int
) -> dict:
    out = {}
    cpath = contracts(work)
    for factor in factors:
        root = work / f"scale-{factor}"
        store = LocalStore(root)
        write_load(store, keys)
        # One update of every key first, so both histories leave every row with CDC lineage columns:
        # the table itself is then the same size and shape in both cases; only the history differs.
        write_events(
            store,
            keys,
            keys,
            files=1,
            start=T0 + timedelta(seconds=1),
            seed=99,
            ops=("U",),
            weights=(1.0,),
            every_key=True,
        )
        end = T0 + timedelta(seconds=120)
        counter = keys + 1
        # History: already-synced CDC files (updates to the same keys, so the table size stays fixed).
        n_files = history_files * factor
        for i in range(0, n_files, 50):
            batch = min(50, n_files - i)
            write_events(
                store,
                batch * per_file,
                keys,
                files=batch,
                start=end,
                seed=100 + i,
                counter0=counter,
                ops=("U",),
                weights=(1.0,),
            )
            counter += batch * per_file
            end = end + timedelta(seconds=batch * 60 + 60)
        res = time_delta(root, cpath, memory_mb, keys, delta, end + timedelta(seconds=5), counter, runs=5)
        res["history_files"] = n_files
        res["history_sync_seconds"] = res.pop("first_sync_seconds")
        out[factor] = res
        shutil.rmtree(root)
    return out


def bench_scale_table(work: Path, keys: int, factor: int, delta: int, memory_mb: int, kinds: list[str]) -> dict:
    """The same delta over a table of `keys` rows and one `factor` times larger, each built from a full
    load alone, for each kind of delta in ``kinds`` (see DELTAS). The table is built once per size."""
    out: dict[str, dict] = {kind: {} for kind in kinds}
    cpath = contracts(work)
    for rows in (keys, keys * factor):
        built = work / f"table-{rows}"
        write_load(LocalStore(built), rows)
        for kind in kinds:
            root = work / f"table-{rows}-{kind}"
            shutil.copytree(built, root)
            sampler, weights = DELTAS[kind]
            res = time_delta(root, cpath, memory_mb, rows, delta, T0 + timedelta(seconds=5), 1, runs=3,
                             sample=sampler(rows), weights=weights)  # fmt: skip
            res["table_rows"] = rows
            res["build_seconds"] = res.pop("first_sync_seconds")
            out[kind][rows] = res
            shutil.rmtree(root)
        shutil.rmtree(built)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child")
    parser.add_argument("args", nargs="?")
    parser.add_argument("--only", default="memory,validate,merge,scale",
                        help="memory, validate, merge, scale (history, then table size), table (table size only)")
    parser.add_argument("--deltas", default="skewed,newest,appends,uniform",
                        help="kinds of delta for the table size: skewed, newest, appends, uniform")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=20_000_000, help="memory bench table size")
    parser.add_argument("--validate-rows", type=int, default=10_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--keys", type=int, default=2_000_000)
    parser.add_argument("--scale-keys", type=int, default=200_000)
    parser.add_argument("--memory-mb", type=int, default=128, help="merge_memory_bytes for the sync")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json-out", help="also write all figures to this JSON file")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](**json.loads(args.args))))
        return
    if args.quick:
        args.rows, args.validate_rows, args.events, args.keys, args.scale_keys = (
            1_000_000,
            2_000_000,
            1_000_000,
            200_000,
            50_000,
        )
    work = Path(tempfile.mkdtemp(prefix="ftp-bench-", dir=args.workdir))
    only = set(args.only.split(","))
    results = {}
    try:
        if "memory" in only:
            r = bench_memory(work, args.rows, args.memory_mb)
            results["memory"] = r
            print(f"\n[memory] full build of {r['rows']:,} rows from DMS full-load Parquet")
            print(
                f"  peak RSS {r['peak_rss_mb']:,.0f} MiB (target <= 1024)   time {r['seconds']:.1f} s   "
                f"{r['rows_per_second']:,.0f} rows/s"
            )
        if "validate" in only:
            r = bench_validate(work, args.validate_rows)
            results["validate"] = r
            o, f, p = r["ours"], r["ours_no_statistics"], r["pandera"]
            print(f"\n[validate] {o['rows']:,} rows, {o['checks']}-check contract, Parquet incl. read")
            print(f"  {'':28}{'seconds':>10}{'rows/s':>16}{'peak RSS MiB':>14}")
            for label, x in (
                ("ours (footer statistics)", o),
                ("ours (read every value)", f),
                (f"pandera {p['pandera']}", p),
            ):
                print(
                    f"  {label:28}{x['seconds']:>10.2f}{x['rows'] / x['seconds']:>16,.0f}"
                    f"{x['peak_rss_mb']:>14,.0f}"
                )
            print(f"  target >= 5,000,000 rows/s; pandera read {p['read_seconds']:.2f} s of its time")
        if "merge" in only:
            r = bench_merge(work, args.events, args.keys, args.memory_mb)
            results["merge"] = r
            o, c, d = r["ours"], r["ours_core"], r["duckdb"]
            print(f"\n[merge] {args.events:,} change events over {args.keys:,} keys -> {o['rows']:,} rows")
            print(f"  {'':34}{'seconds':>10}{'peak RSS MiB':>14}")
            print(f"  {'ours: run_sync end to end':34}{o['seconds']:>10.2f}{o['peak_rss_mb']:>14,.0f}"
                  f"   (median of {o['all_seconds']})")
            print(
                f"  {'ours: read+normalize (in memory)':34}{c['read_normalize_seconds']:>10.2f}"
                f"{c['peak_rss_mb']:>14,.0f}"
            )
            print(f"  {'ours: merge kernel (in memory)':34}{c['merge_seconds']:>10.2f}")
            print(
                f"  {'duckdb ' + d['duckdb'] + ' (' + str(d['threads']) + ' threads)':34}"
                f"{d['seconds']:>10.2f}"
                f"{d['peak_rss_mb']:>14,.0f}   (median of {d['all_seconds']})"
            )
            print(f"  ratio ours/duckdb {o['seconds'] / d['seconds']:.2f}x (target <= 1.0x)")
        if "scale" in only:
            factors = [1, 100]
            r = bench_scale(
                work,
                args.scale_keys,
                history_files=10,
                per_file=1000,
                delta=20_000,
                factors=factors,
                memory_mb=args.memory_mb,
            )
            results["scale"] = r
            print(f"\n[scale] fixed delta of 20,000 events, table of {args.scale_keys:,} keys")
            for factor, x in r.items():
                print(
                    f"  history {factor:>3}x ({x['history_files']:>5} synced CDC files): incremental "
                    f"{x['seconds']:.2f} s (median of 5), peak RSS {x['peak_rss_mb']:,.0f} MiB"
                )
            ratio = r[100]["seconds"] / r[1]["seconds"]
            print(f"  ratio 100x/1x {ratio:.2f} (target <= 1.3)")
        if "scale" in only or "table" in only:
            kinds = args.deltas.split(",")
            t = bench_scale_table(work, args.scale_keys, factor=100, delta=20_000, memory_mb=args.memory_mb,
                                  kinds=kinds)  # fmt: skip
            results["scale_table"] = t
            print("\n[scale/table] fixed delta of 20,000 events over a 100x larger table")
            targets = {"skewed": " (target <= 2x)"}
            for kind, sizes in t.items():
                print(f"  {kind} delta:")
                for x in sizes.values():
                    print(
                        f"    table {x['table_rows']:>12,} rows: incremental {x['seconds']:.2f} s (median of 3), "
                        f"buckets rewritten {x['buckets_rewritten']}, merged on read {x['buckets_merged_on_read']}, "
                        f"kept {x['buckets_kept']}, data files replaced {x['data_files_removed']}, delete files "
                        f"added {x['delete_files_added']}, peak RSS {x['peak_rss_mb']:,.0f} MiB"
                    )
                small, large = sizes.values()
                print(f"    ratio 100x/1x {large['seconds'] / small['seconds']:.2f}{targets.get(kind, '')}")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(results, indent=2, default=str))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
