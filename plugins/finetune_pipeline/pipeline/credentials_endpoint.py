"""Credentials that refresh, for a child process that outlives them: served the way ECS serves a task role's.

A local training run lasts hours, and credentials frozen into its environment expire under it (an assumed
role's last an hour by default), so the model upload at the end would fail. botocore's container credential
provider reads ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` (a loopback address is allowed) with
``AWS_CONTAINER_AUTHORIZATION_TOKEN`` and fetches again before the served ``Expiration``: the child always
holds the current credentials of the parent's session, which refreshes them itself.

Hand-written because no library serves this endpoint; it is a few lines of the standard library.

.. seealso::
    https://docs.aws.amazon.com/sdkref/latest/guide/feature-container-credentials.html
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import secrets
import threading
from collections.abc import Generator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from botocore.credentials import Credentials, RefreshableCredentials

# What comes before the container provider in botocore's chain (environment keys, web identity, profiles):
# a child given the endpoint must not inherit any of it from the worker, or it would use that instead.
SHADOWING_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                       "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")


def static_environment(credentials: Credentials) -> dict[str, str]:
    """Credentials that do not expire (access keys): in the environment, as the SDKs read them first."""
    frozen = credentials.get_frozen_credentials()
    environment = {"AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key}
    if frozen.token:
        environment["AWS_SESSION_TOKEN"] = frozen.token
    return environment


@contextlib.contextmanager
def child_credentials(credentials: Credentials) -> Generator[tuple[dict[str, str], tuple[str, ...]], None, None]:
    """(variables to set, variables to remove) giving a child process ``credentials`` for as long as it runs.

    Refreshable credentials are served on a loopback endpoint for the duration of the block; others go in
    the environment, as they cannot expire under the child.
    """
    if not isinstance(credentials, RefreshableCredentials):
        yield static_environment(credentials), ()
        return
    token = secrets.token_urlsafe(32)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if not hmac.compare_digest(self.headers.get("Authorization", ""), token):
                self.send_error(403)
                return
            frozen = credentials.get_frozen_credentials()  # refreshed by botocore when close to expiry
            body = json.dumps({
                "AccessKeyId": frozen.access_key,
                "SecretAccessKey": frozen.secret_key,
                "Token": frozen.token,
                # RefreshableCredentials keeps its expiry private; it is the time the child must come back by.
                "Expiration": credentials._expiry_time.isoformat(),
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
            pass  # requests are not worth a line in the task log

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="credentials-endpoint", daemon=True)
    thread.start()
    try:
        yield {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://127.0.0.1:{server.server_port}/credentials",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": token,
            # The worker's ~/.aws files (a default profile) would also come first.
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_CONFIG_FILE": os.devnull,
        }, SHADOWING_VARIABLES
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
