"""A pipeline config pointed at a fresh bucket and a temporary export folder for each test."""

from __future__ import annotations

import uuid

import pytest

from devstack.config import demo_config


@pytest.fixture
def pipeline_config(tmp_path, localaws):
    return demo_config(home=tmp_path, localaws_url=localaws.endpoint_url,
                       overrides={"storage": {"bucket": f"ft-test-{uuid.uuid4().hex[:12]}"}})
