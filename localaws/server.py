"""The localaws server: moto's server behind a small WSGI router, on one port, many threads.

Routing, in order:
- ``/_localaws/...`` (but the two below): the control endpoint (health, virtual clock, timing profile,
  fault rules, state snapshots); never faulted, never held by a snapshot;
- ``/_localaws/snowball-device/{JobId}/...``: S3 on a simulated Snowball device;
- ``/_localaws/snowball/manifest/{JobId}``: manifests handed out by ``GetJobManifest``;
- every other request is an AWS API call: it goes through the fault rules (:mod:`localaws.faults`), then:
- ``X-Amz-Target: AWSIESnowballJobManagementService.*``: the Snowball job API (moto has none);
- ``X-Amz-Target: AmazonDMSv20160101.*``: moto's DMS, with statuses moving on the virtual clock;
- ``X-Amz-Target: SageMaker.<cluster operation>``: moto's HyperPod clusters, created and deleted on the clock;
- ``X-Amz-Target: AmazonSSM.<Run Command operation>``: moto's SSM commands, run on the clock;
- EC2 ``RunInstances``, ``TerminateInstances``, ``StopInstances``, ``GetConsoleOutput``: instances whose user
  data runs on a node (:mod:`localaws.ec2_instances`), ``RunInstances`` with a ``ClientToken`` launched once
  per token (:mod:`localaws.ec2_client_tokens`);
- EC2 placement groups, which moto lacks (:mod:`localaws.ec2_placement_groups`);
- SSM: the public Deep Learning AMI parameters are put into moto's store first
  (:mod:`localaws.ssm_public_parameters`);
- S3 ``PutObject`` with ``If-None-Match``/``If-Match``: one at a time per key (:mod:`localaws.s3_conditional`);
- everything else: straight to moto.

Every request but the control endpoint's is processed inside the request gate, so a state snapshot
(:mod:`localaws.persistence`) never sees one half-done.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

from localaws import dms, persistence
from localaws.clock import VirtualClock
from localaws.ec2_capacity_reservations import Ec2CapacityReservations
from localaws.ec2_client_tokens import Ec2ClientTokens
from localaws.ec2_instances import Ec2Instances
from localaws.ec2_placement_groups import Ec2PlacementGroups
from localaws.faults import FaultInjector, FaultRuleError, server_error
from localaws.node_runtime import NodeRuntime
from localaws.s3_conditional import ConditionalWrites
from localaws.sagemaker_hyperpod import HyperPodLifecycle
from localaws.snowball import responses as snowball_responses
from localaws.snowball.device import DEVICE_PREFIX, SnowballDevice
from localaws.snowball.models import SnowballBackend
from localaws.ssm import SsmCommandLifecycle
from localaws.ssm_public_parameters import ensure_public_parameters, forget
from localaws.timing import TimingProfile, get_profile
from localaws.wsgi import (
    Response,
    call_app,
    json_response,
    read_body,
    request_account,
    request_operation,
    request_region,
    request_service,
)

log = logging.getLogger(__name__)

CONTROL_PREFIX = "/_localaws/"
# The simulations whose state a snapshot keeps, beside moto's backends (attributes of LocalAWSApp).
STATEFUL = (
    "snowball",
    "dms",
    "hyperpod",
    "ssm",
    "ec2_client_tokens",
    "ec2_placement_groups",
    "ec2_instances",
    "ec2_capacity_reservations",
)
# POST /_localaws/ec2/instances/<id>/shutdown (the node's OS) and .../interrupt (AWS ends it).
_EC2_INSTANCE_CONTROL = re.compile(r"^/_localaws/ec2/instances/(i-[0-9a-f]+)/(shutdown|interrupt)$")
# A node's instance metadata service (localaws.ec2_instances).
_IMDS = re.compile(r"^/_localaws/imds/(i-[0-9a-f]+)/(.*)$")


class LocalAWSApp:
    """The WSGI app: the control endpoint, the fault rules, the Snowball, DMS, HyperPod, SSM and EC2
    simulations, then moto."""

    def __init__(self, clock: VirtualClock, profile: TimingProfile, state_file: str | None = None):
        self.clock = clock
        self.profile = profile
        self.state_file = state_file
        self.moto = DomainDispatcherApplication(create_backend_app)
        self.faults = FaultInjector()
        self.gate = persistence.RequestGate()
        self.snowball = SnowballBackend(clock, profile.snowball)
        self.dms = dms.DmsLifecycle(clock, profile.dms)
        self.hyperpod = HyperPodLifecycle(clock, profile.hyperpod)
        self.ssm = SsmCommandLifecycle(clock, profile.ssm)
        self.ec2_client_tokens = Ec2ClientTokens(clock)
        self.ec2_placement_groups = Ec2PlacementGroups(clock)
        self.ec2_instances = Ec2Instances()
        self.ec2_capacity_reservations = Ec2CapacityReservations(clock)
        self.s3_conditional = ConditionalWrites()
        # The local processes that stand in for instances' scripts; told the endpoint once it is bound.
        self.nodes = NodeRuntime()
        self.clock_changes = 0  # moves of the clock through the control endpoint
        self._wire()

    def _wire(self) -> None:
        self.snowball_api = snowball_responses.SnowballResponses(self.snowball)
        self.snowball_device = SnowballDevice(self.snowball, self.moto)
        self.hyperpod.attach(self.nodes)  # HyperPod nodes run their lifecycle scripts here

    # State

    def state(self) -> dict:
        """The simulations a snapshot keeps (see :mod:`localaws.persistence`)."""
        return {name: getattr(self, name) for name in STATEFUL}

    def adopt(self, state: dict) -> None:
        """Take over restored simulations (before serving)."""
        for name in STATEFUL:
            if name in state:
                setattr(self, name, state[name])
        self._wire()
        self.dms.resume_replications()  # the replication threads were not saved: they start again

    def activity(self) -> tuple[int, int]:
        """Changes so far (requests admitted, clock moves): equal twice, the state has not changed between."""
        return self.gate.admitted, self.clock_changes

    def save_state(self) -> int:
        if not self.state_file:
            raise RuntimeError("localaws runs without --state-file: there is nowhere to save its state")
        return persistence.save_state(self.state_file, self.gate, self.clock, self.profile, self.state())

    # Requests

    def __call__(self, environ: dict, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith(DEVICE_PREFIX) or path.startswith(snowball_responses.MANIFEST_PATH):
            return self._serve(environ)(environ, start_response)
        if path.startswith(CONTROL_PREFIX):
            return self._control(environ, path)(environ, start_response)
        return self.faults.handle(environ, start_response, self._serve)

    def _serve(self, environ: dict) -> Response:
        """Process one request to the end, inside the gate, and return its buffered answer."""
        with self.gate.shared():
            try:
                return call_app(self._route(environ), environ)
            except Exception:
                log.exception(
                    "localaws failed on %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
                )
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
        operation = request_operation(environ, service)
        if self.ec2_instances.handles(service, operation):
            return self.ec2_instances.handle(
                environ,
                operation,
                self.moto,
                nodes=self.nodes,
                tokens=self.ec2_client_tokens,
                placement_groups=self.ec2_placement_groups,
                capacity_reservations=self.ec2_capacity_reservations,
            )
        for simulation in (self.ec2_placement_groups, self.ec2_capacity_reservations):
            if simulation.handles(service, operation):
                params = parse_qs(read_body(environ).decode("utf-8", "replace"), keep_blank_values=True)
                return simulation.handle(operation, params, request_account(environ), request_region(environ))
        if service == "ssm":
            ensure_public_parameters(request_account(environ), request_region(environ))
        if self.s3_conditional.handles(service, operation, environ):
            return self.s3_conditional.handle(environ, self.moto)
        if path == "/moto-api/reset" and environ.get("REQUEST_METHOD") == "POST":
            # moto forgets everything; so do the simulations that live beside it.
            for name in STATEFUL:
                getattr(self, name).reset()
            forget()
            self.nodes.stop_all()  # the instances they stood in for are gone
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
        if path == "/_localaws/state" and method == "POST":
            return self._save_state()
        match = _EC2_INSTANCE_CONTROL.match(path)
        if match and method == "POST":
            return self._ec2_instance_control(match.group(1), match.group(2), read_body(environ))
        if path == "/_localaws/ec2/capacity-blocks" and method == "POST":
            return self._add_capacity_block(read_body(environ))
        match = _IMDS.match(path)
        if match:
            try:
                status, text = self.ec2_instances.metadata(match.group(1), method, match.group(2))
            except KeyError:
                status, text = 404, ""
            return Response(status, text.encode(), [("Content-Type", "text/plain")])
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

    def _ec2_instance_control(self, instance_id: str, action: str, body: bytes) -> Response:
        """``shutdown``: the node's OS shut down. ``interrupt`` with ``{"code": "Server....", "state":
        "terminated"|"stopped"}`` (state optional): AWS ends the instance itself."""
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return json_response({"error": "the body must be a JSON object"}, 400)
        if not isinstance(request, dict):
            return json_response({"error": "the body must be a JSON object"}, 400)
        with self.gate.shared():  # moto's state changes, as in an API call
            try:
                if action == "shutdown":
                    return json_response(self.ec2_instances.os_shutdown(instance_id, self.nodes))
                return json_response(
                    self.ec2_instances.interrupt(instance_id, request.get("code"), request.get("state"), self.nodes)
                )
            except KeyError as error:
                return json_response({"error": str(error.args[0])}, 404)
            except ValueError as error:
                return json_response({"error": str(error)}, 400)

    def _add_capacity_block(self, body: bytes) -> Response:
        """POST /_localaws/ec2/capacity-blocks ``{"instance_type", "availability_zone", "instance_count",
        "starts_in_seconds" (0), "duration_hours" (24), "region" (the zone's), "account" (moto's)}``: a
        Capacity Block as if bought, on the virtual clock."""
        try:
            request = json.loads(body or b"{}")
            start = self.clock.now() + timedelta(seconds=float(request.get("starts_in_seconds", 0)))
            end = start + timedelta(hours=float(request.get("duration_hours", 24)))
            zone = request["availability_zone"]
            with self.gate.shared():
                answer = self.ec2_capacity_reservations.add_capacity_block(
                    str(request.get("account", "123456789012")),
                    request.get("region", zone[:-1]),
                    request["instance_type"],
                    zone,
                    int(request.get("instance_count", 1)),
                    start,
                    end,
                )
        except (ValueError, KeyError, TypeError) as error:
            return json_response({"error": f"bad capacity block request: {error!r}"}, 400)
        return json_response(answer)

    def _save_state(self) -> Response:
        """POST /_localaws/state: snapshot now (the server must run with ``--state-file``)."""
        if not self.state_file:
            return json_response({"error": "localaws runs without --state-file"}, 409)
        size = self.save_state()
        return json_response({"state_file": str(self.state_file), "bytes": size, "clock": self.clock.snapshot()})

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
        self.clock_changes += 1
        log.info("Virtual clock now %s", self.clock.snapshot())
        return json_response(self.clock.snapshot())


class _RequestHandler(MotoRequestHandler):
    """moto's request handler, logging through :mod:`logging` instead of printing every request."""

    def log(self, type: str, message: str, *args) -> None:  # noqa: A002 - werkzeug's signature
        level = logging.DEBUG if type == "info" else logging.WARNING
        log.log(level, "%s " + message, self.address_string(), *args)


class LocalAWS:
    """
    A local AWS endpoint on ``host:port`` (``port=0`` picks a free port), served by a background thread.

    With ``state_file``, the AWS state is restored from that file on start (when it exists), saved to it
    every ``state_interval`` seconds in which requests came in (0: never), and saved on stop.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        clock_speed: float = 1.0,
        timing: str = "realistic",
        state_file: str | Path | None = None,
        state_interval: float = 10.0,
    ):
        self.host = host
        self.port = port
        self.clock = VirtualClock(speed=clock_speed)
        self.profile = get_profile(timing)
        self.state_file = Path(state_file) if state_file else None
        self.state_interval = state_interval
        self.app: LocalAWSApp | None = None
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._saver: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalAWS:
        """Restore the state file if there is one, bind the port and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("localaws is already running")
        restored = None
        if self.state_file and self.state_file.exists():
            self.clock = persistence.read_clock(self.state_file)  # raises StateFileError on a foreign file
        self.app = LocalAWSApp(self.clock, self.profile, self.state_file)
        if self.state_file and self.state_file.exists():
            restored = persistence.load_state(self.state_file, self.clock, self.profile)
            self.app.adopt(restored)
        # threaded=True: one thread per connection, so pipeline tasks, sensors and tests can call at once.
        self._server = make_server(
            self.host, self.port, self.app, threaded=True, request_handler=_RequestHandler
        )
        self.port = self._server.server_port
        self.app.nodes.endpoint_url = self.endpoint_url
        if restored is not None:
            self.app.hyperpod.resume_nodes()  # the nodes' processes were not saved: their scripts run again
        self._thread = threading.Thread(target=self._server.serve_forever, name="localaws", daemon=True)
        self._thread.start()
        if self.state_file and self.state_interval > 0:
            self._stopping.clear()
            self._saver = threading.Thread(target=self._save_periodically, name="localaws-state", daemon=True)
            self._saver.start()
        log.info(
            "localaws serving on %s (timing %s, clock %s at speed %s%s)",
            self.endpoint_url,
            self.profile.name,
            self.clock.now().isoformat(),
            self.clock.speed,
            f", state restored from {self.state_file}" if restored is not None else "",
        )
        return self

    def stop(self) -> None:
        """Stop serving, save the state (with a state file) and release the port."""
        if self._server is None:
            return
        if self.app is not None:
            self.app.dms.shutdown()  # end the replication threads before the port goes
            self.app.hyperpod.shutdown()  # HyperPod nodes and their Slurm jobs (sessions of their own)
            self.app.nodes.stop_all()  # and the nodes' scripts, which would talk to it
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._stopping.set()
        if self._saver is not None:
            self._saver.join()
        if self.state_file and self.app is not None:
            self.app.save_state()
        self._server = self._thread = self._saver = None

    def _save_periodically(self) -> None:
        saved_after = None
        while not self._stopping.wait(self.state_interval):
            activity = self.app.activity()
            if activity == saved_after:
                continue  # nothing came in: the file already holds this state
            try:
                self.app.save_state()
                saved_after = activity
            except Exception:
                log.exception("localaws could not save its state to %s", self.state_file)

    def __enter__(self) -> LocalAWS:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
