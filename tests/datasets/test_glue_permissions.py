"""The runner policy (include/iam/airflow-runner-policy.json) allows every Glue call a sync and a reader make.

A Glue action in IAM is named as its API operation (``glue:UpdateTable`` authorizes ``UpdateTable``), so the
calls pyiceberg's GlueCatalog sends, recorded at botocore, are checked against the policy's actions: a
permission the policy lacks is an ``AccessDeniedException`` on a user's first sync, and fails here instead.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import botocore.client
import pytest
from ds_helpers import REPO, T0, item_events, item_load, published_rows, put_cdc, put_load

from finetune_pipeline.datasets.catalog import AwsAccess, CatalogSpec
from finetune_pipeline.datasets.store import S3Store
from finetune_pipeline.datasets.sync import run_sync

POLICY = REPO / "include" / "iam" / "airflow-runner-policy.json"


def allowed_actions(service_prefix: str) -> set[str]:
    """The operations the policy allows for one service prefix (Allow statements, exact names)."""
    statements = json.loads(POLICY.read_text())["Statement"]
    actions = {action for s in statements if s["Effect"] == "Allow" for action in s["Action"]}
    assert not any(a.endswith("*") for a in actions), "the policy names each action; no wildcards to expand here"
    return {action.split(":", 1)[1] for action in actions if action.startswith(f"{service_prefix}:")}


@pytest.fixture
def glue_calls(monkeypatch) -> list[str]:
    """Every Glue operation any boto3 client in this process sends (pyiceberg builds its own client)."""
    calls: list[str] = []
    make_api_call = botocore.client.BaseClient._make_api_call

    def recording(self, operation_name, api_params):
        if self.meta.service_model.service_name == "glue":
            calls.append(operation_name)
        return make_api_call(self, operation_name, api_params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    return calls


def test_the_runner_policy_allows_every_glue_call_of_a_sync_and_a_read(
    boto_client, localaws, tmp_path, spec, glue_calls
):
    bucket = f"glue-iam-{uuid.uuid4().hex[:12]}"
    boto_client("s3").create_bucket(Bucket=bucket)
    store = S3Store(boto_client("s3"), bucket, tmp_dir=tmp_path)
    access = AwsAccess(region="us-east-1", endpoint_url=localaws.endpoint_url, access_key_id="testing",
                       secret_access_key="testing")  # fmt: skip
    glue = spec.model_copy(
        update={"catalog": CatalogSpec(kind="glue", namespace=f"ft_{uuid.uuid4().hex[:8]}",
                                       warehouse=f"s3://{bucket}/datasets/shop/warehouse")}  # fmt: skip
    )
    now = T0 + timedelta(hours=1)
    put_load(store, item_load([(1, "a", 1, "new"), (2, "b", 2, "new")]))
    assert run_sync(store, glue, now=now, access=access).published  # creates the database and the table
    put_cdc(store, item_events([("U", 10, 1, 1, "a1", 10, "done")]), 12)
    assert run_sync(store, glue, now=now, access=access).version == "v000002"  # commits to an existing table
    assert set(published_rows(store, glue, access=access)) == {1, 2}

    assert {"CreateDatabase", "CreateTable", "UpdateTable", "GetTable"} <= set(glue_calls), glue_calls
    missing = sorted(set(glue_calls) - allowed_actions("glue"))
    assert not missing, f"{POLICY.name} lacks glue:{', glue:'.join(missing)}"
