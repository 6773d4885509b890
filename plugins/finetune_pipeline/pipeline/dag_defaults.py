"""Defaults shared by every pipeline DAG: ownership, the retry policy, and how long a task may run."""

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
    # Every task has a bound: the DAGs run one at a time (max_active_runs=1), so a hung task would hold
    # every later run. A deferred task's trigger times out at the same bound, so the tasks that wait for
    # days (a Snowball trip, a training job) set their own.
    "execution_timeout": timedelta(hours=1),
}

# The bounds of the long waits, each a little longer than the wait's own timeout, so the wait (with its
# clear message) ends first.
DEVICE_DELIVERY = timedelta(days=30)
DEVICE_IMPORT = timedelta(days=60)


def beyond(wait: timedelta) -> timedelta:
    """An execution_timeout for a wait of ``wait``: that, plus an hour for the work around it."""
    return wait + timedelta(hours=1)
