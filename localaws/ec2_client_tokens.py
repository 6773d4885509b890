"""EC2 ``RunInstances`` honours its ``ClientToken`` as AWS does; moto ignores it and launches again.

AWS, "Ensuring idempotency in Amazon EC2 API requests"
(https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html): a retry with the same client
token and the same parameters succeeds without launching anything and returns the original response (only
the instances' state may differ); the same token with any other parameter changed, "other than the Region
or Availability Zone", fails with ``IdempotentParameterMismatch``; a token is kept per Region (the same
request in another Region launches there); and it is valid "for at least 24 hours after the termination of
the instance". Here a token is forgotten 24 virtual hours after localaws first sees all of its instances
terminated, which is at least that.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import parse_qs

from localaws.clock import VirtualClock
from localaws.wsgi import Response, WsgiApp, call_app, new_request_id, read_body, request_account, request_region

log = logging.getLogger(__name__)

TOKEN_TTL_AFTER_TERMINATION = timedelta(hours=24)
# Not compared between a request and its retry: the token itself, the protocol's own fields, and the
# Availability Zone, which the doc excludes.
_NOT_COMPARED = re.compile(r"^(ClientToken|Action|Version|Placement\.AvailabilityZone)$")
_INSTANCE_ID = re.compile(rb"<instanceId>(i-[0-9a-f]+)</instanceId>")


@dataclass
class _Launch:
    parameters: dict[str, list[str]]
    status: int
    body: bytes
    headers: list[tuple[str, str]]
    instance_ids: list[str]
    all_terminated_since: datetime | None = None


@dataclass
class Ec2ClientTokens:
    """The launches made with a client token, per (account, Region, token)."""

    clock: VirtualClock
    _launches: dict[tuple[str, str, str], _Launch] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @staticmethod
    def handles(service: str, operation: str) -> bool:
        return service == "ec2" and operation == "RunInstances"

    def reset(self) -> None:
        with self._lock:
            self._launches.clear()

    def handle(self, environ: dict, moto_app: WsgiApp) -> Response:
        parameters = parse_qs(read_body(environ).decode("utf-8", "replace"), keep_blank_values=True)
        token = (parameters.get("ClientToken") or [""])[0]
        if not token:
            return call_app(moto_app, environ)
        account, region = request_account(environ), request_region(environ)
        compared = {name: values for name, values in parameters.items() if not _NOT_COMPARED.match(name)}
        # One lock for the whole launch, so two tries racing with one token launch once.
        with self._lock:
            key = (account, region, token)
            launch = self._launches.get(key)
            if launch is not None and self._expired(launch, account, region):
                del self._launches[key]
                launch = None
            if launch is not None:
                if launch.parameters != compared:
                    log.info("EC2 RunInstances: token %s reused with other parameters", token)
                    return _mismatch()
                log.info("EC2 RunInstances: token %s already launched %s", token, launch.instance_ids)
                return Response(launch.status, launch.body, list(launch.headers))
            response = call_app(moto_app, environ)
            if response.status == 200:
                ids = [match.decode() for match in _INSTANCE_ID.findall(response.body)]
                self._launches[key] = _Launch(compared, response.status, response.body, response.headers, ids)
            return response

    def _expired(self, launch: _Launch, account: str, region: str) -> bool:
        from moto.ec2.models import ec2_backends

        backend = ec2_backends[account][region]
        live = {instance.id for instance in backend.all_instances() if instance.state != "terminated"}
        if live & set(launch.instance_ids):
            launch.all_terminated_since = None
            return False
        now = self.clock.now()
        if launch.all_terminated_since is None:
            launch.all_terminated_since = now
        return now - launch.all_terminated_since >= TOKEN_TTL_AFTER_TERMINATION


def _mismatch() -> Response:
    message = "Arguments on this idempotent request are inconsistent with arguments used in previous request(s)."
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
        f"<Code>IdempotentParameterMismatch</Code><Message>{message}</Message></Error></Errors>"
        f"<RequestID>{new_request_id()}</RequestID></Response>"
    )
    return Response(400, xml.encode(), [("Content-Type", "text/xml;charset=UTF-8")])
