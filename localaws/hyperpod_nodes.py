"""A HyperPod cluster's nodes as local processes: the lifecycle scripts run on them as HyperPod runs them.

When a cluster is created, each node (a :class:`~localaws.node_runtime.NodeRuntime` folder, named by its
instance ID) gets what a HyperPod instance gets before its ``OnCreate`` script runs
(https://docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-hyperpod-lifecycle-best-practices-slurm.html):

- the objects under its group's ``LifeCycleConfig.SourceS3Uri``, read from this localaws's S3, in
  ``<node>/lifecycle/``; ``OnCreate`` runs from there with bash;
- ``resource_config.json`` (cluster ARN and name, each group's instances with their IP addresses), its path
  in ``SAGEMAKER_RESOURCE_CONFIG_PATH``
  (https://docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-hyperpod-lifecycle-best-practices-slurm-slurm-base-config.html);
- an IP address of its own, which ``hostname -I`` answers (a shim), so a script finds its group as on AWS;
- ``PROVISION_LOG``: the node's own stand-in for ``/var/log/provision/provisioning.log``, the file HyperPod
  uploads to CloudWatch (the shipped ``on_create.sh`` honours it; on AWS it is unset);
- Slurm's commands (:mod:`localaws.slurm_shims`), sharing one record folder per cluster
  (``<nodes root>/<cluster id>-slurm``), so the job agent and its batch scripts run unchanged; and a
  ``systemctl`` that says the node has no systemd (the scripts then start services in the background).

A missing ``OnCreate`` object or a script that exits non-zero fails the cluster, as on AWS; the cluster's
status follows in :mod:`localaws.sagemaker_hyperpod`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from localaws import slurm_shims
from localaws.node_runtime import NodeRuntime

log = logging.getLogger(__name__)

# AWS's FailureMessage for a cluster whose lifecycle script failed on a node, naming the CloudWatch stream its
# output went to (https://docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-hyperpod-cluster-management-slurm.html,
# "Lifecycle script failure messages"); localaws adds where the output really is.
SCRIPT_FAILED = (
    'Instance {node} failed to provision with the following error: "Lifecycle scripts did not run successfully. '
    "To view lifecycle script logs, visit log group '/aws/sagemaker/Clusters/{cluster}/{cluster_id}' and log "
    "stream 'LifecycleConfig/{group}/{node}'.\" Note that multiple instances may be impacted. "
    "(localaws: OnCreate exited {code}; its output is in {log_path})"
)
# ... and for scripts it could not find or read.
SCRIPT_MISSING = (
    'Instance {node} failed to provision with the following error: "Lifecycle scripts did not run successfully. '
    'Ensure the scripts exist in provided S3 path, are accessible, and run without errors." '
    "(localaws: {on_create!r} is not under {source})"
)
NO_SYSTEMD = (
    "#!/bin/sh\n"
    "echo 'System has not been booted with systemd as init system (PID 1). Can'\"'\"'t operate.' >&2\n"
    "exit 1\n"
)


@dataclass
class ClusterNode:
    node_id: str  # the instance ID, also the NodeRuntime folder's name
    group: str
    instance_name: str
    ip: str


def _hostname_shim(ip: str) -> str:
    return (
        "#!/bin/sh\n"
        f'if [ "$1" = "-I" ] || [ "$1" = "--all-ip-addresses" ]; then echo "{ip} "; '
        f'else echo "ip-{ip.replace(".", "-")}"; fi\n'
    )


def _lifecycle_files(account: str, source_uri: str) -> dict[str, bytes]:
    """The objects under ``s3://bucket/prefix``, by their path below the prefix (moto's S3, directly)."""
    from moto.s3.models import s3_backends

    bucket_name, _, prefix = source_uri.removeprefix("s3://").partition("/")
    prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    try:
        bucket = s3_backends[account]["global"].get_bucket(bucket_name)
    except Exception:
        return {}
    files = {}
    for name in list(bucket.keys.keys()):
        if not name.startswith(prefix) or name.endswith("/"):
            continue
        key = bucket.keys[name]
        value = getattr(key, "value", None)
        if value is not None:
            files[name[len(prefix) :]] = value
    return files


class HyperPodNodes:
    """Starts, watches and stops the lifecycle scripts of HyperPod clusters' nodes."""

    def __init__(self, runtime: NodeRuntime):
        self.runtime = runtime

    def slurm_dir(self, cluster_id: str) -> Path:
        return self.runtime.root / f"{cluster_id}-slurm"

    def launch(
        self,
        *,
        cluster_arn: str,
        cluster_name: str,
        account: str,
        region: str,
        groups: list[dict],
        nodes: list[ClusterNode],
    ) -> str | None:
        """Run ``OnCreate`` on every node; return a failure message if a node cannot even start it."""
        cluster_id = cluster_arn.rsplit("/", 1)[-1]
        resource_config = {
            "ClusterConfig": {"ClusterArn": cluster_arn, "ClusterName": cluster_name},
            "InstanceGroups": [
                {
                    "Name": group["InstanceGroupName"],
                    "InstanceType": group["InstanceType"],
                    "Instances": [
                        {"InstanceName": n.instance_name, "AgentIpAddress": n.ip, "CustomerIpAddress": n.ip,
                         "InstanceId": n.node_id}
                        for n in nodes
                        if n.group == group["InstanceGroupName"]
                    ],
                }
                for group in groups
            ],
        }
        slurm = self.slurm_dir(cluster_id)
        slurm.mkdir(parents=True, exist_ok=True)
        # Which node is in which group, for sbatch to count the compute nodes (those outside the controller's).
        (slurm / "nodes.json").write_text(json.dumps([{"node_id": n.node_id, "group": n.group} for n in nodes]))
        shims = {name: slurm_shims.shim_text(name, slurm) for name in slurm_shims.COMMANDS}
        by_group = {group["InstanceGroupName"]: group for group in groups}
        for node in nodes:
            lifecycle = by_group[node.group].get("LifeCycleConfig") or {}
            source, on_create = lifecycle.get("SourceS3Uri", ""), lifecycle.get("OnCreate", "")
            files = _lifecycle_files(account, source)
            if on_create not in files:
                return SCRIPT_MISSING.format(node=node.node_id, on_create=on_create, source=source)
            home = self.runtime.node_dir(node.node_id)
            for relative, body in files.items():
                target = home / "lifecycle" / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(body)
            config_path = home / "opt" / "ml" / "config" / "resource_config.json"
            config_path.parent.mkdir(parents=True, exist_ok=True)
            config_path.write_text(json.dumps(resource_config, indent=1))
            script = f'#!/bin/bash\ncd "$HOME/lifecycle" || exit 1\nexec /bin/bash ./{on_create}\n'
            self.runtime.start(
                node.node_id,
                script,
                region=region,
                shims={**shims, "hostname": _hostname_shim(node.ip), "systemctl": NO_SYSTEMD},
                env={
                    "SAGEMAKER_RESOURCE_CONFIG_PATH": str(config_path),
                    # Where the script logs instead of /var/log/provision (which a local process must not touch).
                    "PROVISION_LOG": str(home / "var" / "log" / "provision" / "provisioning.log"),
                },
            )
        log.info("HyperPod cluster %s: OnCreate started on %d nodes", cluster_name, len(nodes))
        return None

    def failure(self, cluster_arn: str, cluster_name: str, nodes: list[ClusterNode]) -> str | None:
        """AWS's message if a node's ``OnCreate`` exited non-zero (the first such node), else ``None``."""
        for node in nodes:
            code = self.runtime.exit_code(node.node_id)
            if code not in (None, 0):
                return SCRIPT_FAILED.format(
                    node=node.node_id, group=node.group, code=code, cluster=cluster_name,
                    cluster_id=cluster_arn.rsplit("/", 1)[-1],
                    log_path=self.runtime.node_dir(node.node_id) / "script.log",
                )
        return None

    def finished(self, nodes: list[ClusterNode]) -> bool:
        """Whether every node's ``OnCreate`` has exited 0."""
        return all(self.runtime.exit_code(node.node_id) == 0 for node in nodes)

    def stop(self, cluster_arn: str, nodes: list[ClusterNode]) -> None:
        """End everything the nodes run: their scripts, what those left running, and their Slurm jobs."""
        for node in nodes:
            self.runtime.stop(node.node_id)
        # The Slurm jobs run in sessions of their own, and after a restart of localaws the processes the
        # nodes ran before are no child of this one: every process of a node carries its LOCALAWS_NODE_ID.
        _kill_processes_of({node.node_id for node in nodes})
        slurm = self.slurm_dir(cluster_arn.rsplit("/", 1)[-1])
        for record in slurm_shims.records(slurm) if slurm.exists() else []:
            if record["state"] in slurm_shims.ACTIVE and record.get("runner_pid"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(record["runner_pid"], signal.SIGKILL)


def _kill_processes_of(node_ids: set[str]) -> None:
    """SIGKILL this user's processes whose environment names one of ``node_ids`` (Linux: /proc)."""
    if not node_ids or not os.path.isdir("/proc"):
        return
    wanted = {f"LOCALAWS_NODE_ID={node_id}".encode() for node_id in node_ids}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = set(Path(entry.path, "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if environment & wanted:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
