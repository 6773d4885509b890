"""localaws's Slurm commands, run as a node runs them: sbatch starts a job, squeue/sacct report it, scancel
ends it, srun starts one task per node."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hyperpod_helpers import wait_for

from localaws import slurm_shims


@pytest.fixture
def slurm(tmp_path):
    folder, bin_dir = tmp_path / "slurm", tmp_path / "bin"
    bin_dir.mkdir()
    for name in slurm_shims.COMMANDS:
        (bin_dir / name).write_text(slurm_shims.shim_text(name, folder))
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), capture_output=True, text=True, env=env, cwd=tmp_path, check=check)

    run.folder, run.dir = folder, tmp_path
    return run


def batch(slurm, body: str) -> Path:
    path = slurm.dir / "job.sh"
    path.write_text(f"#!/bin/bash\n{body}\n")
    return path


def sacct_state(slurm, job_id: str) -> str:
    return slurm("sacct", "-n", "-P", "-X", f"--jobs={job_id}", "--format=State,ExitCode").stdout.strip()


def test_a_batch_job_runs_and_is_accounted(slurm):
    script = batch(slurm, 'echo "job $SLURM_JOB_ID named $SLURM_JOB_NAME on $SLURM_NNODES nodes"\n'
                          'srun --auto-resume=1 --nodes=2 bash -c \'echo "task $SLURM_PROCID/$SLURM_NTASKS"\'')
    submitted = slurm("sbatch", "--parsable", "--job-name=k1", "--nodes=2", "--output=out-%j.txt", str(script))
    job_id = submitted.stdout.strip()
    assert job_id == "1"
    wait_for(lambda: sacct_state(slurm, job_id) == "COMPLETED|0:0", what="COMPLETED")
    lines = sorted((slurm.dir / "out-1.txt").read_text().splitlines())
    assert lines == ["job 1 named k1 on 2 nodes", "task 0/2", "task 1/2"]
    assert slurm("squeue", "-h", "--name=k1", "--format=%i").stdout == ""  # ended jobs leave the queue
    assert slurm("sacct", "-n", "-P", "-X", "--name=k1", "--format=JobID,JobName").stdout.strip() == "1|k1"


def test_a_running_job_is_queued_and_scancel_ends_it(slurm):
    script = batch(slurm, "sleep 60 & echo $! > child.pid; wait")
    job_id = slurm("sbatch", "--parsable", "--job-name=k2", str(script)).stdout.strip()
    wait_for(lambda: slurm("squeue", "-h", "--jobs", job_id, "--format=%i|%T").stdout.strip() == f"{job_id}|RUNNING",
             what="RUNNING")  # fmt: skip
    child = int(wait_for(lambda: (slurm.dir / "child.pid").exists() and (slurm.dir / "child.pid").read_text()))
    slurm("scancel", job_id)
    assert sacct_state(slurm, job_id) == "CANCELLED|0:0"
    wait_for(lambda: not _alive(child), what="the job's processes to end")


def test_a_failing_job_and_the_time_limit(slurm):
    failing = slurm("sbatch", "--parsable", str(batch(slurm, "exit 3"))).stdout.strip()
    wait_for(lambda: sacct_state(slurm, failing) == "FAILED|3:0", what="FAILED")
    slow = slurm("sbatch", "--parsable", "--time=0:0:1", str(batch(slurm, "sleep 30"))).stdout.strip()
    wait_for(lambda: sacct_state(slurm, slow).startswith("TIMEOUT"), timeout=15, what="TIMEOUT")


def test_srun_refuses_what_hyperpod_does_not_take(slurm):
    result = slurm("srun", "--auto-resume=2", "true", check=False)
    assert result.returncode == 1 and "--auto-resume must be 1" in result.stderr
    ranks = slurm("srun", "--kill-on-bad-exit=1", "--nodes=3", "bash", "-c", "exit $SLURM_PROCID", check=False)
    assert ranks.returncode in (1, 2)  # the first task that failed
    result = slurm("sbatch", "missing.sh", check=False)
    assert result.returncode == 1 and "Unable to open file missing.sh" in result.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return not stat.read().split(") ", 1)[1].startswith("Z")
