"""Fault injection: AWS's own failure modes on chosen calls, switched per service and operation.

A rule names a service (the SigV4 credential scope's, e.g. ``snowball``, ``s3``, ``ec2``; ``*`` for all), an
operation (``CreateJob``, ``PutObject``, ``RunInstances``; ``*`` for all), a kind and the share of matching
calls it hits. Each rule draws from its own ``random.Random(seed)``, one draw per matching call, so a test
that makes the same calls in the same order sees the same faults. Kinds:

- ``throttle``: the call is refused unprocessed, in the service's own throttling shape;
- ``error``: the call is refused unprocessed with a 5xx (``status`` 500 or 503);
- ``lost_response``: the call is processed (the change is committed), then its answer is lost: the client
  gets a 5xx (``mode: "error"``) or the connection is dropped (``mode: "drop"``);
- ``latency``: ``seconds`` of delay before the call reaches the service (``phase: "before"``) or after it
  has been processed, holding the committed answer back (``phase: "after"``);
- ``drop``: the connection is closed before the call reaches the service.

Only AWS API calls are subject to faults; the control endpoint (``/_localaws/...``) and the simulated
Snowball device never are. Every API call is counted (``calls``), and so is every fault injected.

Error shapes, each as the service documents it and as botocore parses it:
- AWS JSON protocols (Snowball, SSM, SageMaker, DMS): HTTP 400 ``ThrottlingException``, 500
  ``InternalFailure``, 503 ``ServiceUnavailable`` (the "Common Errors" page of each API reference, e.g.
  https://docs.aws.amazon.com/snowball/latest/api-reference/CommonErrors.html);
- EC2: HTTP 503 ``RequestLimitExceeded``, 500 ``InternalError``, 503 ``Unavailable``
  (https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html,
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html);
- other query protocols (IAM, STS): HTTP 400 ``Throttling``, 500 ``InternalFailure``, 503 ``ServiceUnavailable``;
- S3: HTTP 503 ``SlowDown``, 500 ``InternalError``, 503 ``ServiceUnavailable``
  (https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html).

Which of these a client retries is botocore's decision: in ``legacy`` mode ``botocore/data/_retry.json``
(``throttling_exception``, ``throttling``, EC2's ``request_limit_exceeded``, the 500/502/503/504 policies and
``general_socket_errors``), in ``standard`` mode ``botocore/retries/standard.py`` (throttling codes including
``SlowDown`` and ``RequestLimitExceeded``, transient status codes 500/502/503/504, connection errors), as
https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html describes. A lost response is
therefore retried by every mode, which is what makes a create without a client token run twice.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from localaws.wsgi import Response, json_response, new_request_id, request_operation, request_service, s3_error

log = logging.getLogger(__name__)

KINDS = ("throttle", "error", "lost_response", "latency", "drop")
ERROR_STATUSES = (500, 503)
MAX_LATENCY_SECONDS = 600.0


class FaultRuleError(ValueError):
    """A rule the control endpoint refuses (the message says which field and why)."""


@dataclass
class FaultRule:
    """One switched-on fault; ``matched`` and ``injected`` count what it has seen and done."""

    id: int
    service: str
    operation: str
    kind: str
    rate: float = 1.0
    seed: int = 0
    limit: int | None = None
    status: int = 500
    mode: str = "error"
    seconds: float = 0.0
    phase: str = "after"
    matched: int = 0
    injected: int = 0
    _random: random.Random = field(default_factory=random.Random, repr=False)

    @classmethod
    def from_request(cls, rule_id: int, spec: Any) -> FaultRule:
        if not isinstance(spec, dict):
            raise FaultRuleError("a rule must be a JSON object")
        known = {"service", "operation", "kind", "rate", "seed", "limit", "status", "mode", "seconds", "phase"}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise FaultRuleError(f"unknown rule fields {unknown}; a rule takes {sorted(known)}")
        kind = spec.get("kind")
        if kind not in KINDS:
            raise FaultRuleError(f"kind must be one of {list(KINDS)}, got {kind!r}")
        rule = cls(
            id=rule_id,
            service=_text(spec, "service", "*"),
            operation=_text(spec, "operation", "*"),
            kind=kind,
            rate=_number(spec, "rate", 1.0, 0.0, 1.0),
            seed=int(_number(spec, "seed", 0, -(2**63), 2**63)),
            limit=None if spec.get("limit") is None else int(_number(spec, "limit", 0, 1, 2**31)),
            status=int(_number(spec, "status", 500 if kind != "throttle" else 0, 0, 599)),
            mode=spec.get("mode", "error"),
            seconds=_number(spec, "seconds", 0.0, 0.0, MAX_LATENCY_SECONDS),
            phase=spec.get("phase", "after"),
        )
        if kind in ("error", "lost_response") and rule.status not in ERROR_STATUSES:
            raise FaultRuleError(f"status must be one of {list(ERROR_STATUSES)}, got {rule.status}")
        if rule.mode not in ("error", "drop"):
            raise FaultRuleError(f"mode must be 'error' or 'drop', got {rule.mode!r}")
        if rule.phase not in ("before", "after"):
            raise FaultRuleError(f"phase must be 'before' or 'after', got {rule.phase!r}")
        if kind == "latency" and rule.seconds <= 0:
            raise FaultRuleError("a latency rule needs seconds > 0")
        rule._random = random.Random(rule.seed)
        return rule

    def matches(self, service: str, operation: str) -> bool:
        return self.service in ("*", service) and self.operation in ("*", operation)

    def draw(self) -> bool:
        """Count a matching call and decide (deterministically, from the seed) whether to hit it."""
        self.matched += 1
        hit = self._random.random() < self.rate
        if not hit or (self.limit is not None and self.injected >= self.limit):
            return False
        self.injected += 1
        return True

    def to_dict(self) -> dict:
        view = {
            "id": self.id,
            "service": self.service,
            "operation": self.operation,
            "kind": self.kind,
            "rate": self.rate,
            "seed": self.seed,
            "limit": self.limit,
            "matched": self.matched,
            "injected": self.injected,
        }
        if self.kind in ("error", "lost_response"):
            view["status"] = self.status
        if self.kind == "lost_response":
            view["mode"] = self.mode
        if self.kind == "latency":
            view.update(seconds=self.seconds, phase=self.phase)
        return view


BEFORE_KINDS = ("throttle", "error", "drop")  # the call never reaches the service


class FaultInjector:
    """The rules, their counters, and the WSGI step that applies them around a call to the service."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._next_id = 1
        self._calls: Counter[str] = Counter()
        self._injected: Counter[str] = Counter()
        self._cleared = threading.Event()  # wakes held calls when the rules are cleared

    # The control endpoint

    def add(self, specs: list[Any]) -> list[dict]:
        """Validate and switch on rules (all or none); returns them with their ids."""
        with self._lock:
            rules = [FaultRule.from_request(self._next_id + n, spec) for n, spec in enumerate(specs)]
            self._next_id += len(rules)
            self._rules.extend(rules)
        for rule in rules:
            log.info("Fault on: %s", rule.to_dict())
        return [rule.to_dict() for rule in rules]

    def view(self) -> dict:
        """The rules with their counters, every API call seen (``calls``) and every fault injected."""
        with self._lock:
            return self._view()

    def clear(self) -> dict:
        """Switch every rule off and reset the counters; returns what they had counted."""
        with self._lock:
            final = self._view()
            self._rules.clear()
            self._calls.clear()
            self._injected.clear()
            cleared, self._cleared = self._cleared, threading.Event()
        cleared.set()  # calls held by a latency rule answer now
        return final

    def _view(self) -> dict:
        return {
            "rules": [rule.to_dict() for rule in self._rules],
            "calls": dict(self._calls),
            "injected": dict(self._injected),
        }

    # Requests

    def handle(self, environ: dict, start_response: Callable, serve: Callable[[dict], Response]):
        """Serve one AWS API call through ``serve`` (which processes it), applying whatever the rules say."""
        service = request_service(environ)
        operation = request_operation(environ, service)
        call = f"{service}.{operation}"
        with self._lock:
            self._calls[call] += 1
            if not any(rule.matches(service, operation) for rule in self._rules):
                rules = None
            else:
                rules = self._decide(service, operation, before=True)
            cleared = self._cleared
        if rules is None:
            return serve(environ)(environ, start_response)
        delay = sum(rule.seconds for rule in rules if rule.kind == "latency")
        if delay:
            cleared.wait(delay)
        refusal = next((rule for rule in rules if rule.kind in BEFORE_KINDS), None)
        if refusal is not None:
            log.info("Fault: %s refused (%s)", call, refusal.kind)
            if refusal.kind == "drop":
                _drop_connection(environ)
            if refusal.kind == "throttle":
                return _throttled(environ, service)(environ, start_response)
            return server_error(refusal.status, environ, service)(environ, start_response)
        response = serve(environ)
        # Decided and counted once the call has been processed: a test that sees the count knows it committed.
        with self._lock:
            rules = self._decide(service, operation, before=False)
        delay = sum(rule.seconds for rule in rules if rule.kind == "latency")
        if delay:
            cleared.wait(delay)
        lost = next((rule for rule in rules if rule.kind == "lost_response"), None)
        if lost is None:
            return response(environ, start_response)
        log.info("Fault: %s processed (%s), its answer lost (%s)", call, response.status, lost.mode)
        if lost.mode == "drop":
            _drop_connection(environ)
        return server_error(lost.status, environ, service)(environ, start_response)

    def _decide(self, service: str, operation: str, before: bool) -> list[FaultRule]:
        """The rules of one phase that hit this call; each matching rule draws once (caller holds the lock)."""
        hits: list[FaultRule] = []
        for rule in self._rules:
            phase_before = rule.kind in BEFORE_KINDS or (rule.kind == "latency" and rule.phase == "before")
            if phase_before != before or not rule.matches(service, operation):
                continue
            if rule.kind in BEFORE_KINDS and any(hit.kind in BEFORE_KINDS for hit in hits):
                continue  # already refused: drawing again would only skew this rule's counts
            if rule.kind == "lost_response" and any(hit.kind == "lost_response" for hit in hits):
                continue
            if rule.draw():
                hits.append(rule)
                self._injected[f"{service}.{operation}.{rule.kind}"] += 1
        return hits


def _protocol(environ: dict, service: str) -> str:
    if service == "s3":
        return "s3"
    if service == "ec2":
        return "ec2"
    if environ.get("HTTP_X_AMZ_TARGET"):
        return "json"
    if "Action=" in environ.get("QUERY_STRING", "") or environ.get("CONTENT_TYPE", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        return "query"
    return "rest-json"


def _throttled(environ: dict, service: str) -> Response:
    protocol = _protocol(environ, service)
    if protocol == "s3":
        return s3_error(503, "SlowDown", "Please reduce your request rate.")
    if protocol == "ec2":
        return _ec2_error(503, "RequestLimitExceeded", "Request limit exceeded.")
    if protocol == "query":
        return _query_error(400, "Throttling", "Rate exceeded", "Sender")
    if protocol == "rest-json":
        return _rest_json_error(429, "ThrottlingException", "Rate exceeded")
    return _json_error(environ, 400, "ThrottlingException", "Rate exceeded")


def server_error(status: int, environ: dict, service: str) -> Response:
    protocol = _protocol(environ, service)
    unavailable = status == 503
    if protocol == "s3":
        if unavailable:
            return s3_error(503, "ServiceUnavailable", "Please reduce your request rate.")
        return s3_error(500, "InternalError", "We encountered an internal error. Please try again.")
    if protocol == "ec2":
        if unavailable:
            return _ec2_error(503, "Unavailable", "The server is overloaded and can't handle the request.")
        return _ec2_error(500, "InternalError", "An internal error has occurred.")
    code, message = (
        ("ServiceUnavailable", "The request has failed due to a temporary failure of the server.")
        if unavailable
        else ("InternalFailure", "The request processing has failed because of an unknown error.")
    )
    if protocol == "query":
        return _query_error(status, code, message, "Receiver")
    if protocol == "rest-json":
        return _rest_json_error(status, code, message)
    return _json_error(environ, status, code, message)


def _json_error(environ: dict, status: int, code: str, message: str) -> Response:
    content_type = environ.get("CONTENT_TYPE") or "application/x-amz-json-1.1"
    response = json_response({"__type": code, "message": message}, status, content_type)
    response.headers.append(("x-amzn-RequestId", new_request_id()))
    return response


def _rest_json_error(status: int, code: str, message: str) -> Response:
    response = json_response({"message": message}, status)
    response.headers += [("x-amzn-ErrorType", code), ("x-amzn-RequestId", new_request_id())]
    return response


def _ec2_error(status: int, code: str, message: str) -> Response:
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
        f"<Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        f"<RequestID>{new_request_id()}</RequestID></Response>"
    )
    return Response(status, xml.encode(), [("Content-Type", "text/xml;charset=UTF-8")])


def _query_error(status: int, code: str, message: str, fault_type: str) -> Response:
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse><Error>'
        f"<Type>{fault_type}</Type><Code>{code}</Code><Message>{message}</Message></Error>"
        f"<RequestId>{new_request_id()}</RequestId></ErrorResponse>"
    )
    return Response(status, xml.encode(), [("Content-Type", "text/xml")])


def _drop_connection(environ: dict) -> None:
    """Close the client's connection with no answer; werkzeug treats the raised error as a dropped client."""
    connection = environ.get("werkzeug.socket")
    if connection is not None:
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_RDWR)
    raise ConnectionAbortedError("localaws fault: connection dropped")


def _text(spec: dict, name: str, default: str) -> str:
    value = spec.get(name, default)
    if not isinstance(value, str) or not value:
        raise FaultRuleError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _number(spec: dict, name: str, default: float, low: float, high: float) -> float:
    value = spec.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FaultRuleError(f"{name} must be a number, got {value!r}")
    if not low <= value <= high:
        raise FaultRuleError(f"{name} must be between {low} and {high}, got {value!r}")
    return value
