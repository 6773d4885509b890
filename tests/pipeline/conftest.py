"""A pipeline config pointed at a fresh bucket and a temporary export folder for each test."""

from __future__ import annotations

import uuid

import pytest
import yaml

from finetune_pipeline.config import DEFAULT_CONFIG_PATH, parse_config


@pytest.fixture
def pipeline_config(tmp_path):
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    data["storage"]["bucket"] = f"ft-test-{uuid.uuid4().hex[:12]}"
    data["snowball"]["export_dir"] = str(tmp_path / "export")
    return parse_config(data, "test")
