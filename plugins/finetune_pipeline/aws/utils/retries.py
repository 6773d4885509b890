"""
What a retry can fix, and creates that must happen once although the API takes no client token.

botocore retries a call whose answer was lost (a 5xx, a dropped connection) as readily as one that was
throttled, in every retry mode: after a create had committed, that retry makes a second resource. Where an
API has a client token (EC2 ``RunInstances``) or a unique name (SageMaker ``CreateCluster``), AWS itself
turns the retry into a no-op or a refusal. Where it has neither (Snowball ``CreateJob`` and
``CreateAddress``, SSM ``SendCommand``), the hook sends the create once, with botocore's retries off
(:class:`SingleAttemptClientMixin`), and :func:`create_once` decides what happens after an error: look for
the resource by its marker, and send again only if it is not there.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from functools import cached_property
from types import SimpleNamespace
from typing import TypeVar

from airflow.sdk.exceptions import AirflowFailException
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.retries.standard import RetryContext, ThrottledRetryableChecker, TransientRetryableChecker

T = TypeVar("T")

# The retry policy every AWS connection of the pipeline carries, in its extra:
# ``{"config_kwargs": {"retries": CONNECTION_RETRIES}}`` (AwsBaseHook builds its botocore Config from it).
# botocore's standard mode (https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html)
# retries throttling, 5xx and dropped connections with jittered exponential backoff capped at 20 s, and
# spends a retry quota so that an outage does not multiply the load; legacy mode, botocore's default,
# retries fewer errors. Ten attempts ride out a throttled minute or an endpoint restarting; a task that is
# still failing after them is one for Airflow's task retries.
CONNECTION_RETRIES = {"mode": "standard", "total_max_attempts": 10}

# botocore's own checkers of standard retry mode: throttling codes (ThrottlingException, SlowDown,
# RequestLimitExceeded, ...), transient codes and status codes (500, 502, 503, 504), connection errors.
_RETRYABLE = (ThrottledRetryableChecker(), TransientRetryableChecker())
# Client errors that say the request itself is wrong or not allowed: sent again, it fails the same way.
PERMANENT_ERROR_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "IdempotentParameterMismatch",
        "InvalidAddressException",
        "InvalidInputCombinationException",
        "InvalidParameterCombination",
        "InvalidParameterCombinationException",
        "InvalidParameterValue",
        "InvalidParameterValueException",
        "MissingParameter",
        "UnauthorizedOperation",
        "ValidationError",
        "ValidationException",
    }
)
CREATE_ATTEMPTS = 5
MAX_BACKOFF_SECONDS = 20  # botocore's standard mode caps its backoff there too


def is_retryable(error: BaseException) -> bool:
    """Whether botocore's standard retry mode would send the call again after ``error``."""
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        context = RetryContext(
            attempt_number=1, parsed_response=error.response, http_response=SimpleNamespace(status_code=status)
        )
    else:
        context = RetryContext(attempt_number=1, caught_exception=error)
    return any(checker.is_retryable(context) for checker in _RETRYABLE)


def is_permanent(error: BaseException) -> bool:
    """Whether ``error`` is AWS refusing the request itself (bad parameters, no permission)."""
    return isinstance(error, ClientError) and error.response.get("Error", {}).get("Code") in PERMANENT_ERROR_CODES


def single_attempt_config(config: Config | None) -> Config:
    """``config`` with botocore's retries off (``total_max_attempts=1``), in the same retry mode."""
    config = config or Config()
    mode = (config.retries or {}).get("mode", "standard")
    return config.merge(Config(retries={"mode": mode, "total_max_attempts": 1}))


class SingleAttemptClientMixin:
    """For an ``AwsBaseHook``: ``single_attempt_conn``, its client with botocore's retries off."""

    @cached_property
    def single_attempt_conn(self):
        """The hook's client, but each call is sent once: a create without a client token uses it."""
        return self.get_client_type(region_name=self.region_name, config=single_attempt_config(self.config))


def create_once(
    create: Callable[[], T],
    find: Callable[[], T | None],
    *,
    what: str,
    log: logging.Logger,
    attempts: int = CREATE_ATTEMPTS,
) -> T:
    """
    Call ``create`` until it succeeds, never making a second resource after one whose answer was lost.

    After any error, ``find`` looks for the resource by its marker first; if it is there, the create went
    through and that is returned. Otherwise a retryable error (botocore's judgement) sends ``create`` again
    after a jittered backoff, up to ``attempts`` times; a request AWS refuses as wrong raises
    ``AirflowFailException`` (no task retry changes it); any other error is raised as it is.

    ``create`` must be a single attempt (or carry a client token), or botocore's own retries happen out
    of sight and ``find`` comes too late.
    """
    for attempt in range(1, attempts + 1):
        try:
            return create()
        except Exception as error:
            found = find()
            if found is not None:
                log.info("Creating %s failed (%s), but it was created: using it.", what, error)
                return found
            if is_permanent(error):
                raise AirflowFailException(f"AWS refused to create {what}: {error}") from error
            if not is_retryable(error) or attempt == attempts:
                raise
            # botocore's own backoff: random up to 1 s, 2 s, 4 s, ... capped at 20 s.
            delay = random.uniform(0, min(MAX_BACKOFF_SECONDS, 2 ** (attempt - 1)))
            log.info(
                "Creating %s failed (%s) and it was not created; trying again in %.1fs (%d/%d).",
                what,
                error,
                delay,
                attempt,
                attempts,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises
