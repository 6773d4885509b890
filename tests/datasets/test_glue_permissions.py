"""The runner policy (include/iam/airflow-runner-policy.json) allows every Glue call a sync and a reader make:
pyiceberg's GlueCatalog builds its own boto3 client, and its calls are recorded at botocore (see iam_policy)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from ds_helpers import T0, item_events, item_load, published_rows, put_cdc, put_load
from iam_policy import missing_from_policy, recorded_calls

from finetune_pipeline.datasets.catalog import AwsAccess, CatalogSpec
from finetune_pipeline.datasets.store import S3Store
from finetune_pipeline.datasets.sync import run_sync


def test_the_runner_policy_allows_every_glue_call_of_a_sync_and_a_read(boto_client, localaws, tmp_path, spec):
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
    with recorded_calls() as calls:
        assert run_sync(store, glue, now=now, access=access).published  # creates the database and the table
        put_cdc(store, item_events([("U", 10, 1, 1, "a1", 10, "done")]), 12)
        assert run_sync(store, glue, now=now, access=access).version == "v000002"  # commits to the table
        assert set(published_rows(store, glue, access=access)) == {1, 2}

    assert {"glue:CreateDatabase", "glue:CreateTable", "glue:UpdateTable", "glue:GetTable"} <= calls, calls
    assert not missing_from_policy(calls), f"the runner policy lacks {missing_from_policy(calls)}"
