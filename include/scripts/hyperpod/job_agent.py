#!/usr/bin/env python3
"""
The job agent on a HyperPod (Slurm) cluster's controller: runs the job specs Airflow writes to S3.

Why an agent: a HyperPod Slurm cluster has no job API, and SSM ``SendCommand`` refuses its nodes (only
Session Manager's interactive ``StartSession`` reaches them). The cluster's execution role can use S3, so
``on_create.sh`` installs this agent on the controller and Airflow talks to it through objects under
``jobs_uri`` (the layout Airflow's side keeps in ``finetune_pipeline.aws.utils.hyperpod_jobs``):

- ``jobs/<job_key>.json``: the spec, written once by Airflow (``PutObject`` with ``If-None-Match: *``):
  ``{"job_key", "bundle_uri", "command": [...], "env": {...}, "nodes", "time_limit_minutes",
  "sbatch_args": [...], "installed_modules": [...]}``;
- ``state/<job_key>.json``: written here: ``{"job_key", "state", "slurm_job_id", "exit_code", "reason",
  "log_tail": [...], "updated"}``, ``state`` one of SUBMITTED, PENDING, RUNNING, COMPLETED, FAILED, CANCELLED;
- ``cancel/<job_key>``: Airflow asks for the job to be cancelled; the agent runs ``scancel``.

For each spec that has no final state, the agent downloads the bundle to shared storage
(``<work_dir>/<job_key>/bundle``), writes a batch script that runs ``srun --auto-resume=1 <command>`` on
``nodes`` nodes, and submits it with ``sbatch --parsable --job-name=<job_key>``. ``{job_dir}`` in the command
or env stands for ``<work_dir>/<job_key>``, which the job also gets as ``JOB_DIR``: the place for checkpoints
that every restart sees. ``--auto-resume=1`` is
HyperPod's srun flag that re-runs the step after HyperPod has replaced a faulty node
(https://docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-hyperpod-resiliency-slurm-auto-resume.html), which
is why the bundle and the job's checkpoints live on storage every node sees.

Exactly one Slurm job per spec, across agent restarts: before it submits, the agent looks for a Slurm job
named ``<job_key>`` (``squeue``, then ``sacct``) and for the exit-code file a job of this key leaves in its
folder. So a crash between ``sbatch`` and the state write adopts the job that ``sbatch`` queued instead of
queueing another.

Configuration (``job_agent.json``, uploaded next to the lifecycle scripts):
``{"jobs_uri": "s3://bucket/prefix", "region": "us-east-1", "work_dir": "/fsx/finetune-jobs",
"controller_group": "controller-machine", "poll_seconds": 10, "log_tail_lines": 50}``.
``work_dir`` may start with ``~``. Standard library and boto3 only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import boto3
from botocore.exceptions import ClientError

log = logging.getLogger("job_agent")

TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
SUBMIT_ATTEMPTS = 3  # polls in a row in which sbatch failed before a spec is FAILED
# squeue's job states (https://slurm.schedmd.com/squeue.html#SECTION_JOB-STATE-CODES) as the agent reports them.
QUEUE_STATES = {
    "PENDING": "PENDING",
    "CONFIGURING": "PENDING",
    "REQUEUED": "PENDING",
    "REQUEUE_HOLD": "PENDING",
    "RESIZING": "RUNNING",
    "RUNNING": "RUNNING",
    "COMPLETING": "RUNNING",
    "SUSPENDED": "RUNNING",
    "STOPPED": "RUNNING",
}
# sacct's final states (https://slurm.schedmd.com/sacct.html#SECTION_JOB-STATE-CODES).
FINAL_STATES = {
    "COMPLETED": "COMPLETED",
    "CANCELLED": "CANCELLED",
    "FAILED": "FAILED",
    "TIMEOUT": "FAILED",
    "NODE_FAIL": "FAILED",
    "OUT_OF_MEMORY": "FAILED",
    "PREEMPTED": "FAILED",
    "BOOT_FAIL": "FAILED",
    "DEADLINE": "FAILED",
}


@dataclass(frozen=True)
class AgentConfig:
    jobs_uri: str
    region: str
    work_dir: Path
    poll_seconds: float = 10.0
    log_tail_lines: int = 50

    @classmethod
    def load(cls, path: Path) -> AgentConfig:
        raw = json.loads(path.read_text())
        missing = [name for name in ("jobs_uri", "region", "work_dir") if not raw.get(name)]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}")
        if urlparse(raw["jobs_uri"]).scheme != "s3":
            raise ValueError(f"{path}: jobs_uri must be s3://bucket/prefix, got {raw['jobs_uri']!r}")
        return cls(
            jobs_uri=raw["jobs_uri"],
            region=raw["region"],
            work_dir=Path(os.path.expanduser(raw["work_dir"])),
            poll_seconds=float(raw.get("poll_seconds", 10)),
            log_tail_lines=int(raw.get("log_tail_lines", 50)),
        )

    @property
    def bucket(self) -> str:
        return urlparse(self.jobs_uri).netloc

    @property
    def prefix(self) -> str:
        prefix = urlparse(self.jobs_uri).path.strip("/")
        return f"{prefix}/" if prefix else ""


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Slurm:
    """The Slurm commands the agent uses, each run once and read as text."""

    @staticmethod
    def _run(args: list[str], check: bool = True) -> str:
        result = subprocess.run(args, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"{shlex.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return result.stdout if result.returncode == 0 else ""

    def sbatch(self, args: list[str]) -> str:
        # --parsable prints "<job id>" or "<job id>;<cluster>".
        return self._run(["sbatch", "--parsable", *args]).strip().split(";")[0]

    def queued(self, *, name: str | None = None, job_id: str | None = None) -> list[tuple[str, str, str]]:
        """(job id, state, reason) of pending and running jobs by name or ID."""
        selector = [f"--name={name}"] if name else [f"--jobs={job_id}"]
        out = self._run(["squeue", "--noheader", *selector, "--format=%i|%T|%r"], check=False)
        return [tuple(line.split("|", 2)) for line in out.splitlines() if line.count("|") == 2]

    def accounted(self, *, name: str | None = None, job_id: str | None = None) -> list[tuple[str, str, str]]:
        """(job id, state, exit code) from accounting; empty where accounting is off."""
        selector = [f"--name={name}", "--starttime=now-30days"] if name else [f"--jobs={job_id}"]
        out = self._run(
            ["sacct", "--noheader", "--parsable2", "--allocations", *selector, "--format=JobID,State,ExitCode"],
            check=False,
        )
        return [tuple(line.split("|", 2)) for line in out.splitlines() if line.count("|") == 2]

    def scancel(self, job_id: str) -> None:
        self._run(["scancel", job_id], check=False)


class JobAgent:
    def __init__(self, config: AgentConfig, s3=None, slurm: Slurm | None = None):
        self.config = config
        self.s3 = s3 or boto3.client("s3", region_name=config.region)
        self.slurm = slurm or Slurm()
        self.finished: set[str] = set()  # job keys whose final state is written
        self.submit_failures: dict[str, int] = {}

    # S3

    def _key(self, folder: str, job_key: str, suffix: str = ".json") -> str:
        return f"{self.config.prefix}{folder}/{job_key}{suffix}"

    def _read(self, key: str) -> dict | None:
        try:
            body = self.s3.get_object(Bucket=self.config.bucket, Key=key)["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        try:
            record = json.loads(body)
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    def _exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.config.bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise
        return True

    def job_keys(self) -> list[str]:
        prefix = f"{self.config.prefix}jobs/"
        keys = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.config.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                name = item["Key"][len(prefix) :]
                if name.endswith(".json") and "/" not in name:
                    keys.append(name[: -len(".json")])
        return sorted(keys)

    def write_state(self, job_key: str, **fields) -> dict:
        record = {
            "job_key": job_key,
            "state": fields["state"],
            "slurm_job_id": fields.get("slurm_job_id"),
            "exit_code": fields.get("exit_code"),
            "reason": fields.get("reason"),
            "log_tail": fields.get("log_tail") or [],
            "updated": now(),
        }
        self.s3.put_object(
            Bucket=self.config.bucket,
            Key=self._key("state", job_key),
            Body=json.dumps(record, indent=1).encode(),
            ContentType="application/json",
        )
        if record["state"] in TERMINAL_STATES:
            self.finished.add(job_key)
        log.info("job %s: %s (Slurm job %s)", job_key, record["state"], record["slurm_job_id"])
        return record

    # The loop

    def run_forever(self) -> None:
        log.info("job agent polling %s every %ss", self.config.jobs_uri, self.config.poll_seconds)
        while True:
            self.poll_once()
            time.sleep(self.config.poll_seconds)

    def poll_once(self) -> None:
        try:
            keys = self.job_keys()
        except Exception:
            log.exception("could not list %sjobs/", self.config.jobs_uri)
            return
        for job_key in keys:
            if job_key in self.finished:
                continue
            try:
                self.handle(job_key)
            except Exception:
                log.exception("job %s: this poll failed; the next one tries again", job_key)

    def handle(self, job_key: str) -> None:
        state = self._read(self._key("state", job_key))
        if state and state.get("state") in TERMINAL_STATES:
            self.finished.add(job_key)
            return
        spec = self._read(self._key("jobs", job_key))
        if spec is None:
            return
        cancel = self._exists(self._key("cancel", job_key, ""))
        job_id = (state or {}).get("slurm_job_id") or self.find_job(job_key)
        if job_id is None:
            if cancel:
                self.write_state(job_key, state="CANCELLED", reason="cancelled before it was submitted")
                return
            try:
                job_id = self.submit(job_key, spec)
            except Exception as error:
                reason = self.cannot_submit(job_key, error)
                if reason is None:
                    raise  # the next poll tries again
                self.write_state(job_key, state="FAILED", reason=reason)
                return
            self.write_state(job_key, state="SUBMITTED", slurm_job_id=job_id, log_tail=self.log_tail(job_key, job_id))
            return
        if cancel:
            self.slurm.scancel(job_id)
        observed = self.observe(job_key, job_id, cancel)
        if state is None or any(state.get(k) != v for k, v in observed.items()):
            self.write_state(job_key, slurm_job_id=job_id, **observed)

    # Slurm

    def job_dir(self, job_key: str) -> Path:
        return self.config.work_dir / job_key

    def find_job(self, job_key: str) -> str | None:
        """A Slurm job already submitted for this key: queued, accounted, or one that left its exit code."""
        for job_id, _state, _reason in self.slurm.queued(name=job_key):
            return job_id
        for job_id, _state, _exit in self.slurm.accounted(name=job_key):
            return job_id
        ids = [p.name.split(".", 1)[1] for p in self.job_dir(job_key).glob("exit_code.*")]
        ids = sorted((i for i in ids if i.isdigit()), key=int)
        return ids[-1] if ids else None

    def download_bundle(self, job_key: str, bundle_uri: str) -> Path:
        """The bundle unzipped under ``<work_dir>/<job_key>/bundle`` (once; a half-done copy is redone)."""
        target = self.job_dir(job_key) / "bundle"
        if target.is_dir():
            return target
        parsed = urlparse(bundle_uri)
        partial = self.job_dir(job_key) / "bundle.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        archive = self.job_dir(job_key) / "bundle.zip"
        self.s3.download_file(parsed.netloc, parsed.path.lstrip("/"), str(archive))
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(partial)
        archive.unlink()
        partial.rename(target)
        return target

    @staticmethod
    def placeholders(text: str, job_dir: Path) -> str:
        """``{job_dir}`` in a command argument or env value: the job's folder on shared storage."""
        return text.replace("{job_dir}", str(job_dir))

    def batch_script(self, job_key: str, spec: dict, bundle: Path) -> Path:
        job_dir = self.job_dir(job_key)
        nodes = int(spec.get("nodes", 1))
        env = {"JOB_DIR": str(job_dir), **spec.get("env", {})}
        exports = "".join(
            f"export {name}={shlex.quote(self.placeholders(str(value), job_dir))}\n" for name, value in env.items()
        )
        install = ""
        if (bundle / "requirements.txt").exists():
            pip = "python3 -m pip install --quiet --requirement requirements.txt || exit 1"
            modules = ", ".join(spec.get("installed_modules") or [])
            install = f"python3 -c {shlex.quote(f'import {modules}')} 2>/dev/null || {pip}\n" if modules else f"{pip}\n"
        srun = shlex.join(
            ["srun", "--auto-resume=1", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
             *[self.placeholders(str(part), job_dir) for part in spec["command"]]]
        )
        exit_file = shlex.quote(str(job_dir / "exit_code")) + '."$SLURM_JOB_ID"'
        script = (
            "#!/bin/bash\n"
            f"# HyperPod job {job_key}, written by job_agent.py. One task per node; HyperPod re-runs the step\n"
            "# after it replaces a faulty node (srun --auto-resume=1).\n"
            f"cd {shlex.quote(str(bundle))} || exit 1\n"
            f'export PYTHONPATH={shlex.quote(str(bundle))}"${{PYTHONPATH:+:$PYTHONPATH}}"\n'
            f"{exports}{install}"
            f"{srun}\n"
            "rc=$?\n"
            # The job's own record of how it ended, for an agent that lost track of it (and sacct is off).
            f'echo "$rc" > {exit_file}.tmp && mv {exit_file}.tmp {exit_file}\n'
            'exit "$rc"\n'
        )
        path = job_dir / "job.sbatch"
        path.write_text(script)
        path.chmod(0o755)
        return path

    def cannot_submit(self, job_key: str, error: Exception) -> str | None:
        """Why this spec can never be submitted (then it is FAILED), or ``None`` to try again next poll.

        A bundle that is not there or not a zip, or a spec without a command, stays so; ``sbatch`` refusing
        the job (unknown option, more nodes than the cluster has) is given ``SUBMIT_ATTEMPTS`` polls, as
        slurmctld can be briefly unreachable.
        """
        if isinstance(error, ClientError) and error.response.get("Error", {}).get("Code") in (
            "NoSuchKey", "404", "NoSuchBucket", "403", "AccessDenied",
        ):
            return f"cannot read the bundle: {error}"
        if isinstance(error, (zipfile.BadZipFile, KeyError, ValueError, TypeError)):
            return f"the spec cannot run: {type(error).__name__}: {error}"
        self.submit_failures[job_key] = self.submit_failures.get(job_key, 0) + 1
        if self.submit_failures[job_key] >= SUBMIT_ATTEMPTS:
            return f"sbatch failed {SUBMIT_ATTEMPTS} times; the last time: {error}"
        return None

    def submit(self, job_key: str, spec: dict) -> str:
        bundle = self.download_bundle(job_key, spec["bundle_uri"])
        script = self.batch_script(job_key, spec, bundle)
        job_dir = self.job_dir(job_key)
        args = [
            f"--job-name={job_key}",
            f"--nodes={int(spec.get('nodes', 1))}",
            f"--time={int(spec.get('time_limit_minutes', 24 * 60))}",
            f"--output={job_dir / 'slurm-%j.out'}",
            f"--chdir={bundle}",
            *[str(arg) for arg in spec.get("sbatch_args", [])],
            str(script),
        ]
        job_id = self.slurm.sbatch(args)
        log.info("job %s: submitted as Slurm job %s", job_key, job_id)
        return job_id

    def log_tail(self, job_key: str, job_id: str) -> list[str]:
        path = self.job_dir(job_key) / f"slurm-{job_id}.out"
        try:
            lines = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        return lines[-self.config.log_tail_lines :]

    def observe(self, job_key: str, job_id: str, cancel: bool) -> dict:
        """The job's state now: from squeue while queued, then its exit-code file, then sacct."""
        tail = self.log_tail(job_key, job_id)
        for _id, slurm_state, reason in self.slurm.queued(job_id=job_id):
            state = QUEUE_STATES.get(slurm_state.split()[0], "RUNNING")
            return {"state": state, "exit_code": None, "reason": None if reason in ("None", "") else reason,
                    "log_tail": tail}
        exit_file = self.job_dir(job_key) / f"exit_code.{job_id}"
        if exit_file.exists():
            code = int(exit_file.read_text().strip() or 1)
            if code == 0:
                return {"state": "COMPLETED", "exit_code": 0, "reason": None, "log_tail": tail}
            state = "CANCELLED" if cancel else "FAILED"
            return {"state": state, "exit_code": code, "reason": f"the job exited {code}", "log_tail": tail}
        for _id, slurm_state, exit_code in self.slurm.accounted(job_id=job_id):
            word = slurm_state.split()[0]
            state = FINAL_STATES.get(word) or QUEUE_STATES.get(word, "RUNNING")
            code = int(exit_code.split(":")[0]) if exit_code.split(":")[0].isdigit() else None
            reason = None if state == "COMPLETED" else f"Slurm job {job_id} ended {slurm_state} (exit code {exit_code})"
            return {"state": state, "exit_code": code, "reason": reason if state in TERMINAL_STATES else None,
                    "log_tail": tail}
        if cancel:
            return {"state": "CANCELLED", "exit_code": None, "reason": "cancelled (scancel)", "log_tail": tail}
        return {"state": "FAILED", "exit_code": None, "log_tail": tail,
                "reason": f"Slurm no longer knows job {job_id}, and it left no exit code (its node failed?)"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--config", type=Path, required=True, help="job_agent.json")
    parser.add_argument("--once", action="store_true", help="poll once and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    config = AgentConfig.load(args.config)
    config.work_dir.mkdir(parents=True, exist_ok=True)
    agent = JobAgent(config)
    if args.once:
        agent.poll_once()
    else:
        agent.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
