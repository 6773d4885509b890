"""Defaults shared by every pipeline DAG: ownership and the retry policy for AWS-calling tasks."""

from __future__ import annotations

from datetime import timedelta

OWNER = "ml-platform"

# AWS calls fail transiently (throttling, eventual consistency); every task is idempotent, so retrying
# with exponential backoff is safe and is what the integrity test requires.
DEFAULT_ARGS = {
    "owner": OWNER,
    "retries": 3,
    "retry_delay": timedelta(seconds=10),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
}
