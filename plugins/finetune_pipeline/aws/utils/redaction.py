"""Keep the bodies of calls that carry a secret out of botocore's DEBUG logs.

botocore logs every request at DEBUG: ``botocore.endpoint`` writes "Making request for <operation> with params:
{... 'body': b'{"Password": ...}'}", so a plain password (CreateEndpoint) or a secret's value (CreateSecret)
would be in any log that enables DEBUG for botocore. Airflow's secrets masker redacts values it was told about,
but only in the handlers it guards; a DEBUG handler on the botocore logger, a test's caplog or a sidecar
collecting stderr see the raw text.

So the body itself is made unprintable: a ``before-call`` handler, registered on the one client and for the named
operations only, replaces the serialized body with :class:`UnloggedBody`, a ``bytes`` whose ``repr``/``str`` say
``<redacted N bytes>``. It is still those bytes for everything that sends, signs or checksums it; only its
printed form changes. Other logs of the call carry no body: the prepared request's repr (``Sending http request``)
and SigV4's canonical request (a hash of the payload) leave it out, urllib3 logs the request line only, and the
responses of these calls hold no secret (DMS never returns a password; CreateSecret returns the ARN).
"""

from __future__ import annotations

from typing import Any


class UnloggedBody(bytes):
    """A request body that prints as ``<redacted N bytes>`` and is sent as itself."""

    def __repr__(self) -> str:
        return f"<redacted {len(self)} bytes>"

    __str__ = __repr__


def _redact_body(params: dict[str, Any], **_: Any) -> None:
    body = params.get("body")
    if isinstance(body, str):
        body = body.encode("utf-8")
    if isinstance(body, bytes) and not isinstance(body, UnloggedBody):
        params["body"] = UnloggedBody(body)


def keep_bodies_out_of_logs(client, *operations: str) -> None:
    """Register the redaction on ``client`` for ``operations`` (e.g. ``"CreateEndpoint"``); idempotent."""
    service = client.meta.service_model.service_id.hyphenize()
    for operation in operations:
        client.meta.events.register(
            f"before-call.{service}.{operation}", _redact_body, unique_id=f"finetune-unlogged-body-{operation}"
        )
