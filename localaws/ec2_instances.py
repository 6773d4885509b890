"""EC2 instances that run their user data, shut themselves down, and can be ended by "AWS".

moto keeps an instance's user data but runs nothing, and an instance only changes state through the API.
Here, on top of moto's instances:

- **User data runs.** An instance whose user data is a shell script (decoded text starting with ``#!``) runs
  it as a local process (:mod:`localaws.node_runtime`) once, at launch, as EC2 with cloud-init does: "User
  data shell scripts must start with the ``#!`` characters" and run "only during the first boot cycle when
  an instance is launched" (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/user-data.html; cloud-init
  runs a part starting ``#!`` as a script, https://cloudinit.readthedocs.io/en/latest/explanation/format.html).
  Any other user data (``#cloud-config``, none, bytes) is kept and nothing runs, as moto does. The script's
  output is the instance's console: ``GetConsoleOutput`` answers its last 64 KB, base64, as AWS keeps "the
  most recent 64 KB" (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_GetConsoleOutput.html).
- **The OS's shutdown.** On the node, ``shutdown`` (also ``poweroff``, ``halt``) is a shim that tells
  localaws (``POST /_localaws/ec2/instances/<id>/shutdown``, the node's endpoint being localaws) and waits to
  be stopped with everything else on the node. The instance then goes ``terminated`` if it was launched with
  ``InstanceInitiatedShutdownBehavior=terminate``, else ``stopped``, with ``StateReason``
  ``Client.InstanceInitiatedShutdown`` (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/Using_ChangingInstanceInitiatedShutdownBehavior.html,
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_StateReason.html). Termination protection does
  not stop it: ``DisableApiTermination`` "does not prevent you from terminating an instance by initiating
  shutdown from the instance" (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/terminating-instances.html).
  A script that ends without shutting down leaves its instance ``running``, as on AWS.
- **The API ends the node.** ``TerminateInstances`` and ``StopInstances`` stop the node's processes. A
  terminated instance terminated again keeps its ``StateReason`` (moto would overwrite it).
- **AWS ends an instance itself** (``POST /_localaws/ec2/instances/<id>/interrupt`` with a ``Server.*``
  reason code): it goes ``terminated`` (or ``stopped``) with that ``StateReason``, and its node stops, as
  when capacity is reclaimed or hardware fails.
- ``RunInstances`` is checked where moto does not: user data at most 16 KB before base64;
  ``Placement.GroupName`` must name a placement group (:mod:`localaws.ec2_placement_groups`); an ``efa``
  interface needs an instance type that supports EFA (DescribeInstanceTypes ``NetworkInfo.EfaSupported``,
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa.html)
  and no more EFAs than its ``MaximumEfaInterfaces``; network interfaces exclude instance-level security
  groups as they exclude an instance-level subnet (RunInstances, ``NetworkInterfaces``); a Capacity Block
  launch (``InstanceMarketOptions.MarketType=capacity-block``) needs the Capacity Block's reservation ID
  in ``CapacityReservationSpecification.CapacityReservationTarget``
  (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/capacity-blocks-launch.html), and its instances'
  ``InstanceLifecycle`` is ``capacity-block`` (moto says ``spot`` for any market type). Every instance of
  a launch gets its ``IamInstanceProfile`` (moto gives it to the first one only). A launch into a capacity
  reservation is checked by :mod:`localaws.ec2_capacity_reservations`.

The node's instance metadata (``AWS_EC2_METADATA_SERVICE_ENDPOINT``, the SDKs' setting for another IMDS
endpoint) is ``/_localaws/imds/<id>/``: a token, then ``instance-id``, ``ami-launch-index`` and a few more.

Not emulated: ``pending`` and
``shutting-down`` lasting any time, a reboot from the OS (the shim refuses ``shutdown -r``).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from localaws.ec2_capacity_reservations import Ec2CapacityReservations
from localaws.ec2_client_tokens import Ec2ClientTokens
from localaws.ec2_placement_groups import Ec2Error, Ec2PlacementGroups, ec2_error, indexed
from localaws.node_runtime import NodeRuntime
from localaws.wsgi import Response, WsgiApp, call_app, read_body, request_account, request_region

log = logging.getLogger(__name__)

OPERATIONS = frozenset({"RunInstances", "TerminateInstances", "StopInstances", "GetConsoleOutput"})
CONSOLE_OUTPUT_BYTES = 64 * 1024
# "User data is limited to 16 KB, in raw form, before it is base64-encoded" (the user-data page above).
MAX_USER_DATA_BYTES = 16 * 1024
_INSTANCE_ID = re.compile(rb"<instanceId>(i-[0-9a-f]+)</instanceId>")
_OUTPUT = re.compile(rb"<output>[^<]*</output>")

INSTANCE_INITIATED_SHUTDOWN = ("Client.InstanceInitiatedShutdown", "Instance initiated shutdown")
# The Server.* codes of https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_StateReason.html, with
# the short message AWS pairs them with, and the state each leaves the instance in.
SERVER_REASONS = {
    "Server.InsufficientInstanceCapacity": ("Insufficient capacity to satisfy launch request", "terminated"),
    "Server.InternalError": ("Internal error on launch", "terminated"),
    "Server.ScheduledStop": ("Stopped due to scheduled retirement", "stopped"),
    "Server.SpotInstanceShutdown": ("Spot instance shutdown", "stopped"),
    "Server.SpotInstanceTermination": ("Spot instance termination", "terminated"),
}

# On the node: the OS's shutdown. It tells localaws, then waits: the node is stopped as a halting OS would
# stop it. ``shutdown -c`` (cancel) has nothing to cancel; a reboot is not emulated.
SHUTDOWN_SHIM = """#!/bin/sh
for argument in "$@"; do
  case "$argument" in
    -c) exit 0 ;;
    -r|--reboot) echo "localaws: a reboot from the OS is not emulated" >&2; exit 1 ;;
  esac
done
echo "localaws: $(basename "$0") $*: the instance shuts down"
python3 - <<'PY' || exit 1
import os, urllib.request
url = f"{os.environ['AWS_ENDPOINT_URL']}/_localaws/ec2/instances/{os.environ['LOCALAWS_NODE_ID']}/shutdown"
urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=30).read()
PY
sleep 3600
"""
SHIMS = {"shutdown": SHUTDOWN_SHIM, "poweroff": SHUTDOWN_SHIM, "halt": SHUTDOWN_SHIM}


@dataclass
class Ec2Instances:
    """Which instances run a node, and in which (account, Region) each lives."""

    _where: dict[str, tuple[str, str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @staticmethod
    def handles(service: str, operation: str) -> bool:
        return service == "ec2" and operation in OPERATIONS

    def reset(self) -> None:
        with self._lock:
            self._where.clear()

    def handle(
        self,
        environ: dict,
        operation: str,
        moto_app: WsgiApp,
        *,
        nodes: NodeRuntime,
        tokens: Ec2ClientTokens,
        placement_groups: Ec2PlacementGroups,
        capacity_reservations: Ec2CapacityReservations,
    ) -> Response:
        params = parse_qs(read_body(environ).decode("utf-8", "replace"), keep_blank_values=True)
        account, region = request_account(environ), request_region(environ)
        if operation == "RunInstances":
            return self._run(
                environ, params, account, region, moto_app, nodes, tokens, placement_groups, capacity_reservations
            )
        ended = self._already_terminated(account, region, indexed(params, "InstanceId"))
        response = call_app(moto_app, environ)
        if response.status != 200:
            return response
        for instance, reason in ended:
            # Terminating again changes nothing: "if you terminate an instance more than once, each call
            # succeeds" (TerminateInstances), and its StateReason stays the one that ended it. moto resets it.
            instance.state_reason, instance._reason = reason
        if operation == "GetConsoleOutput":
            return self._console_output(response, (params.get("InstanceId") or [""])[0], nodes)
        for instance_id in indexed(params, "InstanceId"):
            # In the background: the caller may be the node itself, ending its own instance.
            threading.Thread(target=nodes.stop, args=(instance_id,), daemon=True).start()
        return response

    @staticmethod
    def _already_terminated(account: str, region: str, instance_ids: list[str]) -> list[tuple]:
        from moto.ec2.models import ec2_backends

        backend = ec2_backends[account][region]
        ended = []
        for instance_id in instance_ids:
            try:
                instance = backend.get_instance(instance_id)
            except Exception:  # moto answers the unknown ID itself
                continue
            if instance.state == "terminated":
                ended.append((instance, (instance.state_reason, instance._reason)))
        return ended

    # RunInstances

    def _run(
        self, environ, params, account, region, moto_app, nodes, tokens, placement_groups, capacity_reservations
    ) -> Response:
        try:
            group = self._check_run(params, account, region, placement_groups)
            reservation = capacity_reservations.check_run(
                params, account, region, _launch_zone(params, account, region)
            )
        except Ec2Error as error:
            log.info("EC2 RunInstances refused: %s", error)
            return ec2_error(error.code, error.message)
        if tokens.handles("ec2", "RunInstances") and (params.get("ClientToken") or [""])[0]:
            response = tokens.handle(environ, moto_app)
        else:
            response = call_app(moto_app, environ)
        if response.status != 200:
            return response
        ids = [match.decode() for match in _INSTANCE_ID.findall(response.body)]
        script = _user_data_script(params)
        market = (params.get("InstanceMarketOptions.MarketType") or [""])[0]
        started = []
        with self._lock:
            fresh = [instance_id for instance_id in ids if instance_id not in self._where]
            for instance_id in fresh:
                self._where[instance_id] = (account, region)
        self._profile_on_every_instance(params, account, region, fresh)
        if reservation is not None:
            capacity_reservations.launched(reservation, fresh)
        for instance_id in fresh:
            instance = _instance(account, region, instance_id)
            if group is not None:
                instance.placement.group_name = group
            if market == "capacity-block":
                instance.lifecycle = "capacity-block"
            if script is not None:
                tmp = nodes.node_dir(instance_id) / "tmp"  # the instance's own /tmp
                tmp.mkdir(exist_ok=True)
                env = {
                    "TMPDIR": str(tmp),
                    # What SDKs and tools read for another metadata endpoint (169.254.169.254 on AWS).
                    "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"{nodes.endpoint_url}/_localaws/imds/{instance_id}/",
                }
                nodes.start(instance_id, script, region=region, shims=SHIMS, env=env)
                started.append(instance_id)
        if started:
            log.info("EC2 instances %s run their user data", started)
        if market == "capacity-block":
            spot, block = (
                b"<instanceLifecycle>spot</instanceLifecycle>",
                b"<instanceLifecycle>capacity-block</instanceLifecycle>",
            )
            response = response.with_body(response.body.replace(spot, block))
        return response

    @staticmethod
    def _profile_on_every_instance(params: dict, account: str, region: str, instance_ids: list[str]) -> None:
        """Every instance of a launch gets the instance profile (moto associates it with the first only)."""
        from moto.ec2.models import ec2_backends

        name = (params.get("IamInstanceProfile.Name") or [None])[0]
        arn = (params.get("IamInstanceProfile.Arn") or [None])[0]
        if not (name or arn):
            return
        backend = ec2_backends[account][region]
        for instance_id in instance_ids:
            if instance_id not in backend.iam_instance_profile_associations:
                backend.associate_iam_instance_profile(
                    instance_id=instance_id, iam_instance_profile_name=name, iam_instance_profile_arn=arn
                )

    @staticmethod
    def _check_run(params: dict, account: str, region: str, placement_groups: Ec2PlacementGroups) -> str | None:
        """Refuse what AWS refuses and moto lets through; return the placement group's name, if any."""
        from moto.ec2.models.instance_types import INSTANCE_TYPES

        encoded = (params.get("UserData") or [""])[0]
        if encoded:
            try:
                size = len(base64.b64decode(encoded, validate=True))
            except binascii.Error:
                raise Ec2Error("InvalidUserData.Malformed", "Invalid BASE64 encoding of user data.") from None
            if size > MAX_USER_DATA_BYTES:
                raise Ec2Error("InvalidParameterValue", f"User data is limited to {MAX_USER_DATA_BYTES} bytes")
        behaviour = (params.get("InstanceInitiatedShutdownBehavior") or ["stop"])[0]
        if behaviour not in ("stop", "terminate"):  # botocore's ShutdownBehavior enum
            raise Ec2Error(
                "InvalidParameterValue",
                f"Value ({behaviour}) for parameter instanceInitiatedShutdownBehavior is invalid. "
                "Valid values: stop, terminate.",
            )
        group = None
        name, group_id = (
            (params.get("Placement.GroupName") or [None])[0],
            (params.get("Placement.GroupId") or [None])[0],
        )
        if name or group_id:
            group = placement_groups.resolve(account, region, name, group_id).name
        interfaces = []
        n = 1
        while any(key.startswith(f"NetworkInterface.{n}.") for key in params):
            interfaces.append(
                {k.split(".", 2)[2]: v[0] for k, v in params.items() if k.startswith(f"NetworkInterface.{n}.")}
            )
            n += 1
        if interfaces and indexed(params, "SecurityGroupId"):
            raise Ec2Error(
                "InvalidParameterCombination",
                "Network interfaces and an instance-level security groups may not be specified on the same request",
            )
        efas = [i for i in interfaces if i.get("InterfaceType") in ("efa", "efa-only")]
        if efas:
            instance_type = (params.get("InstanceType") or ["m1.small"])[0]
            network = INSTANCE_TYPES.get(instance_type, {}).get("NetworkInfo", {})
            if not network.get("EfaSupported"):
                raise Ec2Error(
                    "InvalidParameterCombination",
                    f"{instance_type} instances do not support Elastic Fabric Adapters.",
                )
            maximum = network.get("EfaInfo", {}).get("MaximumEfaInterfaces", 1)
            if len(efas) > maximum:
                raise Ec2Error(
                    "InvalidParameterCombination",
                    f"{instance_type} supports at most {maximum} Elastic Fabric Adapters, {len(efas)} were requested.",
                )
        market = (params.get("InstanceMarketOptions.MarketType") or [""])[0]
        target = "CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId"
        if market == "capacity-block" and not (params.get(target) or [""])[0]:
            raise Ec2Error(
                "InvalidParameterCombination",
                "A capacity-block launch must target its Capacity Block: "
                "CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId.",
            )
        return group

    # GetConsoleOutput

    @staticmethod
    def _console_output(response: Response, instance_id: str, nodes: NodeRuntime) -> Response:
        log_path = nodes.root / instance_id / "script.log"
        if not log_path.is_file():
            return response  # no node: moto's sample boot log
        data = log_path.read_bytes()[-CONSOLE_OUTPUT_BYTES:]
        output = b"<output>" + base64.b64encode(data) + b"</output>"
        return response.with_body(_OUTPUT.sub(lambda _: output, response.body, count=1))

    # What the node and "AWS" do (the control endpoint)

    def os_shutdown(self, instance_id: str, nodes: NodeRuntime) -> dict:
        """The instance's OS shut down: terminated or stopped, by its ``InstanceInitiatedShutdownBehavior``."""
        instance = self._known(instance_id)
        if instance.state in ("terminated", "stopped"):
            return {"instance_id": instance_id, "state": instance.state}
        behavior = instance.instance_initiated_shutdown_behavior
        self._end(instance, "terminated" if behavior == "terminate" else "stopped", *INSTANCE_INITIATED_SHUTDOWN)
        # After the answer: the caller is the node's own shutdown, which this stops.
        threading.Timer(0.1, nodes.stop, args=(instance_id,)).start()
        log.info("EC2 instance %s shut itself down: %s", instance_id, instance.state)
        return {"instance_id": instance_id, "state": instance.state}

    def interrupt(self, instance_id: str, code: str, state: str | None, nodes: NodeRuntime) -> dict:
        """AWS ends the instance itself, with a ``Server.*`` state reason."""
        if code not in SERVER_REASONS:
            raise ValueError(f"code must be one of {sorted(SERVER_REASONS)}, got {code!r}")
        message, default_state = SERVER_REASONS[code]
        state = state or default_state
        if state not in ("terminated", "stopped"):
            raise ValueError(f"state must be terminated or stopped, got {state!r}")
        instance = self._known(instance_id)
        if instance.state == "terminated":
            raise ValueError(f"instance {instance_id} is already terminated")
        self._end(instance, state, code, message)
        threading.Thread(target=nodes.stop, args=(instance_id,), daemon=True).start()
        log.info("EC2 instance %s ended by AWS: %s (%s)", instance_id, state, code)
        return {"instance_id": instance_id, "state": instance.state, "state_reason": code}

    def metadata(self, instance_id: str, method: str, path: str) -> tuple[int, str]:
        """The instance metadata service (IMDSv2 token, then a few items) as the instance sees it.

        ``PUT latest/api/token`` gives a session token; ``GET latest/meta-data/<item>`` for ``instance-id``,
        ``instance-type``, ``ami-id``, ``ami-launch-index``, ``placement/availability-zone``,
        ``placement/region``, ``local-ipv4``
        (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html).
        """
        instance = self._known(instance_id)
        if path == "latest/api/token":
            return (200, f"localaws-imds-{instance_id}") if method == "PUT" else (405, "")
        items = {
            "instance-id": instance.id,
            "instance-type": instance.instance_type,
            "ami-id": instance.image_id,
            "ami-launch-index": str(instance.ami_launch_index),
            "placement/availability-zone": instance.placement.zone,
            "placement/region": self._where[instance_id][1],
            "local-ipv4": instance.private_ip or "",
        }
        item = path.removeprefix("latest/meta-data/")
        if method != "GET" or not path.startswith("latest/meta-data/") or item not in items:
            return 404, ""
        return 200, str(items[item])

    def _known(self, instance_id: str):
        with self._lock:
            where = self._where.get(instance_id)
        if where is None:
            raise KeyError(f"no instance {instance_id} launched through this localaws")
        return _instance(*where, instance_id)

    @staticmethod
    def _end(instance, state: str, code: str, message: str) -> None:
        from moto.ec2.models.instances import StateReason

        if state == "terminated":
            instance.terminate()
        else:
            instance.stop()
        instance.state_reason = StateReason(f"{code}: {message}", code)


def _launch_zone(params: dict, account: str, region: str) -> str:
    """The Availability Zone a launch goes to: its subnet's, else ``Placement``'s, else moto's default."""
    from moto.ec2.models import ec2_backends

    subnet_id = (params.get("SubnetId") or params.get("NetworkInterface.1.SubnetId") or [""])[0]
    if subnet_id:
        try:
            return ec2_backends[account][region].get_subnet(subnet_id).availability_zone
        except Exception:  # moto refuses the unknown subnet itself
            pass
    return (params.get("Placement.AvailabilityZone") or [f"{region}a"])[0]


def _instance(account: str, region: str, instance_id: str):
    from moto.ec2.models import ec2_backends

    return ec2_backends[account][region].get_instance(instance_id)


def _user_data_script(params: dict) -> str | None:
    """The user data as a script to run: decoded text that starts with ``#!``, else ``None``."""
    encoded = (params.get("UserData") or [""])[0]
    if not encoded:
        return None
    try:
        text = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return text if text.startswith("#!") else None
