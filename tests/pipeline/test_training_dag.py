"""The training DAG end to end with ``dag.test()`` on localaws: a published version in, a model and its Asset
event out, on each backend. EC2's instances run the shipped user data as local processes; HyperPod's nodes
run the shipped lifecycle script, whose job agent takes the job spec from S3 and runs it through Slurm (the
shims localaws gives its nodes). The full-stack end-to-end test (tests/e2e) runs the HyperPod backend too."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import Asset
from iam_policy import missing_from_policy, recorded_calls
from test_sync_operator import landed, make_context, make_operator  # noqa: F401 - the fixture

from devstack.config import write_demo_config
from finetune_pipeline.pipeline.config import load_config
from localaws import control

INSTANCE_PROFILE = "finetune-training"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def airflow_db():
    """A fresh metadata DB for each run (a second DAG of the same id, parsed from another config, would
    meet the first one's serialized version)."""
    from airflow.utils.db import resetdb

    resetdb(skip_init=False)


@pytest.fixture(params=["local", "ec2", "hyperpod"])
def backend(request):
    return request.param


@pytest.fixture
def config_path(tmp_path, localaws, backend, monkeypatch):
    training = {"backend": backend, "hyperparameters": {"epochs": 2}}
    if backend == "hyperpod":
        training["hyperpod"] = {"delete_created_cluster": True}
    if backend == "ec2":
        training["ec2"] = {"instance_type": "m5.xlarge", "poll_seconds": 0.5,
                           "instance_profile_arn": f"arn:aws:iam::123456789012:instance-profile/{INSTANCE_PROFILE}"}
    path = write_demo_config(tmp_path / "pipeline.yaml", home=tmp_path, localaws_url=localaws.endpoint_url,
                             overrides={"storage": {"bucket": f"ft-train-{uuid.uuid4().hex[:12]}"},
                                        "training": training})
    monkeypatch.setenv("FINETUNE_PIPELINE_CONFIG", str(path))
    return path


@pytest.fixture
def pipeline_config(config_path):
    return load_config(config_path)


@contextlib.contextmanager
def clock_running(url: str):
    stop = threading.Event()

    def advance() -> None:
        while not stop.wait(0.2):
            control.advance_clock(url, 30)

    thread = threading.Thread(target=advance, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_a_published_version_is_trained_and_its_model_announced(
    airflow_db, pipeline_config, landed, boto_client, backend, localaws  # noqa: F811 - the fixture imported above
):
    version = make_operator(pipeline_config, Asset("s3://x/current")).execute(make_context())["version"]
    iam = boto_client("iam")
    if backend == "hyperpod":
        role = pipeline_config.training.hyperpod.execution_role_arn.rsplit("/", 1)[-1]
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps({"Statement": []}))
    if backend == "ec2":
        iam.create_role(RoleName=INSTANCE_PROFILE, AssumeRolePolicyDocument=json.dumps({"Statement": []}))
        iam.create_instance_profile(InstanceProfileName=INSTANCE_PROFILE)
        iam.add_role_to_instance_profile(InstanceProfileName=INSTANCE_PROFILE, RoleName=INSTANCE_PROFILE)
    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag("finetune_training")
    with clock_running(localaws.endpoint_url), recorded_calls() as calls:  # the cluster's creation: minutes/s
        run = dag.test(run_conf={"backend": backend})

    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    from finetune_pipeline.pipeline.training_dag import first_task_id

    assert states["record_model"] == "success" and states[first_task_id(backend)] == "success"
    assert not missing_from_policy(calls), f"the runner policy lacks {missing_from_policy(calls)}"
    s3 = boto_client("s3")
    marker = json.loads(s3.get_object(Bucket=pipeline_config.storage.bucket,
                                      Key=f"models/{version}/_SUCCESS")["Body"].read())
    assert marker["version"] == version and marker["metrics"]["baselines"]
    # The model Asset event carries the version and the metrics.
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from finetune_pipeline.pipeline.assets import model_asset

    with create_session() as session:
        extras = session.scalars(select(AssetEvent.extra).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                                 .where(AssetModel.uri == model_asset(pipeline_config).uri)).all()
    assert [extra["version"] for extra in extras] == [version]
    assert extras[0]["metrics"] == marker["metrics"] and extras[0]["uri"].endswith(f"/models/{version}")
    print(f"\n{backend}: {marker['metrics']['rows']} rows, accuracy {marker['metrics']['accuracy']:.3f}, "
          f"{marker['metrics']['seconds']} s of training")
    if backend == "ec2":
        # The instance ran the shipped user data to its end and is terminated. Two correct endings race: the
        # user data's own shutdown right after train.py exits, and the teardown task, which starts as soon as
        # the model's marker is there and terminates whatever is still running.
        instances = [instance for reservation in boto_client("ec2").describe_instances()["Reservations"]
                     for instance in reservation["Instances"]
                     if {"Key": "finetune-pipeline:dataset-version", "Value": version} in instance.get("Tags", [])]
        assert len(instances) == 1 and instances[0]["State"]["Name"] == "terminated"
        ended_by = instances[0]["StateReason"]["Code"]
        assert ended_by in ("Client.InstanceInitiatedShutdown", "Client.UserInitiatedShutdown"), ended_by
        console = boto_client("ec2").get_console_output(InstanceId=instances[0]["InstanceId"])["Output"]
        assert f"training: train.py --dataset-uri s3://{pipeline_config.storage.bucket}/" in console
        assert states["ec2.terminate_training_instances"] == "success"
    if backend == "hyperpod":
        # The run created the cluster, so its teardown deleted it (a cluster bills while it is up).
        sagemaker = boto_client("sagemaker")
        cluster = sagemaker.describe_cluster(ClusterName=pipeline_config.training.hyperpod.cluster_name)
        assert states["hyperpod.delete_created_cluster"] == "success" and cluster["ClusterStatus"] == "Deleting"
        tags = {t["Key"]: t["Value"] for t in sagemaker.list_tags(ResourceArn=cluster["ClusterArn"])["Tags"]}
        assert tags["finetune-pipeline:created-by-run"] == f"finetune_training/{run.run_id}"
