"""HyperPod clusters on localaws for tests: lifecycle scripts in S3, fake code bundles, Slurm records."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = REPO_ROOT / "include" / "scripts" / "hyperpod"
# What a lifecycle script must at least do: exit 0.
NOTHING_TO_DO = "#!/bin/bash\necho '[on_create] nothing to do'\n"


def _put(s3, uri: str, name: str, body: bytes) -> None:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    try:
        s3.head_bucket(Bucket=bucket)
    except Exception:
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=f"{prefix.strip('/')}/{name}" if prefix.strip("/") else name, Body=body)


def upload_trivial_lifecycle(s3, uri: str, on_create: str = "on_create.sh", text: str = NOTHING_TO_DO) -> None:
    """An ``OnCreate`` that exits 0 (or ``text``), so that a cluster can come into service."""
    _put(s3, uri, on_create, text.encode())


def upload_job_agent_lifecycle(s3, uri: str, jobs_uri: str, *, controller_group: str = "controller",
                               poll_seconds: float = 0.1, region: str = "us-east-1") -> dict:
    """The shipped on_create.sh and job agent, with a job_agent.json for this test; returns that config."""
    config = {
        "jobs_uri": jobs_uri,
        "region": region,
        # On HyperPod /fsx/...; here a folder of the controller node (its HOME).
        "work_dir": "~/fsx/finetune-jobs",
        "controller_group": controller_group,
        "poll_seconds": poll_seconds,
        "log_tail_lines": 50,
    }
    for name in ("on_create.sh", "job_agent.py"):
        _put(s3, uri, name, (SCRIPTS / name).read_bytes())
    _put(s3, uri, "job_agent.json", json.dumps(config).encode())
    return config


def make_bundle(train_py: str, **files: str) -> bytes:
    """A code bundle (zip) with ``train.py`` and any other files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("train.py", train_py)
        for name, text in files.items():
            bundle.writestr(name, text)
    return buffer.getvalue()


# A fake entrypoint: prints, then writes <output-uri>/_SUCCESS from rank 0 (or fails, or sleeps first).
FAKE_TRAIN = '''
import argparse, os, sys, time
import boto3
parser = argparse.ArgumentParser()
parser.add_argument("--output-uri", required=True)
parser.add_argument("--fail", action="store_true")
parser.add_argument("--sleep", type=float, default=0)
args = parser.parse_args()
rank, world = int(os.environ.get("SLURM_PROCID", 0)), int(os.environ.get("SLURM_NTASKS", 1))
print(f"rank {rank} of {world} starting", flush=True)
with open(f"pid.{rank}", "w") as f:
    f.write(str(os.getpid()))
time.sleep(args.sleep)
if args.fail:
    raise RuntimeError("the fake trainer failed on purpose")
if rank == 0:
    bucket, _, prefix = args.output_uri.removeprefix("s3://").partition("/")
    boto3.client("s3").put_object(Bucket=bucket, Key=f"{prefix}/_SUCCESS", Body=f"{world}".encode())
print(f"rank {rank} done", flush=True)
'''


def wait_for(condition, timeout: float = 30, interval: float = 0.05, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def slurm_dir(localaws, cluster_arn: str) -> Path:
    """The Slurm shims' record folder of a localaws cluster."""
    return localaws.app.nodes.root / f"{cluster_arn.rsplit('/', 1)[-1]}-slurm"


def sbatch_calls(localaws, cluster_arn: str, job_key: str | None = None) -> list[dict]:
    """Every submission the cluster's ``sbatch`` accepted (optionally only those named ``job_key``)."""
    path = slurm_dir(localaws, cluster_arn) / "sbatch.log"
    calls = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [call for call in calls if job_key is None or call["name"] == job_key]


def lifecycle_done(localaws, sagemaker, cluster: str) -> bool:
    """Whether every node's OnCreate has exited 0 (the in-process localaws's node runtime)."""
    nodes = sagemaker.list_cluster_nodes(ClusterName=cluster)["ClusterNodeSummaries"]
    return all(localaws.app.nodes.exit_code(node["InstanceId"]) == 0 for node in nodes)
