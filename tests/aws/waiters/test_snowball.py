from __future__ import annotations

import asyncio
import json

import pytest
from botocore.exceptions import WaiterError
from botocore.waiter import WaiterModel

from finetune_pipeline.aws.hooks.snowball import SnowballHook

FAST = {"Delay": 0.01, "MaxAttempts": 2000}


@pytest.fixture
def hook(aws_conn) -> SnowballHook:
    return SnowballHook(aws_conn_id=aws_conn)


def wait_async(hook: SnowballHook, name: str, **kwargs) -> None:
    """Wait with the waiter the provider's triggers use: our JSON on an aiobotocore client."""

    async def main() -> None:
        async with await hook.get_async_conn() as client:
            await hook.get_waiter(name, deferrable=True, client=client).wait(**kwargs)

    asyncio.run(main())


def test_model_is_valid_and_names_every_waitable_state(hook):
    model = WaiterModel(json.loads(hook.waiter_path.read_text()))
    assert set(model.waiter_names) == set(SnowballHook.WAITABLE_STATES.values())
    for name in model.waiter_names:
        assert model.get_waiter(name).operation == "DescribeJob"


def test_job_with_customer_succeeds_once_delivered(hook, snowball_job, advance_job_to):
    job_id = snowball_job()
    advance_job_to(job_id, "WithCustomer")
    hook.get_waiter("job_with_customer").wait(JobId=job_id, WaiterConfig=FAST)


def test_job_with_customer_fails_on_cancelled(hook, snowball_job):
    job_id = snowball_job()
    hook.cancel_job(job_id)
    with pytest.raises(WaiterError, match="terminal failure.*Cancelled"):
        hook.get_waiter("job_with_customer").wait(JobId=job_id, WaiterConfig=FAST)


def test_job_with_customer_fails_once_the_device_left(hook, snowball_job, advance_job_to):
    job_id = snowball_job()
    advance_job_to(job_id, "InTransitToAWS")
    with pytest.raises(WaiterError, match="terminal failure.*InTransitToAWS"):
        hook.get_waiter("job_with_customer").wait(JobId=job_id, WaiterConfig=FAST)


def test_job_complete_waits_through_every_state(hook, snowball_job, advance_job_to):
    job_id = snowball_job()
    with pytest.raises(WaiterError, match="Max attempts exceeded"):
        hook.get_waiter("job_complete").wait(JobId=job_id, WaiterConfig={"Delay": 0.01, "MaxAttempts": 2})
    advance_job_to(job_id, "Complete")
    hook.get_waiter("job_complete").wait(JobId=job_id, WaiterConfig=FAST)


def test_job_complete_fails_on_cancelled(hook, snowball_job):
    job_id = snowball_job()
    hook.cancel_job(job_id)
    with pytest.raises(WaiterError, match="terminal failure"):
        hook.get_waiter("job_complete").wait(JobId=job_id, WaiterConfig=FAST)


def test_async_waiters_from_our_json(hook, snowball_job, advance_job_to):
    job_id = snowball_job()
    with pytest.raises(WaiterError, match="Max attempts exceeded"):
        wait_async(hook, "job_with_customer", JobId=job_id, WaiterConfig={"Delay": 0.01, "MaxAttempts": 2})
    advance_job_to(job_id, "WithCustomer")
    wait_async(hook, "job_with_customer", JobId=job_id, WaiterConfig=FAST)
    cancelled = snowball_job()
    hook.cancel_job(cancelled)
    with pytest.raises(WaiterError, match="terminal failure.*Cancelled"):
        wait_async(hook, "job_complete", JobId=cancelled, WaiterConfig=FAST)
