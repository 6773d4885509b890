"""The localaws server: moto's server behind a small WSGI router, on one port, many threads.

Routing, in order:
- ``/_localaws/...`` (but the two below): the control endpoint (health, virtual clock, timing profile,
  fault rules); never faulted;
- ``/_localaws/snowball-device/{JobId}/...``: S3 on a simulated Snowball device;
- ``/_localaws/snowball/manifest/{JobId}``: manifests handed out by ``GetJobManifest``;
- every other request is an AWS API call: it goes through the fault rules (:mod:`localaws.faults`), then:
- ``X-Amz-Target: AWSIESnowballJobManagementService.*``: the Snowball job API (moto has none);
- ``X-Amz-Target: AmazonDMSv20160101.*``: moto's DMS, with statuses moving on the virtual clock;
- ``X-Amz-Target: SageMaker.<cluster operation>``: moto's HyperPod clusters, created and deleted on the clock;
- ``X-Amz-Target: AmazonSSM.<Run Command operation>``: moto's SSM commands, run on the clock;
- EC2 ``RunInstances`` with a ``ClientToken``: launched once per token (:mod:`localaws.ec2_client_tokens`);
- everything else: straight to moto.
"""

from __future__ import annotations

import json
import logging
import math
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

from localaws import dms
from localaws.clock import VirtualClock
from localaws.ec2_client_tokens import Ec2ClientTokens
from localaws.faults import FaultInjector, FaultRuleError, server_error
from localaws.sagemaker_hyperpod import HyperPodLifecycle
from localaws.snowball import responses as snowball_responses
from localaws.snowball.device import DEVICE_PREFIX, SnowballDevice
from localaws.snowball.models import SnowballBackend
from localaws.ssm import SsmCommandLifecycle
from localaws.timing import TimingProfile, get_profile
from localaws.wsgi import Response, call_app, json_response, read_body, request_operation, request_service

log = logging.getLogger(__name__)

CONTROL_PREFIX = "/_localaws/"
# The simulations beside moto's backends (attributes of LocalAWSApp).
STATEFUL = ("snowball", "dms", "hyperpod", "ssm", "ec2_client_tokens")


class LocalAWSApp:
    """The WSGI app: the control endpoint, the fault rules, the Snowball, DMS, HyperPod, SSM and EC2
    simulations, then moto."""

    def __init__(self, clock: VirtualClock, profile: TimingProfile):
        self.clock = clock
        self.profile = profile
        self.moto = DomainDispatcherApplication(create_backend_app)
        self.faults = FaultInjector()
        self.snowball = SnowballBackend(clock, profile.snowball)
        self.dms = dms.DmsLifecycle(clock, profile.dms)
        self.hyperpod = HyperPodLifecycle(clock, profile.hyperpod)
        self.ssm = SsmCommandLifecycle(clock, profile.ssm)
        self.ec2_client_tokens = Ec2ClientTokens(clock)
        self.snowball_api = snowball_responses.SnowballResponses(self.snowball)
        self.snowball_device = SnowballDevice(self.snowball, self.moto)

    # Requests

    def __call__(self, environ: dict, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith(DEVICE_PREFIX) or path.startswith(snowball_responses.MANIFEST_PATH):
            return self._serve(environ)(environ, start_response)
        if path.startswith(CONTROL_PREFIX):
            return self._control(environ, path)(environ, start_response)
        return self.faults.handle(environ, start_response, self._serve)

    def _serve(self, environ: dict) -> Response:
        """Process one request to the end and return its buffered answer."""
        try:
            return call_app(self._route(environ), environ)
        except Exception:
            log.exception("localaws failed on %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            # In the shape of the caller's protocol, so that its client reads a 500, not a parse error.
            return server_error(500, environ, request_service(environ))

    def _route(self, environ: dict):
        path = environ.get("PATH_INFO", "")
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        # Any request may be the first to see a Snowball job reach Complete: import before answering it.
        self.snowball.tick()
        if path.startswith(DEVICE_PREFIX):
            return self.snowball_device.handle(environ)
        if path.startswith(snowball_responses.MANIFEST_PATH):
            return snowball_responses.manifest_response(self.snowball, environ)
        if target.startswith(snowball_responses.TARGET_PREFIX):
            return self.snowball_api.handle(environ)
        if target.startswith(dms.TARGET_PREFIX):
            return self.dms.handle(environ, self.moto)
        if self.hyperpod.handles(target):
            return self.hyperpod.handle(environ, self.moto)
        if self.ssm.handles(target):
            return self.ssm.handle(environ, self.moto)
        service = request_service(environ)
        if self.ec2_client_tokens.handles(service, request_operation(environ, service)):
            return self.ec2_client_tokens.handle(environ, self.moto)
        if path == "/moto-api/reset" and environ.get("REQUEST_METHOD") == "POST":
            # moto forgets everything; so do the simulations that live beside it.
            for name in STATEFUL:
                getattr(self, name).reset()
        return self.moto

    def _control(self, environ: dict, path: str) -> Response:
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/_localaws/health" and method == "GET":
            return json_response({"status": "ok"})
        if path == "/_localaws/clock" and method == "GET":
            return json_response(self.clock.snapshot())
        if path == "/_localaws/clock" and method == "POST":
            return self._set_clock(read_body(environ))
        if path == "/_localaws/timing" and method == "GET":
            return json_response(self.profile.to_dict())
        if path == "/_localaws/faults":
            return self._faults(method, environ)
        return json_response({"error": f"no control endpoint {method} {path}"}, 404)

    def _faults(self, method: str, environ: dict) -> Response:
        """GET: rules and counters; POST ``{"rules": [...]}`` (or one rule): switch on; DELETE: all off."""
        if method == "GET":
            return json_response(self.faults.view())
        if method == "DELETE":
            return json_response(self.faults.clear())
        if method != "POST":
            return json_response({"error": f"no control endpoint {method} /_localaws/faults"}, 404)
        try:
            request = json.loads(read_body(environ) or b"{}")
        except ValueError:
            return json_response({"error": "the body must be a JSON object"}, 400)
        specs = request.get("rules", [request]) if isinstance(request, dict) else None
        if not isinstance(specs, list) or not specs:
            return json_response({"error": 'give a rule, or {"rules": [rule, ...]}'}, 400)
        try:
            return json_response({"rules": self.faults.add(specs)})
        except FaultRuleError as error:
            return json_response({"error": str(error)}, 400)

    def _set_clock(self, body: bytes) -> Response:
        """POST /_localaws/clock with ``{"advance_seconds": n}`` and/or ``{"speed": x}``."""
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return json_response({"error": "the body must be a JSON object"}, 400)
        if not isinstance(request, dict) or not {"advance_seconds", "speed"} & request.keys():
            return json_response({"error": "give advance_seconds and/or speed"}, 400)
        for name in ("advance_seconds", "speed"):
            value = request.get(name, 0)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                return json_response({"error": f"{name} must be a number >= 0, got {value!r}"}, 400)
        if "speed" in request:
            self.clock.set_speed(request["speed"])
        if "advance_seconds" in request:
            self.clock.advance(request["advance_seconds"])
        log.info("Virtual clock now %s", self.clock.snapshot())
        return json_response(self.clock.snapshot())


class _RequestHandler(MotoRequestHandler):
    """moto's request handler, logging through :mod:`logging` instead of printing every request."""

    def log(self, type: str, message: str, *args) -> None:  # noqa: A002 - werkzeug's signature
        level = logging.DEBUG if type == "info" else logging.WARNING
        log.log(level, "%s " + message, self.address_string(), *args)


class LocalAWS:
    """A local AWS endpoint on ``host:port`` (``port=0`` picks a free port), served by a background thread."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, clock_speed: float = 1.0, timing: str = "realistic"
    ):
        self.host = host
        self.port = port
        self.clock = VirtualClock(speed=clock_speed)
        self.profile = get_profile(timing)
        self.app: LocalAWSApp | None = None
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalAWS:
        """Bind the port and serve in a daemon thread; returns self once requests are accepted."""
        if self._server is not None:
            raise RuntimeError("localaws is already running")
        self.app = LocalAWSApp(self.clock, self.profile)
        # threaded=True: one thread per connection, so pipeline tasks, sensors and tests can call at once.
        self._server = make_server(
            self.host, self.port, self.app, threaded=True, request_handler=_RequestHandler
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="localaws", daemon=True)
        self._thread.start()
        log.info(
            "localaws serving on %s (timing %s, clock speed %s)",
            self.endpoint_url,
            self.profile.name,
            self.clock.speed,
        )
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> LocalAWS:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
