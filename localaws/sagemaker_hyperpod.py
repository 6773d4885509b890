"""SageMaker HyperPod clusters on moto, with ``ClusterStatus`` moving on the virtual clock.

moto creates a cluster ``InService`` at once, names its nodes ``<group>-<n>``, ends the cluster ARN with the
cluster's name and deletes a cluster on the spot. Every cluster request (``X-Amz-Target: SageMaker.*``, the
operations in ``OPERATIONS``) passes through :class:`HyperPodLifecycle`, which makes a new cluster
``Creating`` (nodes ``Pending``) for ``cluster_creating`` virtual seconds, then ``InService`` (nodes
``Running``); gives the cluster the 12-character ID that AWS puts in its ARN and the nodes EC2 instance IDs;
answers ``DeleteCluster`` itself (``Deleting``, nodes ``ShuttingDown``, gone after ``cluster_deleting``);
and reports an unknown cluster or node as ``ResourceNotFound``, as the service model says.

The nodes run their lifecycle scripts (:mod:`localaws.hyperpod_nodes`): a cluster is ``InService`` only once
``cluster_creating`` virtual seconds have passed *and* every node's ``OnCreate`` has exited 0; a script that
exits non-zero (or an ``OnCreate`` missing from ``SourceS3Uri``) makes it ``Failed`` with a
``FailureMessage`` in AWS's words
(https://docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-hyperpod-cluster-management-slurm.html).
Scripts take the real time they take. ``DeleteCluster`` stops the nodes and their Slurm jobs.

A state snapshot keeps the nodes' folders, not their processes. A restart ends every node process (a clean
stop ends them; after a SIGKILL, the first thing a node does on resume is end what its earlier run left),
then :meth:`resume_nodes` runs ``OnCreate`` again on the nodes of every ``Creating`` and ``InService``
cluster, in the same folders: a lifecycle script cut short runs to its end, a job agent starts again.
Slurm jobs that were running end ``NODE_FAIL`` (their job agent reports them ``FAILED``).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from moto.sagemaker.models import Cluster, SageMakerModelBackend, sagemaker_backends

from localaws.clock import VirtualClock
from localaws.hyperpod_nodes import ClusterNode, HyperPodNodes
from localaws.node_runtime import NodeRuntime
from localaws.timing import HyperPodTiming
from localaws.wsgi import (
    Response,
    WsgiApp,
    call_app,
    json_error,
    json_response,
    read_body,
    replace_body,
    request_account,
    request_region,
)

log = logging.getLogger(__name__)

TARGET_PREFIX = "SageMaker."
OPERATIONS = frozenset(
    {
        "CreateCluster",
        "DescribeCluster",
        "ListClusters",
        "ListClusterNodes",
        "DescribeClusterNode",
        "DeleteCluster",
        # Tags of a cluster's ARN (other resources' tags go to moto as they are); AWS tags a cluster by the
        # ARN CreateCluster returns: https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_ListTags.html
        "ListTags",
        "AddTags",
        "DeleteTags",
    }
)
CONTENT_TYPE = "application/x-amz-json-1.1"
# ClusterInstanceStatus of every node while the cluster has this ClusterStatus (Failed: the nodes whose
# lifecycle script failed are Failure, the others stay as they were).
NODE_STATUS = {"Creating": "Pending", "InService": "Running", "Deleting": "ShuttingDown"}


class HyperPodError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _ClusterTrack:
    backend: SageMakerModelBackend
    name: str
    since: datetime  # when the current ClusterStatus began
    nodes: list[ClusterNode] = field(default_factory=list)
    account: str = ""
    region: str = ""

    def __setstate__(self, state: dict) -> None:
        # A snapshot from before the nodes ran their scripts has none of these.
        self.__dict__.update({"nodes": [], "account": "", "region": "", **state})


class HyperPodLifecycle:
    """Moves moto's HyperPod clusters through ``Creating``, ``InService`` and ``Deleting`` on the clock."""

    def __init__(self, clock: VirtualClock, timing: HyperPodTiming):
        self.clock = clock
        self.timing = timing
        self._lock = threading.RLock()
        self._clusters: dict[str, _ClusterTrack] = {}  # by cluster ARN
        self.nodes: HyperPodNodes | None = None
        self._nodes_root = None  # the node folders' root, kept across a restart

    def attach(self, runtime: NodeRuntime) -> None:
        """Run nodes on ``runtime``; after a restart, in the folders the nodes had before."""
        root = getattr(self, "_nodes_root", None)
        if root is not None and root.exists():
            runtime.root = root
        self._nodes_root = runtime.root
        self.nodes = HyperPodNodes(runtime)

    def resume_nodes(self) -> None:
        """Once serving again after a restart: run OnCreate again on the nodes of live clusters."""
        with self._lock:
            for arn, track in self._clusters.items():
                cluster = track.backend.clusters.get(track.name)
                if cluster is not None and cluster.status in ("Creating", "InService") and track.nodes:
                    log.info("HyperPod cluster %s: running OnCreate again after a restart", track.name)
                    failure = self._launch(arn, track, cluster)
                    if failure and cluster.status == "Creating":
                        self._fail(track, cluster, failure)

    def shutdown(self) -> None:
        """Stop every cluster's nodes and Slurm jobs (localaws is stopping)."""
        with self._lock:
            for arn, track in self._clusters.items():
                if self.nodes is not None:
                    self.nodes.stop(arn, track.nodes)

    def reset(self) -> None:
        with self._lock:
            self.shutdown()
            self._clusters.clear()

    @staticmethod
    def handles(target: str) -> bool:
        """Whether ``X-Amz-Target`` names a cluster operation (the rest of SageMaker goes to moto as is)."""
        return target.startswith(TARGET_PREFIX) and target[len(TARGET_PREFIX) :] in OPERATIONS

    def handle(self, environ: dict, moto_app: WsgiApp) -> Response:
        operation = environ["HTTP_X_AMZ_TARGET"][len(TARGET_PREFIX) :]
        try:
            params = json.loads(read_body(environ) or b"{}")
        except ValueError:
            params = {}
        backend = sagemaker_backends[request_account(environ)][request_region(environ)]
        with self._lock:
            now = self.clock.now()
            self._advance(now)
            try:
                if operation == "DeleteCluster":
                    return json_response(
                        {"ClusterArn": self._delete(backend, params, now)}, content_type=CONTENT_TYPE
                    )
                if operation == "CreateCluster":
                    _fill_in_defaults(params, environ)
                elif operation in TAG_OPERATIONS:
                    _resolve_tagged_arn(backend, params, environ)
                elif "ClusterName" in params:
                    self._resolve_name(backend, params, environ, operation)
                response = call_app(moto_app, environ)
                if response.status != 200:
                    return response
                if operation == "CreateCluster":
                    arn = self._created(
                        backend, params["ClusterName"], now, request_account(environ), request_region(environ)
                    )
                    return json_response({"ClusterArn": arn}, content_type=CONTENT_TYPE)
                return response.with_body(json.dumps(_view(json.loads(response.body))).encode())
            except HyperPodError as error:
                log.info("SageMaker %s refused: %s %s", operation, error.code, error.message)
                return json_error(error.code, error.message, CONTENT_TYPE)

    # Requests

    def _resolve_name(
        self, backend: SageMakerModelBackend, params: dict, environ: dict, operation: str
    ) -> None:
        """Check the cluster (and node) exist; hand moto the cluster's name, which it keys clusters by."""
        cluster = _find(backend, params["ClusterName"])
        if operation == "DescribeClusterNode" and params.get("NodeId") not in cluster.nodes:
            raise HyperPodError(
                "ResourceNotFound",
                f"Node {params.get('NodeId')} not found in cluster {cluster.cluster_name}.",
            )
        if cluster.cluster_name != params["ClusterName"]:
            replace_body(environ, json.dumps({**params, "ClusterName": cluster.cluster_name}).encode())

    def _created(
        self, backend: SageMakerModelBackend, name: str, now: datetime, account: str, region: str
    ) -> str:
        """Give moto's new cluster AWS's ID and node IDs, start it ``Creating`` and run its nodes' OnCreate."""
        cluster = backend.clusters[name]
        cluster.arn = f"{cluster.arn.rsplit('/', 1)[0]}/{uuid.uuid4().hex[:12]}"
        cluster.creation_time = _naive(now)
        nodes, members = {}, []
        per_group: dict[str, int] = {}
        for index, node in enumerate(cluster.nodes.values()):
            node.instance_id = f"i-{uuid.uuid4().hex[:17]}"
            node.launch_time = _naive(now)
            nodes[node.instance_id] = node
            group = node.instance_group_name
            per_group[group] = per_group.get(group, 0) + 1
            # Each node an address of its own in the cluster's subnet (its lifecycle scripts look it up).
            ip = f"10.1.{index // 250}.{index % 250 + 4}"
            members.append(ClusterNode(node.instance_id, group, f"{group}-{per_group[group]}", ip))
        cluster.nodes = nodes
        track = _ClusterTrack(backend, name, now, members, account, region)
        self._clusters[cluster.arn] = track
        _set_status(cluster, "Creating")
        log.info("HyperPod cluster %s creating (%d nodes)", name, len(nodes))
        failure = self._launch(cluster.arn, track, cluster)
        if failure:
            self._fail(track, cluster, failure)
        return cluster.arn

    def _launch(self, arn: str, track: _ClusterTrack, cluster: Cluster) -> str | None:
        if self.nodes is None:
            return "localaws runs no nodes (HyperPodLifecycle.attach was not called)"
        self.nodes.stop(arn, track.nodes)
        try:
            return self.nodes.launch(
                cluster_arn=arn, cluster_name=track.name, account=track.account, region=track.region,
                groups=cluster.instance_groups, nodes=track.nodes,
            )
        except Exception as error:
            log.exception("HyperPod cluster %s: could not start the lifecycle scripts", track.name)
            return f"Lifecycle scripts could not be started: {error}"

    def _fail(self, track: _ClusterTrack, cluster: Cluster, message: str) -> None:
        """Creation failed: ``Failed`` with AWS's kind of message; the nodes are stopped."""
        log.info("HyperPod cluster %s failed: %s", track.name, message)
        failed = {n.node_id for n in track.nodes if self.nodes and self.nodes.failure(cluster.arn, track.name, [n])}
        _set_status(cluster, "Failed", failed_nodes=failed)
        cluster.failure_message = message
        if self.nodes is not None:
            self.nodes.stop(cluster.arn, track.nodes)

    def _delete(self, backend: SageMakerModelBackend, params: dict, now: datetime) -> str:
        """DeleteCluster: ``Deleting`` now, gone after ``cluster_deleting`` seconds; twice is harmless."""
        cluster = _find(backend, params.get("ClusterName", ""))
        if cluster.status != "Deleting":
            track = self._clusters.get(cluster.arn)
            members = track.nodes if track else []
            if self.nodes is not None:
                self.nodes.stop(cluster.arn, members)
            self._clusters[cluster.arn] = _ClusterTrack(backend, cluster.cluster_name, now, members)
            _set_status(cluster, "Deleting")
            log.info("HyperPod cluster %s deleting", cluster.cluster_name)
        return cluster.arn

    # The clock

    def _advance(self, now: datetime) -> None:
        """Apply every status change that is due by ``now``."""
        for arn, track in list(self._clusters.items()):
            cluster = track.backend.clusters.get(track.name)
            if cluster is None or cluster.arn != arn:
                del self._clusters[arn]
            elif cluster.status == "Creating":
                failure = self.nodes.failure(arn, track.name, track.nodes) if self.nodes else None
                if failure:
                    self._fail(track, cluster, failure)
                elif now >= track.since + _seconds(self.timing.cluster_creating) and (
                    self.nodes is None or self.nodes.finished(track.nodes)
                ):
                    # InService when both the provisioning time has passed and every OnCreate exited 0.
                    track.since = max(track.since + _seconds(self.timing.cluster_creating), now)
                    _set_status(cluster, "InService")
            elif cluster.status == "Deleting" and now >= track.since + _seconds(self.timing.cluster_deleting):
                del track.backend.clusters[track.name]
                del self._clusters[arn]


def _fill_in_defaults(params: dict, environ: dict) -> None:
    """moto fails half-way (leaving the name taken) on a group without the optional ThreadsPerCore."""
    groups = params.get("InstanceGroups")
    if isinstance(groups, list) and any(isinstance(g, dict) and "ThreadsPerCore" not in g for g in groups):
        params["InstanceGroups"] = [{"ThreadsPerCore": 1, **g} if isinstance(g, dict) else g for g in groups]
        replace_body(environ, json.dumps(params).encode())


TAG_OPERATIONS = frozenset({"ListTags", "AddTags", "DeleteTags"})
_CLUSTER_ARN = re.compile(r"^arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:\d{12}:cluster/[a-z0-9]{12}$")


def _resolve_tagged_arn(backend: SageMakerModelBackend, params: dict, environ: dict) -> None:
    """A cluster's ARN ends in its ID, as AWS's does (``cluster/<id>``); moto finds clusters by name, so the
    request is handed to moto with ``cluster/<name>``. ListTags models no error of its own: a cluster that is
    gone is the common ``ValidationException`` (CommonErrors), as moto answers for its other resources."""
    arn = params.get("ResourceArn", "")
    if _CLUSTER_ARN.match(arn):
        cluster = next((c for c in backend.clusters.values() if c.arn == arn), None)
        if cluster is None:
            raise HyperPodError("ValidationException", f"Could not find cluster with ARN {arn}")
        moto_arn = f"{arn.rsplit('/', 1)[0]}/{cluster.cluster_name}"
        replace_body(environ, json.dumps({**params, "ResourceArn": moto_arn}).encode())


def _find(backend: SageMakerModelBackend, name_or_arn: str) -> Cluster:
    if name_or_arn.startswith("arn:"):
        cluster = next((c for c in backend.clusters.values() if c.arn == name_or_arn), None)
    else:
        cluster = backend.clusters.get(name_or_arn)
    if cluster is None:
        raise HyperPodError("ResourceNotFound", f"Cluster {name_or_arn} not found.")
    return cluster


def _set_status(cluster: Cluster, status: str, failed_nodes: set[str] = frozenset()) -> None:
    """Set ``ClusterStatus`` and what follows from it: node statuses and each group's status and count."""
    cluster.status = status
    for node in cluster.nodes.values():
        if node.instance_id in failed_nodes:
            node.status = "Failure"
        elif status in NODE_STATUS:
            node.status = NODE_STATUS[status]
    for group in cluster.instance_groups:
        group["Status"] = status
        group["CurrentCount"] = sum(
            1
            for node in cluster.nodes.values()
            if node.instance_group_name == group["InstanceGroupName"] and node.status == "Running"
        )


def _view(payload: dict) -> dict:
    """moto's answer as AWS gives it: no empty ``FailureMessage``, no placeholder node status message."""
    if payload.get("FailureMessage") == "":
        del payload["FailureMessage"]
    for node in [payload.get("NodeDetails"), *payload.get("ClusterNodeSummaries", [])]:
        if node and "InstanceStatus" in node:
            node["InstanceStatus"] = {"Status": node["InstanceStatus"]["Status"]}
    return payload


def _naive(moment: datetime) -> datetime:
    """moto keeps naive UTC datetimes; mixing in aware ones would break its sorting and filters."""
    return moment.replace(tzinfo=None)


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)
