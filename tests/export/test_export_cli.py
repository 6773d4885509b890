"""``python -m finetune_pipeline.export``: a real run, and clear exits for what it cannot do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from finetune_pipeline.export.cli import main

REPO_PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


def run_cli(*args: str, python_options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(REPO_PLUGINS), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, *python_options, "-m", "finetune_pipeline.export", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_the_cli_exports_and_a_rerun_reuses_it(source, tmp_path, capsys):
    source.sql(f"CREATE TABLE {source.schema}.kv (k int PRIMARY KEY, v text); "
               f"INSERT INTO {source.schema}.kv SELECT g, 'v' || g FROM generate_series(1, 25) g")
    args = ["--dsn", source.url, "--table", f"{source.schema}.kv=k", "--export-dir", str(tmp_path),
            "--slot", source.slot, "--wal-bytes-per-day", "1000000", "--json"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["status"] == "exported"
    assert main(args) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{"):])
    assert summary["status"] == "reused" and summary["rows"] == {f"{source.schema}.kv": 25}
    assert summary["slot"] == source.slot and "/" in summary["cdc_start_position"]


def test_the_cli_takes_the_connection_from_pg_variables_alone(source, tmp_path, monkeypatch, capsys):
    """No --dsn, as the README shows: libpq's PG* variables say where, for psycopg and ADBC alike."""
    source.sql(f"CREATE TABLE {source.schema}.kv (k int PRIMARY KEY, v text); "
               f"INSERT INTO {source.schema}.kv SELECT g, 'v' || g FROM generate_series(1, 25) g")
    params = conninfo_to_dict(source.url)
    for key, variable in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER"), ("dbname", "PGDATABASE"),
                          ("password", "PGPASSWORD")):
        if key in params:
            monkeypatch.setenv(variable, str(params[key]))
    args = ["--table", f"{source.schema}.kv=k", "--export-dir", str(tmp_path), "--slot", source.slot,
            "--wal-bytes-per-day", "1000000", "--json"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["rows"] == {f"{source.schema}.kv": 25}


def test_cli_exit_codes_name_the_problem_without_a_traceback(tmp_path):
    unsupported = run_cli("--engine", "oracle", "--table", "public.t", "--export-dir", str(tmp_path))
    assert unsupported.returncode == 2 and "unsupported source engine 'oracle'" in unsupported.stderr
    unreachable = run_cli("--dsn", "postgresql://u:hunter2@127.0.0.1:1/appdb", "--table", "public.t",
                          "--export-dir", str(tmp_path))
    assert unreachable.returncode == 3
    assert "cannot reach the source database at 127.0.0.1:1/appdb" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr and "hunter2" not in unreachable.stderr
    bad_table = run_cli("--table", "no_schema", "--export-dir", str(tmp_path))
    assert bad_table.returncode == 2 and "schema.table" in bad_table.stderr


def test_cli_refusals_exit_1(source, tmp_path, capsys):
    source.sql(f"CREATE TABLE {source.schema}.nokey (v text)")
    code = main(["--dsn", source.url, "--table", f"{source.schema}.nokey", "--export-dir", str(tmp_path),
                 "--slot", source.slot, "--wal-bytes-per-day", "1000"])
    assert code == 1
    assert "has no primary key" in capsys.readouterr().err


def test_the_export_process_runs_both_read_paths_without_numpy(source, tmp_path):
    """``python -m finetune_pipeline.export`` refuses numpy (pyarrow would load it, and the export never uses
    it): a real export through ADBC's binary COPY and through CSV COPY, and numpy never imported."""
    source.sql(f"CREATE TABLE {source.schema}.kv (k int PRIMARY KEY, v text, at timestamptz); "
               f"INSERT INTO {source.schema}.kv SELECT g, 'v' || g, now() FROM generate_series(1, 25) g; "
               f"CREATE TABLE {source.schema}.priced (k int PRIMARY KEY, price numeric(8, 2)); "
               f"INSERT INTO {source.schema}.priced SELECT g, g / 3.0 FROM generate_series(1, 5) g")
    result = run_cli("--dsn", source.url, "--table", f"{source.schema}.kv", "--table", f"{source.schema}.priced",
                     "--export-dir", str(tmp_path), "--slot", source.slot, "--wal-bytes-per-day", "1000000",
                     "--json", python_options=("-X", "importtime"))
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["rows"] == {f"{source.schema}.kv": 25, f"{source.schema}.priced": 5}
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "pyarrow.parquet" in imported and "adbc_driver_postgresql" in imported
    # pyarrow's attempt at numpy is listed too (a few microseconds): what loading it would bring is not.
    assert not {name for name in imported if name.startswith(("numpy.", "pandas"))}


def test_refusing_numpy_is_for_the_export_process_only_and_says_so():
    script = ("import sys\n"
              "from finetune_pipeline.export.without_numpy import refuse_numpy\n"
              "import finetune_pipeline.export.postgres\n"
              "print('numpy' in sys.modules)\n"
              "refuse_numpy()\n"
              "print('numpy' in sys.modules)\n")
    env = {"PYTHONPATH": str(REPO_PLUGINS), "PATH": "/usr/bin:/bin"}
    imported = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    # Importing the export as a library (Airflow's worker, these tests) keeps numpy, and refusing it then
    # is a no-op rather than a half-loaded numpy.
    assert imported.stdout.split() == ["True", "True"], imported.stderr
    script = ("from finetune_pipeline.export.without_numpy import refuse_numpy\n"
              "refuse_numpy()\n"
              "import numpy\n")
    refused = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 1 and "No module named 'numpy' (the export runs without numpy)" in refused.stderr


def test_an_export_process_imports_neither_pandas_nor_pydantic(tmp_path):
    """A fifth of a second and more of every export's start: pyarrow imports pandas on the first Python value
    it converts, and the DMS format module's contracts would bring pydantic."""
    script = (
        "import sys\n"
        "from datetime import UTC, datetime\n"
        "from pathlib import Path\n"
        "import pyarrow as pa\n"
        "import finetune_pipeline.export.cli, finetune_pipeline.export.postgres\n"
        "from finetune_pipeline.export.load_files import LoadFileWriter\n"
        "writer = LoadFileWriter(Path(sys.argv[1]), 'chunk', datetime.now(UTC))\n"
        "writer.write(pa.RecordBatch.from_arrays([pa.nulls(3, pa.int64())], names=['id']))\n"
        "writer.close()\n"
        "print(sorted({'pandas', 'pydantic'} & set(sys.modules)))\n"
    )
    env = {"PYTHONPATH": str(REPO_PLUGINS), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
