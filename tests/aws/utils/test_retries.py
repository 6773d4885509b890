from __future__ import annotations

import logging

import pytest
from airflow.sdk.exceptions import AirflowFailException
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ParamValidationError

from finetune_pipeline.aws.utils import retries
from finetune_pipeline.aws.utils.retries import create_once, is_permanent, is_retryable, single_attempt_config

log = logging.getLogger(__name__)


def client_error(code: str, status: int) -> ClientError:
    response = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "CreateJob")


@pytest.mark.parametrize(
    "error",
    [
        client_error("ThrottlingException", 400),
        client_error("Throttling", 400),
        client_error("SlowDown", 503),
        client_error("RequestLimitExceeded", 503),
        client_error("InternalFailure", 500),
        client_error("ServiceUnavailable", 503),
        ConnectionClosedError(endpoint_url="http://localhost"),
        EndpointConnectionError(endpoint_url="http://localhost"),
    ],
)
def test_what_botocores_standard_mode_retries_is_retryable(error):
    assert is_retryable(error)


@pytest.mark.parametrize(
    "error",
    [
        client_error("ValidationException", 400),
        client_error("ResourceInUse", 400),
        client_error("InvalidJobStateException", 400),
        ParamValidationError(report="bad"),
        ValueError("not AWS"),
    ],
)
def test_the_rest_is_not(error):
    assert not is_retryable(error)


def test_permanent_errors_are_requests_aws_refuses_as_wrong():
    assert is_permanent(client_error("ValidationException", 400))
    assert is_permanent(client_error("IdempotentParameterMismatch", 400))
    assert not is_permanent(client_error("ThrottlingException", 400))
    assert not is_permanent(ValueError("x"))


def test_single_attempt_config_turns_retries_off_in_the_same_mode():
    config = single_attempt_config(Config(retries={"mode": "adaptive", "max_attempts": 9}, read_timeout=7))
    assert config.retries == {"mode": "adaptive", "total_max_attempts": 1}
    assert config.read_timeout == 7
    assert single_attempt_config(None).retries == {"mode": "standard", "total_max_attempts": 1}


@pytest.fixture
def no_sleep(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(retries.time, "sleep", slept.append)
    return slept


class Api:
    """A create whose answers are scripted: each item an error to raise, or None to succeed."""

    def __init__(self, *outcomes, commits_on=()):
        self.outcomes = list(outcomes)
        self.commits_on = set(commits_on)  # attempts (1-based) that create although they raise
        self.attempts = 0
        self.created: list[str] = []

    def create(self) -> str:
        self.attempts += 1
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is None or self.attempts in self.commits_on:
            self.created.append(f"r-{self.attempts}")
        if outcome is not None:
            raise outcome
        return self.created[-1]

    def find(self) -> str | None:
        return self.created[0] if self.created else None


def test_a_lost_answer_is_found_and_not_created_again(no_sleep):
    api = Api(client_error("InternalFailure", 500), commits_on={1})
    assert create_once(api.create, api.find, what="a job", log=log) == "r-1"
    assert api.attempts == 1 and api.created == ["r-1"]


def test_a_refused_create_is_sent_again_after_a_backoff(no_sleep):
    api = Api(client_error("ThrottlingException", 400), ConnectionClosedError(endpoint_url="x"))
    assert create_once(api.create, api.find, what="a job", log=log) == "r-3"
    assert api.created == ["r-3"]
    assert len(no_sleep) == 2 and 0 <= no_sleep[0] <= 1 and 0 <= no_sleep[1] <= 2


def test_a_non_retryable_error_that_did_create_is_found(no_sleep):
    """SageMaker's answer to a CreateCluster that botocore sent again: the name is taken, by us."""
    api = Api(client_error("ResourceInUse", 400), commits_on={1})
    assert create_once(api.create, api.find, what="a cluster", log=log) == "r-1"


def test_a_request_aws_refuses_as_wrong_fails_without_retry(no_sleep):
    api = Api(client_error("ValidationException", 400))
    with pytest.raises(AirflowFailException, match="AWS refused to create a job"):
        create_once(api.create, api.find, what="a job", log=log)
    assert api.attempts == 1


def test_other_errors_are_raised_as_they_are(no_sleep):
    api = Api(client_error("InvalidJobStateException", 400))
    with pytest.raises(ClientError, match="InvalidJobStateException"):
        create_once(api.create, api.find, what="a job", log=log)


def test_attempts_run_out(no_sleep):
    api = Api(*[client_error("ThrottlingException", 400)] * 3)
    with pytest.raises(ClientError, match="ThrottlingException"):
        create_once(api.create, api.find, what="a job", log=log, attempts=3)
    assert api.attempts == 3 and api.created == []


def test_the_connections_retry_policy_reaches_every_client(aws_conn):
    """AwsBaseHook builds its botocore Config from the connection extra's ``config_kwargs``."""
    import asyncio

    from finetune_pipeline.aws.hooks.snowball import SnowballHook
    from finetune_pipeline.aws.utils.retries import CONNECTION_RETRIES

    hook = SnowballHook(aws_conn_id=aws_conn)
    assert hook.conn.meta.config.retries == CONNECTION_RETRIES
    assert hook.single_attempt_conn.meta.config.retries == {"mode": "standard", "total_max_attempts": 1}

    async def async_retries() -> dict:  # what a trigger's client gets
        async with await hook.get_async_conn() as client:
            return client.meta.config.retries

    assert asyncio.run(async_retries()) == CONNECTION_RETRIES
