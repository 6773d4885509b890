"""
One description per wait: a task hands its waiter trigger to :func:`defer_or_wait`, deferred or not.

A trigger (``AwsBaseWaiterTrigger``) already names its waiter, the waiter's arguments, the messages and the
status queries. With ``deferrable=True`` the task defers to it; otherwise the same waiter runs here with the
provider's ``wait``, and the event the trigger would have fired goes to the same ``execute_complete``, so
both ways end in one place and nothing about the wait is written twice. A trigger that is not a waiter
trigger (one that reads an object, not a describe call) runs its own ``run()`` here to its first event.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.utils.waiter_with_logging import wait
from airflow.sdk.exceptions import AirflowException

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.base_aws import AwsGenericHook
    from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
    from airflow.providers.amazon.aws.sensors.base_aws import AwsBaseSensor
    from airflow.providers.amazon.aws.triggers.base import AwsBaseWaiterTrigger
    from airflow.sdk import Context
    from airflow.triggers.base import BaseTrigger


def trigger_arguments(
    task: AwsBaseOperator | AwsBaseSensor,
    *,
    waiter_delay: float | None = None,
    waiter_max_attempts: int | None = None,
) -> dict[str, Any]:
    """
    The keywords every waiter trigger takes from the task that waits: its connection and its polling.

    ``waiter_delay`` and ``waiter_max_attempts`` default to the task's own (a sensor, which has none, gives
    them from its ``poke_interval`` and ``timeout``).
    """
    return {
        "waiter_delay": task.waiter_delay if waiter_delay is None else waiter_delay,
        "waiter_max_attempts": (
            task.waiter_max_attempts if waiter_max_attempts is None else waiter_max_attempts
        ),
        "aws_conn_id": task.aws_conn_id,
        "region_name": task.region_name,
        "verify": task.verify,
        "botocore_config": task.botocore_config,
    }


def run_waiter_trigger(trigger: AwsBaseWaiterTrigger, hook: AwsGenericHook) -> dict[str, Any]:
    """
    Run ``trigger``'s waiter in this process and return the payload of the event ``trigger.run()`` fires.

    The waiter comes from ``hook`` as ``run()`` gets it from ``trigger.hook()``: by name, custom waiters
    (``hook.waiter_path``) first, with the trigger's ``waiter_config_overrides``. A failure the trigger
    reports as an ``error`` event (terminal state, attempts used up, an error no retry of the call fixes)
    is returned as that event, not raised.
    """
    hook_class = getattr(type(trigger), "aws_hook_class", None)
    if hook_class is not None and not isinstance(hook, hook_class):
        # Another service's client would poll with the wrong API (or miss the custom waiter file).
        raise TypeError(
            f"{type(trigger).__name__} waits with a {hook_class.__name__}, not a {type(hook).__name__}."
        )
    waiter = hook.get_waiter(trigger.waiter_name, config_overrides=trigger.waiter_config_overrides)
    try:
        wait(
            waiter=waiter,
            waiter_delay=trigger.waiter_delay,
            waiter_max_attempts=trigger.attempts,
            args=trigger.waiter_args,
            failure_message=trigger.failure_message,
            status_message=trigger.status_message,
            status_args=trigger.status_queries,
        )
    except AirflowException as error:
        # The trigger's own conversion, so the error event has exactly the fields the deferred one has.
        return trigger._event_from_exception(error).payload
    return {"status": "success", trigger.return_key: trigger.return_value}


def run_trigger_here(trigger: BaseTrigger) -> dict[str, Any]:
    """Run ``trigger.run()`` in this process (its own event loop) and return its first event's payload."""

    async def first_event() -> dict[str, Any]:
        async for event in trigger.run():
            return event.payload
        raise AirflowException(f"{type(trigger).__name__} ended without an event")

    return asyncio.run(first_event())


def defer_or_wait(
    task: AwsBaseOperator | AwsBaseSensor,
    context: Context,
    trigger: AwsBaseWaiterTrigger | BaseTrigger,
    *,
    method_name: str = "execute_complete",
    kwargs: dict[str, Any] | None = None,
    timeout: timedelta | None = None,
    hook: AwsGenericHook | None = None,
) -> Any:
    """
    Defer ``task`` to ``trigger`` if it is deferrable, else run the trigger's wait here.

    Either way ``task.<method_name>(context, event=..., **kwargs)`` decides what the event means; without a
    deferral its result is returned, and becomes the task's.

    :param kwargs: Further keywords for ``method_name``, kept through the deferral.
    :param timeout: The deferral's timeout (a blocking wait is bounded by the trigger's attempts).
    :param hook: The hook whose client polls; ``task.hook`` unless the wait is on another service.
    """
    if task.deferrable:
        task.defer(trigger=trigger, method_name=method_name, kwargs=kwargs, timeout=timeout)
    if hasattr(trigger, "waiter_name"):
        event = run_waiter_trigger(trigger, task.hook if hook is None else hook)
    else:
        event = run_trigger_here(trigger)
    return getattr(task, method_name)(context, event=event, **(kwargs or {}))
