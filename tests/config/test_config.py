"""The pipeline config is validated once, with one clear message naming each bad field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from devstack.config import TEMPLATE_PATH
from finetune_pipeline.pipeline.config import PipelineConfigError, config_path, load_config, parse_config

GOOD = yaml.safe_load(TEMPLATE_PATH.read_text())


def with_change(path: str, value):
    data = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return data


def test_shipped_config_is_a_valid_production_template():
    config = load_config(TEMPLATE_PATH)
    assert [t.qualified_name for t in config.source.tables] == ["public.customers", "public.tickets",
                                                                "public.ticket_messages"]
    assert config.source.slot_name == "finetune_dms" and not config.source.export_from_airflow
    assert (config.transfer.link, config.transfer.route) == ("internet", "auto")
    # Production intervals: a Snowball job takes days, so the template must not poll every few seconds.
    assert (config.snowball.poll_seconds, config.dms.poll_seconds, config.training.hyperpod.poll_seconds) == (
        300, 30, 60)
    assert "localaws" not in TEMPLATE_PATH.read_text()


def test_relative_paths_resolve_against_the_config_files_folder(tmp_path: Path):
    include = TEMPLATE_PATH.parent.parent
    config = load_config(TEMPLATE_PATH)
    assert config.sync.contracts_dir == include / "contracts"
    assert config.training.entrypoint == include / "training" / "train.py"
    assert config.training.hyperpod.lifecycle_scripts_dir == include / "scripts" / "hyperpod"
    assert all(path.exists() for path in (config.sync.contracts_dir, config.training.entrypoint,
                                          config.training.hyperpod.lifecycle_scripts_dir))
    # The same file elsewhere (a deployment that keeps include/ somewhere else) resolves there, whatever
    # the working folder.
    elsewhere = tmp_path / "deploy" / "config" / "pipeline.yaml"
    elsewhere.parent.mkdir(parents=True)
    (tmp_path / "deploy" / "contracts").mkdir()
    elsewhere.write_text(TEMPLATE_PATH.read_text())
    assert load_config(elsewhere).sync.contracts_dir == tmp_path / "deploy" / "contracts"


def test_default_config_is_include_beside_the_dags_folder(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("FINETUNE_PIPELINE_CONFIG", raising=False)
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(tmp_path / "dags"))
    assert config_path() == tmp_path / "include" / "config" / "pipeline.yaml"
    monkeypatch.setenv("FINETUNE_PIPELINE_CONFIG", str(tmp_path / "mine.yaml"))
    assert config_path() == tmp_path / "mine.yaml"


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("storage.bucket", "My_Bucket", "storage.bucket: expected an S3 bucket name"),
        ("storage.bucket", "ab", "storage.bucket: expected an S3 bucket name"),
        ("snowball.role_arn", "arn:aws:iam:role/x", "snowball.role_arn: expected an IAM role ARN"),
        ("dms.service_access_role_arn", "not-an-arn", "dms.service_access_role_arn: expected an IAM role ARN"),
        ("source.tables.0.primary_key", [], "source.tables[0].primary_key: expected at least one primary-key"),
        ("training.region", "eu-west-1", "must equal training.region (eu-west-1)"),
        ("storage.region", "us-east", "storage.region: expected an AWS region"),
        ("transfer.link_utilization", 1.5, "transfer.link_utilization"),
        ("transfer.link_gbps", None, "link is 'internet', so link_gbps"),
        ("transfer.direct_connect_gbps", 40, "transfer.direct_connect_gbps"),
        ("source.slot_name", "Bad-Slot", "source.slot_name"),
        ("storage.landing_prefix", "/landing/", "storage.landing_prefix: expected an S3 key prefix"),
        ("training.backend", "ec2", "a 'ec2' section is required"),
        ("dms.task_id", "Finetune-CDC", "dms.task_id: expected a DMS identifier"),
        ("dms.replication_instance_id", "ri--one", "dms.replication_instance_id: expected a DMS identifier"),
        ("dms.source_endpoint_id", "source-", "dms.source_endpoint_id: expected a DMS identifier"),
        ("sync.source_count_conn_id", "", "sync.source_count_conn_id"),
        ("sync.reconcile_with_dms", "sometimes", "sync.reconcile_with_dms"),
        ("sync.late_file_grace_minutes", 1, "sync.late_file_grace_minutes"),
        # What a careful reviewer found the config accepting (the "no data lost" issue):
        ("sync.schedule", "every tuesday-ish", "sync.schedule: expected a cron expression"),
        ("storage.region", "us-foo-9", "storage.region: expected an AWS region like us-east-1 that botocore knows"),
        ("snowball.role_arn", "arn:aws:s3:::finetune-data", "snowball.role_arn: expected an IAM role ARN"),
        ("snowball.kms_key_arn", "arn:aws:iam::123456789012:role/finetune-snowball-import",
         "snowball.kms_key_arn: expected a KMS key ARN"),
        ("source.size_bytes", True, "source.size_bytes: Input should be a valid integer"),
        ("snowball.poll_seconds", float("inf"), "snowball.poll_seconds: Input should be a finite number"),
        ("source.tables.0.primary_key", ["customer_id", "customer_id"],
         "each primary-key column may appear once, got ['customer_id']"),
        ("storage.dataset_prefix", "landing", "landing_prefix ('landing') and dataset_prefix ('landing') must be"),
        ("storage.quarantine_prefix", "landing/quarantine", "must be separate prefixes, neither inside the other"),
        ("dms.target_endpoint_id", "finetune-source", "source_endpoint_id and target_endpoint_id must differ"),
        ("snowball.device_endpoint_url", "192.168.1.20:8443", "snowball.device_endpoint_url: expected the device's"),
        ("sync.contracts_dir", "../no-such-contracts", "sync.contracts_dir: expected an existing folder"),
    ],
)
def test_bad_value_names_the_field_and_expected_form(path, value, expected):
    with pytest.raises(PipelineConfigError) as error:
        parse_config(with_change(path, value), "pipeline.yaml", base_dir=TEMPLATE_PATH.parent)
    assert expected in str(error.value)
    assert str(error.value).startswith("invalid pipeline config pipeline.yaml:")


def test_unknown_field_is_refused():
    data = with_change("storage.bukcet", "x")
    with pytest.raises(PipelineConfigError, match=r"storage.bukcet: unknown field"):
        parse_config(data, base_dir=TEMPLATE_PATH.parent)


def test_duplicate_table_is_refused():
    data = copy.deepcopy(GOOD)
    data["source"]["tables"].append(copy.deepcopy(data["source"]["tables"][0]))
    with pytest.raises(PipelineConfigError, match=r"duplicates \['public.customers'\]"):
        parse_config(data, base_dir=TEMPLATE_PATH.parent)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "is empty: start from include/config/pipeline.yaml"),
        ("# only a comment\n", "is empty"),
        ("- a list\n", "must be a mapping of sections"),
        ("project: a\nproject: b\n", "key 'project' appears twice (lines 1 and 2)"),
    ],
)
def test_bad_files_get_a_clear_message(tmp_path: Path, text, expected):
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    with pytest.raises(PipelineConfigError) as error:
        load_config(path)
    assert expected in str(error.value)


def test_duplicate_keys_deep_in_the_file_are_refused(tmp_path: Path):
    text = TEMPLATE_PATH.read_text().replace("  region: us-east-1\n", "  region: us-east-1\n  region: eu-west-1\n", 1)
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    with pytest.raises(PipelineConfigError, match="key 'region' appears twice"):
        load_config(path)


def test_a_folder_given_as_the_config_is_named(tmp_path: Path):
    with pytest.raises(PipelineConfigError, match="is a folder: point FINETUNE_PIPELINE_CONFIG at the YAML file"):
        load_config(tmp_path)


def test_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(PipelineConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("project: [unclosed\n")
    with pytest.raises(PipelineConfigError, match="not valid YAML"):
        load_config(broken)


def test_bad_config_fails_the_dag_parse_with_the_message(tmp_path: Path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    bad = tmp_path / "pipeline.yaml"
    bad.write_text(yaml.safe_dump(with_change("storage.bucket", "Bad_Bucket")))
    monkeypatch.setenv("FINETUNE_PIPELINE_CONFIG", str(bad))
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags"))
    assert len(bag.import_errors) == 4
    for message in bag.import_errors.values():
        assert "storage.bucket: expected an S3 bucket name" in message
