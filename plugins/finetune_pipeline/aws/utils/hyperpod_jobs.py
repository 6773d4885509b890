"""
The S3 layout that carries HyperPod (Slurm) jobs between Airflow and the job agent on the controller.

Why S3: a HyperPod Slurm cluster has no job API of its own, and SSM ``SendCommand`` refuses its nodes
(the model allows only ``i-``/``mi-`` instance IDs; ``sagemaker-cluster:...`` targets work only for Session
Manager's interactive ``StartSession``). The cluster's execution role can read and write S3, so the
lifecycle scripts install a small agent on the controller (``include/scripts/hyperpod/job_agent.py``)
that polls a prefix, and Airflow talks to it through objects under ``jobs_uri``:

- ``jobs/<job_key>.json``: the job spec, written once with ``PutObject(IfNoneMatch="*")``;
- ``state/<job_key>.json``: the job's state, written by the agent only;
- ``cancel/<job_key>``: present when the job is to be cancelled (``scancel``).

Spec: ``{"job_key", "bundle_uri", "command": [...], "env": {...}, "nodes", "time_limit_minutes",
"sbatch_args": [...], "installed_modules": [...]}`` (``{job_dir}`` in ``command`` or ``env``: the job's folder on
the cluster's shared storage). State: ``{"job_key", "state", "slurm_job_id",
"exit_code", "reason", "log_tail": [...], "updated"}``. The agent keeps its own copy of these names
(it runs on the node with the standard library and boto3 only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from finetune_pipeline.aws.hooks.s3_objects import split_s3_uri

# What the agent writes to state/<job_key>.json["state"].
JOB_STATES = ("SUBMITTED", "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED")
SUCCESS_STATE = "COMPLETED"
FAILED_STATES = frozenset({"FAILED", "CANCELLED"})
TERMINAL_STATES = FAILED_STATES | {SUCCESS_STATE}


@dataclass(frozen=True)
class HyperPodJobStore:
    """Where one job's spec, state and cancel marker live under ``jobs_uri`` (``s3://bucket/prefix``)."""

    jobs_uri: str

    @property
    def bucket(self) -> str:
        return split_s3_uri(self.jobs_uri)[0]

    @property
    def prefix(self) -> str:
        prefix = split_s3_uri(self.jobs_uri)[1]
        return f"{prefix}/" if prefix else ""

    def spec_key(self, job_key: str) -> str:
        return f"{self.prefix}jobs/{job_key}.json"

    def state_key(self, job_key: str) -> str:
        return f"{self.prefix}state/{job_key}.json"

    def cancel_key(self, job_key: str) -> str:
        return f"{self.prefix}cancel/{job_key}"


def encode_spec(spec: dict[str, Any]) -> bytes:
    """The spec's bytes: sorted keys, so the same spec is the same object whoever writes it."""
    return json.dumps(spec, sort_keys=True, indent=1).encode()


def decode_record(body: bytes | None) -> dict[str, Any] | None:
    """A spec or state object's content; ``None`` if absent or not a JSON object (a torn write)."""
    if body is None:
        return None
    try:
        record = json.loads(body)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
