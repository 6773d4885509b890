"""docker-compose.yaml is valid against the Compose spec and describes the stack the e2e test runs."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from devstack.stack import AIRFLOW_COMPONENTS

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO_ROOT.parent / "shared" / "schemas" / "compose-spec.json"


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((REPO_ROOT / "docker-compose.yaml").read_text())


@pytest.mark.skipif(not SCHEMA_PATH.exists(), reason="the Compose spec schema ships beside the checkout")
def test_compose_file_matches_the_compose_spec(compose):
    jsonschema.validate(compose, json.loads(SCHEMA_PATH.read_text()))


def test_compose_runs_the_same_components_as_the_local_stack(compose):
    commands = {name: service.get("command") for name, service in compose["services"].items()}
    airflow_commands = {command for command in commands.values() if isinstance(command, str)}
    assert airflow_commands == set(AIRFLOW_COMPONENTS)
    assert "python -m localaws" in " ".join(commands["localaws"])


def test_compose_connection_carries_the_retry_policy(compose):
    from finetune_pipeline.aws.utils.retries import CONNECTION_RETRIES

    connection = json.loads(compose["x-airflow-common"]["environment"]["AIRFLOW_CONN_AWS_DEFAULT"])
    assert connection["extra"]["config_kwargs"] == {"retries": CONNECTION_RETRIES}


def test_compose_mounts_dags_plugins_and_include(compose):
    volumes = compose["x-airflow-common"]["volumes"]
    for folder in ("dags", "plugins", "include"):
        assert f"./{folder}:/opt/airflow/{folder}" in volumes
