"""Small WSGI helpers shared by the localaws handlers: buffered responses and who/where a request is from."""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from xml.sax.saxutils import escape

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/,\s]+)/([^/,\s]+)/aws4_request")
DEFAULT_REGION = "us-east-1"


@dataclass
class Response:
    """A fully buffered HTTP response; call it as a WSGI app to send it."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((value for key, value in self.headers if key.lower() == name), None)

    def with_body(self, body: bytes) -> Response:
        headers = [(k, v) for k, v in self.headers if k.lower() != "content-length"]
        return Response(self.status, body, headers)

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        headers = list(self.headers)
        # A forwarded HEAD keeps moto's Content-Length (the object's size); everything else gets the body's.
        if self.header("Content-Length") is None:
            headers.append(("Content-Length", str(len(self.body))))
        start_response(f"{self.status} {HTTPStatus(self.status).phrase}", headers)
        # HEAD responses carry the headers of the GET but never a body.
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [self.body]


def json_response(payload: Any, status: int = 200, content_type: str = "application/json") -> Response:
    return Response(status, json.dumps(payload).encode(), [("Content-Type", content_type)])


def call_app(app: WsgiApp, environ: dict) -> Response:
    """Run a WSGI app and buffer what it answers, so the caller can inspect or rewrite it."""
    captured: dict[str, Any] = {}
    chunks: list[bytes] = []

    def start_response(status: str, headers: list, exc_info: Any = None) -> Callable[[bytes], None]:
        captured["status"], captured["headers"] = status, list(headers)
        return chunks.append

    result = app(environ, start_response)
    try:
        chunks.extend(result)
    finally:
        close = getattr(result, "close", None)
        if close:
            close()
    return Response(int(captured["status"].split()[0]), b"".join(chunks), captured["headers"])


def read_body(environ: dict) -> bytes:
    """Read the request body and put it back, so that moto can still read it after us."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def replace_body(environ: dict, body: bytes) -> None:
    """Hand moto a rewritten request body (e.g. a cluster ARN resolved to the name moto keys it by)."""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))


def json_error(code: str, message: str, content_type: str, status: int = 400) -> Response:
    """An AWS JSON-protocol error, which botocore turns into a ``ClientError`` with this ``Code``."""
    return json_response({"__type": code, "Message": message}, status, content_type)


def request_region(environ: dict) -> str:
    """The region the client signed for (SigV4 credential scope)."""
    match = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
    return match.group(2) if match else DEFAULT_REGION


def request_account(environ: dict) -> str:
    """The account moto would use for this request, resolved in moto's own order."""
    if "MOTO_ACCOUNT_ID" in os.environ:
        return os.environ["MOTO_ACCOUNT_ID"]
    if environ.get("HTTP_X_MOTO_ACCOUNT_ID"):
        return environ["HTTP_X_MOTO_ACCOUNT_ID"]
    from moto.iam.models import get_account_id_from

    match = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
    return get_account_id_from(match.group(1) if match else "AKIAEXAMPLE")


def new_request_id() -> str:
    return str(uuid.uuid4())


def s3_error(status: int, code: str, message: str, **details: str) -> Response:
    """An error in S3's XML format, which botocore turns into a ``ClientError`` with this ``Code``."""
    parts = [f"<Code>{escape(code)}</Code>", f"<Message>{escape(message)}</Message>"]
    parts += [f"<{name}>{escape(value)}</{name}>" for name, value in details.items()]
    parts.append(f"<RequestId>{new_request_id()}</RequestId>")
    xml = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error>{"".join(parts)}</Error>'
    return Response(status, xml.encode(), [("Content-Type", "application/xml")])
