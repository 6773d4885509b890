"""``make demo``: the whole pipeline in a real local Airflow against localaws, watched stage by stage.

It starts localaws and Airflow (api-server, scheduler, dag-processor, triggerer; SQLite metadata DB),
seeds a labelled demo dataset in DMS's S3 format, triggers the pipeline once through the REST API,
prints each stage's state as it advances, then leaves the UI up until Ctrl-C, which stops exactly the
processes it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devstack.config import write_demo_config
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


def seed(config, localaws_url: str) -> dict:
    from devstack.seed import seed_demo

    return seed_demo(config, localaws_url, report=print)


def keep_changes_landing(
    config, localaws_url: str, tables: dict, cdc_keys: list[str], watcher: PipelineWatcher, minutes: int
) -> None:
    """Until Ctrl-C: land a batch of SEED change files each period and report what the DAGs do with it."""
    from devstack.seed import last_commit, localaws_s3, write_live_batch

    s3 = localaws_s3(config, localaws_url)
    batch = 0
    next_batch = time.monotonic()
    newest = last_commit(cdc_keys)
    while True:
        if time.monotonic() >= next_batch:
            batch += 1
            keys, tables, newest = write_live_batch(config, s3, tables, newest, seed=100 + batch)
            print(f"SEED DATA: batch {batch}, {len(keys)} change files landed", flush=True)
            next_batch += minutes * 60
        watcher.poll()
        time.sleep(5)  # polling interval of the watcher


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
        print(f"starting localaws on {localaws_url}", flush=True)
        localaws_process = start_localaws(args.localaws_port, args.home / "localaws.log")
    except (PipelineConfigError, StackError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    stack = AirflowStack(home=args.home / "airflow", localaws_url=localaws_url, port=args.airflow_port,
                         config_path=config_path)
    exit_code = 0
    try:
        seeded = seed(config, localaws_url)
        print("preparing Airflow (metadata DB, connections)...", flush=True)
        stack.prepare()
        print(f"starting Airflow on {stack.url} (api-server, scheduler, dag-processor, triggerer)", flush=True)
        stack.start()
        stack.wait_for_dags(PIPELINE_DAGS)
        for dag_id in PIPELINE_DAGS:
            stack.unpause(dag_id)
        run_id = stack.trigger("finetune_bulk_transfer")
        print(f"triggered finetune_bulk_transfer ({run_id}); following every stage:", flush=True)
        watcher = PipelineWatcher(stack, PIPELINE_DAGS, report=lambda line: print(line, flush=True))
        try:
            watcher.wait_for("finetune_training", timeout=args.timeout)
            print("\nthe pipeline run succeeded end to end.")
        except StackError as error:
            print(f"\nthe pipeline did not succeed: {error}", file=sys.stderr)
            exit_code = 1
        print(f"\nAirflow UI: {stack.url}   login: admin / {stack.admin_password()}")
        print(f"logs: {stack.home / 'process-logs'} and {args.home / 'localaws.log'}")
        if not args.exit_when_done:
            print(f"Ctrl-C stops everything this demo started. Meanwhile new SEED change files land every "
                  f"{args.sync_every_minutes} min and the scheduled sync publishes them:", flush=True)
            keep_changes_landing(
                config, localaws_url, seeded["tables"], seeded["cdc_keys"], watcher, args.sync_every_minutes
            )
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        exit_code = 1
    finally:
        stack.stop()
        stop_process(localaws_process)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
