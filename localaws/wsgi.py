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
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/,\s]+)/([^/,\s]+)/aws4_request")
# A presigned URL carries the same credential scope in its query string (``X-Amz-Credential=...%2Faws4_request``).
_QUERY_CREDENTIAL = re.compile(r"X-Amz-Credential=[^&%/]+(?:%2F|/)\d{8}(?:%2F|/)([^&%/]+)(?:%2F|/)([^&%/]+)")
DEFAULT_REGION = "us-east-1"
# S3 subresources that name an operation of their own on a bucket (``GET /bucket?tagging`` is GetBucketTagging).
_S3_BUCKET_SUBRESOURCES = {
    "acl": "Acl",
    "cors": "Cors",
    "encryption": "Encryption",
    "lifecycle": "LifecycleConfiguration",
    "location": "Location",
    "logging": "Logging",
    "notification": "NotificationConfiguration",
    "ownershipControls": "OwnershipControls",
    "policy": "Policy",
    "publicAccessBlock": "PublicAccessBlock",
    "replication": "Replication",
    "tagging": "Tagging",
    "versioning": "Versioning",
    "website": "Website",
}


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


def request_service(environ: dict) -> str:
    """The service the client signed for: the SigV4 credential scope's service (``s3``, ``snowball``, ...)."""
    match = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
    if match:
        return match.group(3)
    match = _QUERY_CREDENTIAL.search(environ.get("QUERY_STRING", ""))
    return match.group(2) if match else "unknown"


def request_operation(environ: dict, service: str) -> str:
    """
    The API operation a request calls, as botocore's service model names it.

    JSON protocols name it in ``X-Amz-Target`` (``AmazonSSM.SendCommand``), query protocols (EC2, IAM, STS)
    in the ``Action`` parameter, and S3's REST protocol through the method, the path and the subresource.
    """
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        return target.rsplit(".", 1)[-1]
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    if "Action" in query:
        return query["Action"][0]
    if service == "s3":
        return _s3_operation(environ, query)
    if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        action = parse_qs(read_body(environ).decode("utf-8", "replace")).get("Action")
        if action:
            return action[0]
    return f"{environ.get('REQUEST_METHOD', 'GET')} {environ.get('PATH_INFO', '/')}"


def _s3_operation(environ: dict, query: dict[str, list[str]]) -> str:
    """S3 REST (path-style addressing, as boto3 uses against an IP endpoint): method + path -> operation."""
    method = environ.get("REQUEST_METHOD", "GET")
    bucket, _, key = environ.get("PATH_INFO", "/").lstrip("/").partition("/")
    verb = {"GET": "Get", "PUT": "Put", "DELETE": "Delete", "HEAD": "Head", "POST": "Post"}.get(method, method)
    if not bucket:
        return "ListBuckets" if method == "GET" else f"{method} /"
    if not key:
        sub = next((_S3_BUCKET_SUBRESOURCES[name] for name in query if name in _S3_BUCKET_SUBRESOURCES), None)
        if sub:
            return f"{verb}Bucket{sub}"
        if method == "GET":
            if "uploads" in query:
                return "ListMultipartUploads"
            if "versions" in query:
                return "ListObjectVersions"
            return "ListObjectsV2" if query.get("list-type") == ["2"] else "ListObjects"
        if method == "POST" and "delete" in query:
            return "DeleteObjects"
        return {"PUT": "CreateBucket", "HEAD": "HeadBucket", "DELETE": "DeleteBucket"}.get(method, f"{verb}Bucket")
    if "tagging" in query:
        return f"{verb}ObjectTagging"
    if method == "PUT":
        copy = bool(environ.get("HTTP_X_AMZ_COPY_SOURCE"))
        if "uploadId" in query:
            return "UploadPartCopy" if copy else "UploadPart"
        return "CopyObject" if copy else "PutObject"
    if method == "POST":
        return "CreateMultipartUpload" if "uploads" in query else "CompleteMultipartUpload"
    if method == "GET":
        return "ListParts" if "uploadId" in query else "GetObject"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    return f"{verb}Object"


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
