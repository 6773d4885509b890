"""Command line: ``python -m finetune_pipeline.datasets merge|read|versions|validate|report|quarantine``.

Datasets are s3:// URIs or local folders; their tables live in an Iceberg catalog (``--catalog-*``). For a
local dataset folder the catalog defaults to a SQLite file and a warehouse inside it, so a folder is a whole
dataset; for s3:// give the catalog (``--catalog-uri`` for a SQL one, or ``--catalog-kind glue``).

Exit codes: 0 success (published, up to date, checks passed), 1 checks failed / not published / no such
version, 2 bad usage or configuration, or a catalog that cannot be reached (the message says what).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path

from finetune_pipeline.datasets import catalog as catalogs
from finetune_pipeline.datasets import quarantine, sync_defaults
from finetune_pipeline.datasets.contracts import ContractError, load_contract
from finetune_pipeline.datasets.dms_format import CsvSettings, DmsFileError, classify, read_events
from finetune_pipeline.datasets.report import render_html
from finetune_pipeline.datasets.store import LocalStore, ObjectStore, S3Store, StoreError, join_key, store_from_uri


class UsageError(Exception):
    """Bad arguments or configuration: exit code 2."""


def _iso(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from None


def _pair_store(landing: str, dataset: str, endpoint: str | None) -> tuple[ObjectStore, str, str]:
    """One store for both locations: the same bucket, or a common local folder."""
    if landing.startswith("s3://") != dataset.startswith("s3://"):
        raise UsageError("--landing and --dataset must both be s3:// URIs or both local paths")
    if landing.startswith("s3://"):
        store, landing_prefix = store_from_uri(landing, endpoint_url=endpoint)
        other, dataset_prefix = store_from_uri(dataset, endpoint_url=endpoint)
        if other.bucket != store.bucket:  # type: ignore[attr-defined]
            raise UsageError("--landing and --dataset must be in the same bucket (quarantine moves files)")
        return store, landing_prefix, dataset_prefix
    a, b = Path(landing).resolve(), Path(dataset).resolve()
    root = Path(os.path.commonpath([a, b]))
    if root in (a, b):
        raise UsageError("--landing and --dataset must be separate folders, neither inside the other")
    return LocalStore(root), a.relative_to(root).as_posix(), b.relative_to(root).as_posix()


def _list_targets(
    target: str, endpoint: str | None, suffixes: tuple[str, ...]
) -> tuple[ObjectStore, list[str]]:
    if target.startswith("s3://"):
        store, prefix = store_from_uri(target, endpoint_url=endpoint)
        keys = [i.key for i in store.list_after(prefix) if i.key.endswith(suffixes)]
        return store, keys
    path = Path(target).resolve()
    if path.is_file():
        return LocalStore(path.parent), [path.name]
    if not path.is_dir():
        raise UsageError(f"{target}: no such file or folder")
    store = LocalStore(path)
    return store, [i.key for i in store.list_after("") if i.key.endswith(suffixes)]


def _catalog_spec(args: argparse.Namespace, dataset: str | None, *, create: bool = False) -> catalogs.CatalogSpec:
    """The catalog options, with a local dataset folder's defaults: ``catalog.db`` and ``warehouse/`` in it."""
    uri = warehouse = None
    if dataset and dataset.startswith("s3://"):
        warehouse = dataset.rstrip("/") + "/warehouse"
        if (args.catalog_kind or sync_defaults.CATALOG_KIND) == "sql" and not args.catalog_uri:
            raise UsageError(
                "a SQL catalog for an s3:// dataset needs --catalog-uri (e.g. sqlite:////var/lib/finetune/"
                "catalog.db, or postgresql+psycopg://host/db); or use --catalog-kind glue"
            )
    elif dataset:
        folder = Path(dataset).resolve()
        uri, warehouse = f"sqlite:///{folder / 'catalog.db'}", (folder / "warehouse").as_uri()
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        elif not args.catalog_uri and not (folder / "catalog.db").is_file():
            raise UsageError(f"{dataset}: nothing published yet (no catalog.db in the dataset folder)")
    try:
        return catalogs.spec_from_arguments(args, default_uri=uri, default_warehouse=warehouse)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _catalog_named(args: argparse.Namespace) -> bool:
    return bool(args.catalog_kind or args.catalog_uri or args.warehouse)


def _access(args: argparse.Namespace) -> catalogs.AwsAccess:
    """AWS as the default boto3 chain resolves it, with the endpoint override (localaws)."""
    import boto3

    return catalogs.AwsAccess.from_session(boto3.Session(), endpoint_url=args.endpoint_url)


def _open_catalog(args: argparse.Namespace, dataset: str | None, *, create: bool = False):
    spec = _catalog_spec(args, dataset)
    return spec, catalogs.load(spec, _access(args), create_namespace=create)


def _quarantine_prefix(args: argparse.Namespace, store: ObjectStore, dataset_prefix: str) -> str:
    """``--quarantine`` as a key prefix of the landing's store (the sync moves files between them), or the
    dataset's own quarantine folder."""
    if not args.quarantine:
        return join_key(dataset_prefix, quarantine.DATASET_FOLDER)
    if args.quarantine.startswith("s3://"):
        other, prefix = store_from_uri(args.quarantine, endpoint_url=args.endpoint_url)
        if not isinstance(store, S3Store) or other.bucket != store.bucket:
            raise UsageError("--quarantine must be in the bucket of --landing (quarantine moves files)")
        return prefix
    key = store.key_of(str(Path(args.quarantine).resolve())) if isinstance(store, LocalStore) else None
    if not key:
        raise UsageError("--quarantine must be a folder beside --landing and --dataset (quarantine moves files)")
    return key


def cmd_merge(args: argparse.Namespace) -> int:
    from finetune_pipeline.datasets.sync import SyncSpec, run_sync

    store, landing, dataset = _pair_store(args.landing, args.dataset, args.endpoint_url)
    catalog_spec = _catalog_spec(args, args.dataset, create=True)
    spec = SyncSpec(
        landing_prefix=landing,
        dataset_prefix=dataset,
        quarantine_prefix=_quarantine_prefix(args, store, dataset),
        contracts_dir=args.contracts,
        catalog=catalog_spec,
        snapshot_position=args.snapshot_position,
        snapshot_sequence=args.snapshot_sequence,
        retention=args.retention,
        csv_header=args.csv_header,
        rows_per_bucket=args.rows_per_bucket,
        merge_memory_bytes=args.merge_memory_mb * 2**20,
        merge_on_read_min_rows=args.merge_on_read_min_rows,
    )
    result = run_sync(
        store, spec, tables=args.table or None, full_rebuild=args.full_rebuild, now=args.now, access=_access(args)
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print(f"{result.status}: version {result.version} (previous {result.previous_version})")
        for table, rows in result.row_counts.items():
            print(f"  {table}: {rows:,} rows")
        for check in result.failed_checks:
            print(f"  FAILED [{check.severity}] {check.table} {check.name}: {check.detail}")
        for q in result.quarantined:
            print(f"  quarantined {q.source_key} -> {q.quarantine_key} ({q.reason})")
        for table, where in result.tables.items():
            print(f"  {table}: {where['identifier']} snapshot {where['snapshot_id']} (tag {result.version})")
        if result.report_keys:
            print(f"  report: {store.uri(result.report_keys['html'])}")
    return 0 if result.status in ("published", "up_to_date") else 1


def cmd_read(args: argparse.Namespace) -> int:
    """A published version through the reader the training entrypoint uses."""
    from finetune_pipeline.datasets.reader import open_record, open_version

    if args.dataset and args.dataset.startswith("s3://") and not _catalog_named(args):
        # No catalog given: the version's record names the tables' metadata (what training nodes use).
        store, prefix = store_from_uri(args.dataset, endpoint_url=args.endpoint_url)
        version = open_record(store, prefix, args.version, _access(args))
    else:
        spec, catalog = _open_catalog(args, args.dataset)
        version = open_version(catalog, spec.namespace, args.version)
    if args.table and args.table not in version.tables:
        raise UsageError(f"version {version.version} has no table {args.table}; it has {sorted(version.tables)}")
    if args.out:
        if not args.table:
            raise UsageError("--out writes one table: name it with --table")
        table = version.tables[args.table].to_arrow()
        if args.out.endswith(".csv"):
            import pyarrow.csv as pcsv

            pcsv.write_csv(table, args.out)
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, args.out)
        print(f"wrote {table.num_rows:,} rows of {args.table} at {version.version} to {args.out}")
        return 0
    described = version.describe()
    if args.json:
        if args.files:
            for name, t in version.tables.items():
                described["tables"][name]["files"] = t.files()
        print(json.dumps(described, indent=2))
        return 0
    print(f"{version.version}")
    for name, t in sorted(version.tables.items()):
        if args.table and name != args.table:
            continue
        print(f"  {name}: {t.rows:,} rows, {'.'.join(t.identifier)} snapshot {t.snapshot_id}")
        if args.limit:
            for row in t.scan().to_arrow().slice(0, args.limit).to_pylist():
                print(f"    {row}")
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from finetune_pipeline.datasets.reader import published_versions

    spec, catalog = _open_catalog(args, args.dataset)
    versions = published_versions(catalog, spec.namespace)
    print(json.dumps(versions) if args.json else "\n".join(versions) or "(none published)")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from finetune_pipeline.datasets.validate import publishable, validate_parquet

    contract = load_contract(args.contract)
    if args.dms:
        return _validate_dms(args, contract)
    import contextlib

    version = None
    if args.version:
        # A published version's data files, as its snapshot lists them.
        from finetune_pipeline.datasets.reader import open_version

        spec, catalog = _open_catalog(args, args.target)
        version = open_version(catalog, spec.namespace, args.version).tables.get(contract.table)
        if version is None:
            raise UsageError(f"version {args.version} has no table {contract.table}")
        store, keys = None, version.files()
    else:
        if not args.target:
            raise UsageError("name a file, folder or s3:// prefix to validate, or a --version")
        store, keys = _list_targets(args.target, args.endpoint_url, (".parquet",))
    if not keys:
        raise UsageError(f"{args.target}: no .parquet files")

    with contextlib.ExitStack() as stack:
        if version is not None:
            paths = [stack.enter_context(_live_rows(version, k)) for k in keys]
        elif store is None:
            paths = [stack.enter_context(_fetched(k, args.endpoint_url)) for k in keys]
        else:
            paths = [stack.enter_context(store.local_path(k)) for k in keys]
        report = validate_parquet(
            paths,
            contract,
            now=args.now,
            expected_rows=args.expected_rows,
            use_statistics=not args.no_statistics,
        )
    out = {
        "table": report.table,
        "rows": report.rows,
        "files": report.files,
        "passed": report.passed,
        "checks": [r.to_dict() for r in report.results],
    }
    print(json.dumps(out, indent=2, default=str))
    return 0 if publishable(report.results) else 1


@contextlib.contextmanager
def _live_rows(version, location: str):
    """A version's data file as a local Parquet file of its rows with its delete files applied: validating
    the data file as it lies would count rows the version no longer has."""
    import tempfile

    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="ftp-validate-") as folder:
        path = Path(folder) / location.rsplit("/", 1)[-1]
        pq.write_table(version.read_files([location]), path)
        yield path


def _fetched(location: str, endpoint: str | None):
    """A data file named by its location (file:// or s3://) as a local path."""
    if location.startswith("s3://"):
        store, key = store_from_uri(location, endpoint_url=endpoint)
        return store.local_path(key)
    path = Path(location[len("file://") :] if location.startswith("file://") else location)
    store = LocalStore(path.parent)
    return store.local_path(path.name)


def _validate_dms(args: argparse.Namespace, contract) -> int:
    store, keys = _list_targets(args.target, args.endpoint_url, (".parquet", ".csv"))
    csv = CsvSettings(header=args.csv_header)
    results, bad = [], 0
    for key in keys:
        parent = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        f = classify(key, parent)
        if f is None:
            results.append({"key": key, "ok": False, "reason": "not_a_dms_file", "detail": "unexpected name"})
            bad += 1
            continue
        rows = 0
        try:
            with store.local_path(key) as path:
                for batch in read_events(path, f, contract, csv):
                    rows += batch.num_rows
            results.append({"key": key, "ok": True, "rows": rows})
        except DmsFileError as err:
            results.append({"key": key, "ok": False, "reason": err.reason, "detail": err.detail})
            bad += 1
    print(json.dumps({"table": contract.table, "files": results, "bad_files": bad}, indent=2))
    return 0 if bad == 0 else 1


def cmd_report(args: argparse.Namespace) -> int:
    from finetune_pipeline.datasets.reader import open_version
    from finetune_pipeline.datasets.state import report_keys

    store, prefix = store_from_uri(args.dataset, endpoint_url=args.endpoint_url)
    version = args.version
    if version is None:
        spec, catalog = _open_catalog(args, args.dataset)
        version = open_version(catalog, spec.namespace).version
    report = json.loads(store.get_bytes(report_keys(prefix, version)["json"]))
    if args.format == "json":
        text = json.dumps(report, indent=2)
    elif args.format == "html":
        text = render_html(report)
    else:
        lines = [f"{report['version']} {report['status']} (previous {report.get('previous_version')})"]
        for name, t in report["tables"].items():
            lines.append(f"  {name}: {t['rows']:,} rows")
        lines += [
            f"  FAILED [{c['severity']}] {c['table']} {c['name']}: {c['detail']}"
            for c in report["checks"]
            if not c["passed"]
        ]
        text = "\n".join(lines)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    """An operator's view of quarantine/: list the cases; release a file (back to landing, to be read again)
    or discard it (its changes accepted as lost). A quarantine_and_stop file holds publishing until then."""
    store, _, dataset = _pair_store(args.landing, args.dataset, args.endpoint_url)
    prefix = _quarantine_prefix(args, store, dataset)
    if args.action == "list":
        found = quarantine.entries(store, prefix)
        if args.table:
            found = [e for e in found if e.table in args.table]
        if not args.all:
            found = [e for e in found if e.status in ("open", "released")]
        if args.json:
            print(json.dumps([{**e.report, "report_key": e.report_key, "holds": e.holds} for e in found], indent=2))
            return 0
        for e in found:
            r = e.report
            mark = "HOLDS" if e.holds else e.status
            closed = f"; {e.status} {r.get('resolved_at')}: {r.get('note')}" if e.status != "open" else ""
            print(f"{mark:9} {e.quarantine_key}\n"
                  f"          {e.table} ({e.policy}) {r.get('reason')}: {r.get('detail')}\n"
                  f"          from {e.source_key}, quarantined {r.get('quarantined_at')}{closed}")  # fmt: skip
        holding = [e for e in found if e.holds]
        shown = "" if args.all else " open or released"
        print(f"{len(found)}{shown} file(s) in {store.uri(prefix)}; {len(holding)} hold(s) publishing")
        if holding:
            print("Each held file needs one of:\n"
                  "  quarantine release KEY [--fixed FILE]   put it back (fixed) to be read by the next sync\n"
                  "  quarantine discard KEY --reason TEXT    accept that its changes are lost")
        return 0
    entry = quarantine.find(store, prefix, args.key)
    if args.action == "release":
        done = quarantine.release(store, entry, fixed=args.fixed, note=args.note or "")
        print(f"released {done.quarantine_key} -> {store.uri(done.source_key)}; the next sync reads it again")
    else:
        done = quarantine.discard(store, entry, note=args.reason or "")
        print(f"discarded {done.quarantine_key} ({done.table}): its changes are accepted as lost; the file stays "
              "as evidence")
    still = quarantine.holds(store, prefix, [done.table])
    print(f"{len(still)} file(s) still hold publishing" if still else "nothing holds publishing any more")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m finetune_pipeline.datasets", description=__doc__)
    parser.add_argument(
        "--endpoint-url",
        default=os.environ.get("AWS_ENDPOINT_URL"),
        help="S3 endpoint (default: env AWS_ENDPOINT_URL)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    merge = sub.add_parser("merge", help="incremental sync: new DMS files -> new validated dataset version")
    merge.add_argument("--landing", required=True, help="DMS S3 target folder (s3://bucket/prefix or path)")
    merge.add_argument("--dataset", required=True, help="dataset folder (same bucket / a sibling folder)")
    merge.add_argument("--contracts", required=True, type=Path, help="folder of <schema>.<table>.yaml")
    merge.add_argument("--quarantine", help="where bad files go (default: <dataset>/quarantine), beside --landing")
    merge.add_argument("--table", action="append", help="only this table (repeatable)")
    merge.add_argument("--snapshot-position", type=_iso, help="full-load snapshot time (ISO 8601, UTC)")
    merge.add_argument("--snapshot-sequence", help="_dms_seq at the snapshot time (35 digits)")
    merge.add_argument("--full-rebuild", action="store_true", help="rebuild from all landing files")
    merge.add_argument("--retention", type=int, default=sync_defaults.RETENTION_VERSIONS,
                       help=f"published versions to keep (default {sync_defaults.RETENTION_VERSIONS})")
    merge.add_argument(
        "--csv-header", action="store_true", help="CSV files have a header row (AddColumnName)"
    )
    merge.add_argument("--rows-per-bucket", type=int, default=sync_defaults.ROWS_PER_BUCKET,
                       help=f"rows per bucket of a new table (default {sync_defaults.ROWS_PER_BUCKET:,})")
    merge.add_argument("--merge-memory-mb", type=int, default=sync_defaults.MERGE_MEMORY_BYTES // 2**20,
                       help="input of one in-memory merge, in MiB (default %(default)s)")
    merge.add_argument("--merge-on-read-min-rows", type=int, default=sync_defaults.MERGE_ON_READ_MIN_ROWS,
                       help="buckets with fewer rows are always rewritten whole, never merged on read")
    merge.add_argument("--now", type=_iso, help="evaluate freshness as of this time")
    merge.add_argument("--json", action="store_true", help="print the result as JSON")
    catalogs.add_arguments(merge)
    merge.set_defaults(func=cmd_merge)

    read = sub.add_parser("read", help="read a published version (the reader training uses)")
    read.add_argument("--dataset", help="the dataset folder (its catalog), or s3:// prefix (its version records, "
                      "unless a catalog is named)")
    read.add_argument("--version", help="v000123 (default: the newest published)")
    read.add_argument("--table", help="schema.table")
    read.add_argument("--out", help="write the table to this .parquet or .csv file")
    read.add_argument("--limit", type=int, default=0, help="also print this many rows of each table")
    read.add_argument("--files", action="store_true", help="with --json: list each table's data files")
    read.add_argument("--json", action="store_true")
    catalogs.add_arguments(read)
    read.set_defaults(func=cmd_read)

    versions = sub.add_parser("versions", help="list the published versions, oldest first")
    versions.add_argument("--dataset")
    versions.add_argument("--json", action="store_true")
    catalogs.add_arguments(versions)
    versions.set_defaults(func=cmd_versions)

    validate = sub.add_parser("validate", help="check Parquet data (or DMS landing files) against a contract")
    validate.add_argument("target", nargs="?", help="a file, folder or s3://bucket/prefix; with --version, the dataset")
    validate.add_argument("--contract", required=True, type=Path)
    validate.add_argument("--version", help="validate this published version's data files of the contract's table")
    validate.add_argument("--dms", action="store_true", help="target holds DMS landing files: file checks")
    validate.add_argument("--csv-header", action="store_true")
    validate.add_argument("--expected-rows", type=int)
    validate.add_argument("--no-statistics", action="store_true", help="read every value, ignore footers")
    validate.add_argument("--now", type=_iso)
    catalogs.add_arguments(validate)
    validate.set_defaults(func=cmd_validate)

    report = sub.add_parser("report", help="show a published version's report")
    report.add_argument("--dataset", required=True)
    report.add_argument("--version", help="version id (default: the newest published)")
    report.add_argument("--format", choices=("text", "json", "html"), default="text")
    report.add_argument("--out", help="write to this file instead of stdout")
    catalogs.add_arguments(report)
    report.set_defaults(func=cmd_report)

    held = sub.add_parser("quarantine", help="list, release or discard quarantined landing files")
    actions = held.add_subparsers(dest="action", required=True)
    for name, text in (
        ("list", "the open and released cases (HOLDS: a quarantine_and_stop file publishing waits for)"),
        ("release", "put a file back in the landing folder (fixed with --fixed) to be read by the next sync"),
        ("discard", "accept that a file's changes are lost; publishing resumes (the file stays as evidence)"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("--landing", required=True, help="the DMS S3 target folder, as given to merge")
        action.add_argument("--dataset", required=True, help="the dataset folder, as given to merge")
        action.add_argument("--quarantine", help="as given to merge (default: <dataset>/quarantine)")
        if name == "list":
            action.add_argument("--table", action="append", help="only this table (repeatable)")
            action.add_argument("--all", action="store_true", help="closed cases too (applied, discarded)")
            action.add_argument("--json", action="store_true")
        else:
            action.add_argument("key", help="the quarantined file: its key, its landing key or its file name")
        if name == "release":
            action.add_argument("--fixed", type=Path, help="a corrected copy to put back instead of the file")
            action.add_argument("--note", help="what was done, kept in the file's report")
        if name == "discard":
            action.add_argument("--reason", required=True, help="why its changes may be lost, kept in its report")
        action.set_defaults(func=cmd_quarantine)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (UsageError, ContractError, catalogs.CatalogError, StoreError, quarantine.QuarantineError,
            ValueError) as err:  # fmt: skip
        print(f"error: {err}", file=sys.stderr)
        return 2
    except LookupError as err:  # VersionNotFound
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 1
    except Exception as err:  # boto errors etc.: one clear line, not a traceback, and a non-zero exit
        if args.verbose:
            raise
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
