"""The training DAG's own steps on localaws: settings from the form, the retrain policy, preflight, the bundle,
the local backend and the model record, on a version the sync published."""

from __future__ import annotations

import importlib.util
import json
import re
import zipfile
from datetime import UTC, datetime, timedelta
from io import BytesIO
from types import SimpleNamespace

import pytest
from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from landed_changes import last_commit, write_live_batch
from test_sync_operator import landed, make_context, make_operator  # noqa: F401 - the fixture

from finetune_pipeline.pipeline import retrain, training, training_bundle
from finetune_pipeline.pipeline.config import RetrainPolicy
from finetune_pipeline.pipeline.tasks import triggered_dataset_version


@pytest.fixture
def published(pipeline_config, landed):  # noqa: F811 - the fixture imported above
    result = make_operator(pipeline_config, Asset("s3://x/current")).execute(make_context())
    assert result["status"] == "published"
    return result["version"]


def settings(config, version, **form):
    return training.run_settings(config, {"backend": "local", **form}, version)


def test_the_local_backend_trains_the_version_from_the_bundle_and_records_the_model(
    pipeline_config, published, boto_client, caplog
):
    run = settings(pipeline_config, published, hyperparameters={"epochs": 2})
    assert training.retrain_gate(pipeline_config, published, force=False)["reason"] == "no model has been trained yet"
    bundle = training.upload_training_bundle(pipeline_config)
    assert training.upload_training_bundle(pipeline_config) == bundle  # same code, same key: uploaded once
    caplog.set_level("INFO")
    assert training.run_local(pipeline_config, bundle, run) == {
        "version": published, "model_uri": training.model_uri(pipeline_config, published)}
    # Its progress reached the task log as it ran.
    assert any("train.py: epoch 2/2" in record.getMessage() for record in caplog.records), caplog.text[-3000:]
    record = training.record_model(pipeline_config, published)
    assert record["version"] == published and record["uri"].endswith(f"/models/{published}")
    assert set(record["metrics"]["baselines"]) == {"majority", "zero_shot"}
    keys = {item["Key"] for item in boto_client("s3").list_objects_v2(
        Bucket=pipeline_config.storage.bucket, Prefix=f"models/{published}/")["Contents"]}
    assert {f"models/{published}/{name}" for name in
            ("_SUCCESS", "model.safetensors", "tokenizer.json", "config.json", "metrics.json")} == keys
    # The next run on the same version is skipped, and says why.
    for force in (False, True):  # a model per version: force overrides the policy, never overwrites a model
        with pytest.raises(AirflowSkipException, match=f"not training version {published}: it has a model already "
                                                       r"at s3://.*/models/v000001 \(delete that folder"):
            training.retrain_gate(pipeline_config, published, force=force)


def test_the_bundle_holds_the_entrypoint_the_trainer_the_package_and_exact_pins(pipeline_config):
    data = training_bundle.build_bundle(pipeline_config.training.entrypoint.parent)
    assert training_bundle.build_bundle(pipeline_config.training.entrypoint.parent) == data  # reproducible
    names = zipfile.ZipFile(BytesIO(data)).namelist()
    assert {"train.py", "reference_trainer.py", "requirements.txt",
            "finetune_pipeline/datasets/reader.py"} <= set(names)
    assert not any("__pycache__" in name for name in names)
    pins = zipfile.ZipFile(BytesIO(data)).read("requirements.txt").decode().split()
    assert "pyiceberg==0.12.0" in pins and all("==" in pin for pin in pins)
    # The modules a node checks before installing are those the pins install (PyYAML's is yaml).
    assert len(training_bundle.node_modules()) == len(pins) and "yaml" in training_bundle.node_modules()
    assert all(importlib.util.find_spec(module) for module in training_bundle.node_modules())


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"backend": "ec2"}, r"backend 'ec2' is not configured; this deployment has \['hyperpod', 'local'\]"),
        ({"instance_count": 0}, "instance_count must be a whole number of at least 1, got 0"),
        ({"instance_count": 2}, "the local backend runs one process"),
        ({"hyperparameters": "{epochs: 3"}, "hyperparameters are not JSON"),
        ({"hyperparameters": [3]}, "must be a JSON object, got list"),
        ({"max_runtime_hours": 500}, r"at most training.runtime_limit_hours \(72\), got 500"),
        ({"max_runtime_hours": 0}, "must be above 0"),
        ({"epochs": -3}, r"unknown settings \['epochs'\] in the run's conf"),
    ],
)
def test_a_form_that_can_never_train_fails_before_anything_launches(pipeline_config, form, message):
    with pytest.raises(AirflowFailException, match=message):
        settings(pipeline_config, "v000001", **form)


def test_hyperparameters_the_trainer_refuses_fail_in_preflight(pipeline_config):
    with pytest.raises(AirflowFailException, match=r"refuses these hyperparameters: .*\['epochs'\]"):
        training.check_hyperparameters(pipeline_config, {"epochs": -3})
    checked = training.check_hyperparameters(pipeline_config, {"epochs": 3})
    assert checked["epochs"] == 3 and "learning_rate" in checked  # the trainer's defaults, made explicit


def test_a_version_that_does_not_exist_is_refused(pipeline_config, published):
    with pytest.raises(AirflowFailException, match="v000099"):
        triggered_dataset_version(pipeline_config, {}, "v000099")
    assert triggered_dataset_version(pipeline_config, {}, published) == published


def test_a_bucket_outside_the_training_region_fails_preflight(pipeline_config, boto_client, aws_conn):
    boto_client("s3", "eu-west-1").create_bucket(Bucket=pipeline_config.storage.bucket,
                                                 CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    with pytest.raises(AirflowFailException, match="is in eu-west-1, but training runs in us-east-1"):
        training.check_bucket_region(pipeline_config)


def test_a_missing_role_and_an_unknown_instance_type_fail_preflight(pipeline_config, aws_conn):
    with pytest.raises(AirflowFailException, match="role arn:aws:iam::123456789012:role/nope does not exist"):
        training.check_role(pipeline_config, "arn:aws:iam::123456789012:role/nope")
    with pytest.raises(AirflowFailException, match="'ml.g99.huge' is not a HyperPod instance type"):
        training.check_hyperpod_instance_type(pipeline_config, "ml.g99.huge")
    training.check_hyperpod_instance_type(pipeline_config, "ml.g5.2xlarge")


def _version(name: str, tables: dict[str, tuple[int, int, int]]):
    """A stand-in DatasetVersion: per table (rows, CDC events applied, full-load rows)."""
    return SimpleNamespace(version=name, tables={
        table: SimpleNamespace(rows=rows, changes_applied=changes, snapshot_rows=loaded)
        for table, (rows, changes, loaded) in tables.items()})


NOW = datetime(2026, 12, 1, tzinfo=UTC)
POLICY = RetrainPolicy(min_changed_fraction=0.05, max_hours_between=24)


@pytest.mark.parametrize(
    ("current", "hours_ago", "train", "reason"),
    [
        ({"t": (1000, 149, 1000)}, 1, True, r"50 rows changed since v000001.*\(5.0%, at least 5.0%\)"),
        ({"t": (1000, 119, 1000)}, 1, False, r"only 20 rows changed .*\(2.0%, under 5.0%\), and 1.0 h of 24 h"),
        ({"t": (1000, 119, 1000)}, 30, True, "20 rows changed .* and 30.0 h have passed"),
        ({"t": (1000, 99, 1000)}, 30, False, "only 0 rows changed"),  # time alone is no reason
        ({"t": (900, 0, 900)}, 1, True, "900 rows changed"),  # rebuilt from a new full load: all rows
        ({"t": (1000, 99, 1000), "u": (60, 0, 60)}, 1, True, "60 rows changed"),  # a new table
    ],
)
def test_the_retrain_policy_trains_on_enough_change_or_enough_time(current, hours_ago, train, reason):
    last = _version("v000001", {"t": (1000, 99, 1000)})
    decision = retrain.decide(_version("v000005", current), last, NOW - timedelta(hours=hours_ago), NOW, POLICY)
    assert decision.train is train
    assert re.search(reason, decision.reason), decision.reason


def test_no_model_yet_always_trains_and_the_same_version_never_twice():
    version = _version("v000003", {"t": (10, 0, 10)})
    assert retrain.decide(version, None, None, NOW, POLICY).train
    assert not retrain.decide(version, version, NOW, NOW, POLICY).train


def test_the_newest_whole_model_is_the_last_trained_one(pipeline_config, boto_client, aws_conn):
    s3 = boto_client("s3")
    s3.create_bucket(Bucket=pipeline_config.storage.bucket)
    for key in ("models/v000002/_SUCCESS", "models/v000010/model.safetensors", "models/v000003/_SUCCESS"):
        s3.put_object(Bucket=pipeline_config.storage.bucket, Key=key, Body=json.dumps({}).encode())
    # v000010 has no marker (a job that died mid-upload): it is not a model.
    assert training.last_trained(pipeline_config)[0] == "v000003"


def test_an_ec2_launch_that_would_fail_is_refused_in_preflight(tmp_path, localaws, aws_conn):
    from devstack.config import demo_config

    profile = "arn:aws:iam::123456789012:instance-profile/finetune-missing"
    config = demo_config(home=tmp_path, localaws_url=localaws.endpoint_url, overrides={"training": {
        "backend": "ec2", "ec2": {"instance_type": "m5.xlarge", "instance_profile_arn": profile}}})
    run = training.run_settings(config, {"instance_type": "g99.huge", "instance_count": 2}, "v000001")
    with pytest.raises(AirflowFailException, match=r"the EC2 launch would fail: instance type 'g99.huge' does "
                                                   r"not exist.*finetune-missing"):
        training.check_ec2(config, run)


def test_the_retrain_policy_reads_the_changes_the_sync_recorded(pipeline_config, landed, boto_client):  # noqa: F811
    """The policy's reader against the sync's writer: the change counts in real tagged snapshots."""
    operator = make_operator(pipeline_config, Asset("s3://x/current"))
    first = operator.execute(make_context())
    boto_client("s3").put_object(Bucket=pipeline_config.storage.bucket, Key=f"models/{first['version']}/_SUCCESS",
                                 Body=b"{}")  # a model of the first version
    keys, _, _ = write_live_batch(pipeline_config, landed.s3, landed.tables, last_commit(landed.cdc_keys), seed=11)
    second = operator.execute(make_context())
    assert second["status"] == "published"
    events = sum(sum(1 for _ in pq_rows(landed.s3, pipeline_config.storage.bucket, key)) for key in keys)
    decision = training.retrain_gate(pipeline_config, second["version"], force=False)
    assert decision["train"] and f"{events} rows changed since {first['version']}" in decision["reason"]
    strict = pipeline_config.model_copy(update={"training": pipeline_config.training.model_copy(
        update={"retrain": RetrainPolicy(min_changed_fraction=0.9, max_hours_between=None)})})
    with pytest.raises(AirflowSkipException, match=f"only {events} rows changed since {first['version']}"):
        training.retrain_gate(strict, second["version"], force=False)


def pq_rows(s3, bucket: str, key: str) -> list:
    import pyarrow.parquet as pq

    return pq.read_table(BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())).to_pylist()
