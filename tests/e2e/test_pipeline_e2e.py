"""End to end: a real Airflow (api-server, scheduler, dag-processor, triggerer) runs the whole pipeline
against localaws and a real PostgreSQL source, triggered through the REST API as the UI does: the export of
a consistent snapshot, the offline branch (Snowball), the import verified by checksum, the snapshot published,
a sync that publishes it as a dataset version, and changes committed in the source afterwards reaching a new
version through localaws's DMS."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from pathlib import Path

import boto3
import psycopg
import pytest

from devstack.config import write_demo_config
from devstack.demo import (
    PIPELINE_DAGS,
    PipelineWatcher,
    describe_model,
    prepare_demo_account,
    start_localaws,
    start_source,
    stop_process,
)
from devstack.stack import AirflowStack
from devstack.support_desk import Trickle, load_support_desk
from finetune_pipeline.pipeline.config import load_config
from localaws.control import advance_clock

pytestmark = pytest.mark.e2e

# The one task the offline plan skips: the branch chose Snowball over the online copy.
BRANCH_NOT_TAKEN = {("finetune_bulk_transfer", "copy_online"), ("finetune_training", "local.train")}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def running_stack():
    # Not under pytest's temp root: pytest keeps that 0700, and the embedded source runs as an unprivileged
    # user that must reach its data folder there.
    home = Path(tempfile.mkdtemp(prefix="ftp-e2e-"))
    localaws_port = free_port()
    source = start_source(home)
    loaded = load_support_desk(source.conninfo, customers=3000, tickets=15_000)
    localaws_process = start_localaws(localaws_port, home / "localaws.log")
    localaws_url = f"http://127.0.0.1:{localaws_port}"
    config_path = write_demo_config(home / "pipeline.yaml", home=home, localaws_url=localaws_url)
    stack = AirflowStack(home=home / "airflow", localaws_url=localaws_url, port=free_port(), config_path=config_path)
    try:
        prepare_demo_account(load_config(config_path), localaws_url)
        stack.prepare(source_conn=source.connection)
        stack.start()
        stack.wait_for_dags(PIPELINE_DAGS)
        stack.loaded, stack.source = loaded, source
        yield stack
    finally:
        stack.stop()
        stop_process(localaws_process)
        source.stop()
        shutil.rmtree(home, ignore_errors=True)


def assert_all_tasks(stack, dag_id: str, run: dict, log: list[str]) -> dict[str, str]:
    assert run["state"] == "success", f"{dag_id} ended {run['state']}"
    states = {ti["task_id"]: ti["state"] for ti in stack.task_instances(dag_id, run["dag_run_id"])}
    for task_id, state in states.items():
        expected = "skipped" if (dag_id, task_id) in BRANCH_NOT_TAKEN else "success"
        assert state == expected, f"{dag_id}.{task_id} ended {state}\n" + "\n".join(log[-40:])
    return states


def test_pipeline_runs_green_end_to_end(running_stack):
    stack = running_stack
    for dag_id in PIPELINE_DAGS:
        stack.unpause(dag_id)
    stack.trigger("finetune_bulk_transfer")
    log: list[str] = []
    runs = PipelineWatcher(stack, PIPELINE_DAGS, report=log.append).wait_for("finetune_training", timeout=600)

    assert set(runs) == set(PIPELINE_DAGS), f"stages that never ran: {set(PIPELINE_DAGS) - set(runs)}"
    for dag_id in ("finetune_bulk_transfer", "finetune_cdc_replication", "finetune_training"):
        assert_all_tasks(stack, dag_id, runs[dag_id], log)

    # The sync published a version (a later run with nothing new is skipped, and emits no Asset event),
    # and training ran on exactly that version.
    published = []
    for run in stack.dag_runs("finetune_incremental_sync"):
        (sync_task,) = stack.task_instances("finetune_incremental_sync", run["dag_run_id"])
        assert sync_task["state"] in ("success", "skipped"), f"sync {run['dag_run_id']}: {sync_task['state']}"
        if sync_task["state"] == "success":
            published.append(stack.xcom("finetune_incremental_sync", run["dag_run_id"], "sync_dataset"))
    assert published, "no sync run published a dataset version"
    assert all(result["status"] == "published" for result in published)
    trained = stack.xcom("finetune_training", runs["finetune_training"]["dag_run_id"], "dataset_version")
    assert trained in {result["version"] for result in published}
    # A real model of that version, beating both baselines on the demo's held-out tickets.
    model = stack.xcom("finetune_training", runs["finetune_training"]["dag_run_id"], "record_model")
    log.append(describe_model(model))
    print(log[-1])
    metrics = model["metrics"]
    assert model["version"] == trained and model["uri"].endswith(f"/models/{trained}")
    assert metrics["accuracy"] > metrics["baselines"]["majority"] and metrics["accuracy"] > \
        metrics["baselines"]["zero_shot"]
    # The first version holds exactly the rows the source had at the snapshot.
    exported = stack.xcom("finetune_bulk_transfer", runs["finetune_bulk_transfer"]["dag_run_id"], "export_snapshot")
    assert exported["status"] == "exported" and "/" in exported["cdc_start_position"]
    loaded = stack.loaded
    assert published[0]["row_counts"]["public.tickets"] == loaded.tickets
    assert published[0]["row_counts"]["public.ticket_messages"] == loaded.messages
    assert published[0]["row_counts"]["public.customers"] == loaded.customers

    # The stages were linked by Assets, not by the test: only the first DAG was triggered by hand.
    for dag_id in ("finetune_cdc_replication", "finetune_training"):
        assert runs[dag_id]["run_type"] == "asset_triggered", f"{dag_id} was {runs[dag_id]['run_type']}"

    # Changes committed in the source after the snapshot: DMS writes them from the export's slot, and the next
    # sync publishes a version that holds exactly the source's rows.
    trickle = Trickle(stack.source.conninfo, seed=3)
    for _ in range(6):
        trickle.step()
    trickle.close()
    changed = sum(trickle.committed[key] for key in ("inserts", "updates", "deletes"))
    config = load_config(stack.config_path)
    dms = boto3.client("dms", endpoint_url=stack.localaws_url, region_name=config.storage.region,
                       aws_access_key_id="localaws", aws_secret_access_key="localaws")  # fmt: skip
    (task,) = dms.describe_replication_tasks(
        Filters=[{"Name": "replication-task-id", "Values": [config.dms.task_id]}]
    )["ReplicationTasks"]

    def captured() -> int:
        stats = dms.describe_table_statistics(ReplicationTaskArn=task["ReplicationTaskArn"])["TableStatistics"]
        return sum(t["Inserts"] + t["Updates"] + t["Deletes"] for t in stats)

    deadline = time.monotonic() + 120
    while captured() < changed:  # each CdcMaxBatchInterval on localaws's clock writes the files due
        assert time.monotonic() < deadline, f"DMS captured {captured()} of {changed} changes"
        advance_clock(stack.localaws_url, 61)
        time.sleep(1)
    with psycopg.connect(stack.source.conninfo) as conn:
        source_rows = {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                       for table in ("public.customers", "public.tickets", "public.ticket_messages")}  # fmt: skip
    run_id = stack.trigger("finetune_incremental_sync")
    deadline = time.monotonic() + 300
    while (state := next(r["state"] for r in stack.dag_runs("finetune_incremental_sync")
                         if r["dag_run_id"] == run_id)) not in ("success", "failed"):  # fmt: skip
        assert time.monotonic() < deadline, "the sync after the changes did not finish"
        time.sleep(2)
    assert state == "success"
    result = stack.xcom("finetune_incremental_sync", run_id, "sync_dataset")
    assert result["status"] == "published" and result["version"] not in {r["version"] for r in published}
    assert result["row_counts"] == source_rows
