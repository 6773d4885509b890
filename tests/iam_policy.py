"""Checks of include/iam/airflow-runner-policy.json against the AWS calls the code really makes.

For these services an IAM action is named as its API operation (``sagemaker:ListClusters`` authorizes
``ListClusters``), so calls recorded at botocore are checked against the policy's actions: a permission the
policy lacks would be an ``AccessDenied`` on a user's first run, and fails a test instead. S3 is left out
(its actions are not its operations' names: ``ListObjectsV2`` needs ``s3:ListBucket``); STS's
``GetCallerIdentity`` needs no permission.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Generator
from pathlib import Path

import botocore.client
from aiobotocore.client import AioBaseClient

import finetune_pipeline

POLICY = Path(__file__).resolve().parents[1] / "include" / "iam" / "airflow-runner-policy.json"
PACKAGE = str(Path(finetune_pipeline.__file__).resolve().parent)
# botocore's service name -> IAM's service prefix, for the services whose actions are their operations.
CHECKED_SERVICES = {"glue": "glue", "sagemaker": "sagemaker", "ec2": "ec2", "dms": "dms", "snowball": "snowball",
                    "ssm": "ssm", "iam": "iam", "secretsmanager": "secretsmanager"}  # fmt: skip


def allowed_actions() -> set[str]:
    """Every action the policy allows (Allow statements, exact names; the policy uses no wildcards)."""
    statements = json.loads(POLICY.read_text())["Statement"]
    actions = {action for s in statements if s["Effect"] == "Allow" for action in s["Action"]}
    assert not any("*" in action for action in actions), "the policy names each action; no wildcards to expand"
    return actions


def _sent_by_the_package() -> bool:
    """Whether the call comes from finetune_pipeline's code (not from a test's own set-up calls)."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(PACKAGE):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def recorded_calls(only_the_package: bool = False) -> Generator[set[str], None, None]:
    """The IAM actions of the checked services' calls any boto3 client in this process sends in the block
    (with ``only_the_package``, those that finetune_pipeline's code sends)."""
    calls: set[str] = set()
    make_api_call = botocore.client.BaseClient._make_api_call

    def recording(self, operation_name, api_params):
        prefix = CHECKED_SERVICES.get(self.meta.service_model.service_name)
        if prefix and (not only_the_package or _sent_by_the_package()):
            calls.add(f"{prefix}:{operation_name}")
        return make_api_call(self, operation_name, api_params)

    # The triggers' clients are aiobotocore's, whose call is a coroutine of its own.
    make_async_call = AioBaseClient._make_api_call

    async def recording_async(self, operation_name, api_params):
        prefix = CHECKED_SERVICES.get(self.meta.service_model.service_name)
        if prefix and (not only_the_package or _sent_by_the_package()):
            calls.add(f"{prefix}:{operation_name}")
        return await make_async_call(self, operation_name, api_params)

    botocore.client.BaseClient._make_api_call = recording
    AioBaseClient._make_api_call = recording_async
    try:
        yield calls
    finally:
        botocore.client.BaseClient._make_api_call = make_api_call
        AioBaseClient._make_api_call = make_async_call


def missing_from_policy(calls: set[str]) -> list[str]:
    return sorted(calls - allowed_actions())
