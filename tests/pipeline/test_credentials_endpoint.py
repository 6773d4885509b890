"""A child process keeps valid credentials for as long as it runs: it fetches the parent session's
refreshed credentials from the loopback endpoint, the way an SDK in an ECS task fetches its role's."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from botocore.credentials import Credentials, RefreshableCredentials

from finetune_pipeline.pipeline.credentials_endpoint import child_credentials

# A child that reads its credentials twice; each time they are within botocore's mandatory refresh window
# (under 10 minutes left), so the second read fetches again.
CHILD = """
import botocore.session
credentials = botocore.session.get_session().get_credentials()
print(credentials.method)
print(credentials.get_frozen_credentials().access_key)
print(credentials.get_frozen_credentials().access_key)
"""


def short_lived() -> RefreshableCredentials:
    """Credentials that last 5 minutes, each refresh issuing a new key, as an assumed role's do."""
    issued = itertools.count(1)

    def refresh() -> dict:
        number = next(issued)
        return {"access_key": f"ASIAREFRESHED{number:04d}", "secret_key": f"secret-{number}",
                "token": f"token-{number}", "expiry_time": (datetime.now(UTC) + timedelta(minutes=5)).isoformat()}

    return RefreshableCredentials.create_from_metadata(refresh(), refresh, method="assume-role")


def run_child(variables: dict[str, str], shadowed: tuple[str, ...]) -> list[str]:
    environment = {name: value for name, value in os.environ.items() if name not in shadowed} | variables
    result = subprocess.run([sys.executable, "-c", CHILD], env=environment, capture_output=True, text=True,
                            timeout=60, check=True)  # fmt: skip
    return result.stdout.split()


def test_a_child_gets_refreshed_credentials_through_the_endpoint(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWORKERSOWNKEY")  # the worker's own: must not reach the child
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "worker-secret")
    (tmp_path / "credentials").write_text("[default]\naws_access_key_id = AKIAPROFILE\naws_secret_access_key = x\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    with child_credentials(short_lived()) as (variables, shadowed):
        assert "AWS_ACCESS_KEY_ID" not in variables
        method, first, second = run_child(variables, shadowed)
    assert method == "container-role"
    assert first.startswith("ASIAREFRESHED") and second.startswith("ASIAREFRESHED") and first != second


def test_the_endpoint_refuses_a_request_without_its_token():
    with child_credentials(short_lived()) as (variables, _):
        request = urllib.request.Request(variables["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
                                         headers={"Authorization": "guessed"})  # fmt: skip
        with pytest.raises(urllib.error.HTTPError, match="403"):
            urllib.request.urlopen(request, timeout=10)


def test_the_endpoint_is_gone_after_the_block():
    with child_credentials(short_lived()) as (variables, _):
        url = variables["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)


def test_access_keys_that_cannot_expire_go_in_the_environment():
    with child_credentials(Credentials("AKIASTATIC", "static-secret")) as (variables, shadowed):
        assert variables == {"AWS_ACCESS_KEY_ID": "AKIASTATIC", "AWS_SECRET_ACCESS_KEY": "static-secret"}
        assert shadowed == ()
        assert run_child(variables, shadowed) == ["env", "AKIASTATIC", "AKIASTATIC"]
