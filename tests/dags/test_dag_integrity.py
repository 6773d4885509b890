"""The DAG folder parses cleanly, cheaply and safely, and every DAG follows the project's conventions."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
EXPECTED_DAGS = {"finetune_bulk_transfer", "finetune_cdc_replication", "finetune_incremental_sync",
                 "finetune_training"}


class _NoNetworkOrDb(AssertionError):
    pass


@pytest.fixture(scope="module")
def dagbag():
    """Parse the DAG folder with sockets and database connections refused, as a parse must not need them."""

    def refuse(*args, **kwargs):
        raise _NoNetworkOrDb(f"a DAG file opened a connection at import time: {args[:2]}")

    patch = pytest.MonkeyPatch()
    patch.setattr(socket.socket, "connect", refuse)
    patch.setattr(socket, "create_connection", refuse)
    patch.setattr("sqlalchemy.engine.Engine.connect", refuse)
    try:
        bag = DagBag(dag_folder=str(DAGS_FOLDER))
    finally:
        patch.undo()
    return bag


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_all_pipeline_dags_present(dagbag):
    assert set(dagbag.dag_ids) == EXPECTED_DAGS


def test_dag_files_hold_only_dags():
    for path in DAGS_FOLDER.rglob("*.py"):
        assert "DAG(" in path.read_text(), f"{path.name} is not a DAG file; move helpers to plugins/"


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAGS))
def test_dag_has_owner_tags_and_docs(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert dag.tags, f"{dag_id} has no tags"
    assert dag.doc_md and len(dag.doc_md) > 200, f"{dag_id} has no real doc_md"
    for task in dag.tasks:
        assert task.owner not in (None, "", "airflow"), f"{dag_id}.{task.task_id} has no owner"


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAGS))
def test_tasks_retry_with_exponential_backoff(dagbag, dag_id):
    """Every task may call AWS (directly or through a hook); all are idempotent and retry with backoff."""
    for task in dagbag.dags[dag_id].tasks:
        assert task.retries >= 2, f"{dag_id}.{task.task_id} retries={task.retries}"
        assert task.retry_exponential_backoff, f"{dag_id}.{task.task_id} has no exponential backoff"
        assert task.max_retry_delay is not None, f"{dag_id}.{task.task_id} has no max_retry_delay"


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAGS))
def test_every_task_has_an_execution_timeout_beyond_its_own_wait(dagbag, dag_id):
    """One run at a time: a task without a bound could hold every later run; a wait must end on its own terms."""
    for task in dagbag.dags[dag_id].tasks:
        assert task.execution_timeout is not None, f"{dag_id}.{task.task_id} has no execution_timeout"
        wait = getattr(task, "timeout", None)
        if wait is not None and getattr(task, "mode", "poke") != "reschedule":
            assert task.execution_timeout.total_seconds() > float(wait), (
                f"{dag_id}.{task.task_id}: execution_timeout {task.execution_timeout} would cut its {wait} s wait")


def scheduling_uris(dag) -> set[str]:
    return {asset.uri for asset in dag.timetable.asset_condition.objects}


def test_dags_are_linked_by_assets(dagbag):
    bulk = dagbag.dags["finetune_bulk_transfer"]
    outlets = {outlet.uri for task in bulk.tasks for outlet in task.outlets}
    replication = dagbag.dags["finetune_cdc_replication"]
    assert scheduling_uris(replication) and scheduling_uris(replication) <= outlets
    sync_outlets = {outlet.uri for task in dagbag.dags["finetune_incremental_sync"].tasks
                    for outlet in task.outlets}
    training = dagbag.dags["finetune_training"]
    assert scheduling_uris(training) == sync_outlets


def test_dms_resources_and_the_sync_use_the_bucket_region(dagbag):
    """DMS's S3 target must be in the bucket's region, and the sync looks the CDC task up there too."""
    from finetune_pipeline.pipeline.config import load_config

    region = load_config().storage.region
    aws_tasks = [task for task in dagbag.dags["finetune_cdc_replication"].tasks if hasattr(task, "region_name")]
    aws_tasks.append(dagbag.dags["finetune_incremental_sync"].get_task("sync_dataset"))
    assert len(aws_tasks) == 6
    assert {task.task_id: task.region_name for task in aws_tasks} == {task.task_id: region for task in aws_tasks}


@pytest.mark.parametrize("backend", ["hyperpod", "ec2", "local"])
def test_training_branches_to_the_chosen_backend_after_the_gate_and_preflight(tmp_path, monkeypatch, backend):
    from devstack.config import write_demo_config
    from finetune_pipeline.pipeline.training_dag import first_task_id

    overrides = {"backend": backend}
    if backend == "ec2":
        overrides["ec2"] = {"instance_type": "g5.2xlarge",
                            "instance_profile_arn": "arn:aws:iam::123456789012:instance-profile/finetune-training"}
    path = write_demo_config(tmp_path / "pipeline.yaml", home=tmp_path, localaws_url="http://127.0.0.1:4566",
                             overrides={"training": overrides})
    monkeypatch.setenv("FINETUNE_PIPELINE_CONFIG", str(path))
    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert bag.import_errors == {}
    dag = bag.dags["finetune_training"]
    assert dag.params["backend"] == backend
    first = dag.get_task(first_task_id(backend))
    assert "choose_backend" in first.upstream_task_ids
    assert dag.get_task("choose_backend").upstream_task_ids == {"preflight", "upload_training_bundle"}
    assert {"retrain_gate", "run_settings"} == dag.get_task("preflight").upstream_task_ids
    record = dag.get_task("record_model")
    assert record.trigger_rule == "none_failed_min_one_success" and record.outlets


@pytest.mark.parametrize(
    "conf",
    [
        {"dataset_version": "does-not-exist"},
        {"instance_count": 0},
        {"max_runtime_hours": 1000},
        {"max_runtime_hours": 0},
        {"hyperparameters": "not json"},
        {"backend": "nope"},
    ],
)
def test_the_training_form_refuses_what_can_never_train(dagbag, conf):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    from finetune_pipeline.pipeline.training import FORM_FIELDS

    params = dagbag.dags["finetune_training"].params
    assert tuple(params) == FORM_FIELDS
    merged = ParamsDict({key: params.get_param(key) for key in params})
    with pytest.raises(ParamValidationError):  # the form's own schema: the run is never created
        merged.update(conf)
        merged.validate()
