"""The HyperPod job agent (include/scripts/hyperpod/job_agent.py) in this process, against localaws's S3 and
localaws's Slurm shims on PATH: exactly one Slurm job per spec, across a crash between sbatch and the state write."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import uuid
from pathlib import Path

import pytest
from hyperpod_helpers import FAKE_TRAIN, SCRIPTS, make_bundle, wait_for

from localaws import slurm_shims


@pytest.fixture(scope="module")
def job_agent():
    spec = importlib.util.spec_from_file_location("job_agent", SCRIPTS / "job_agent.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["job_agent"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("job_agent", None)


@pytest.fixture
def slurm(tmp_path, monkeypatch, localaws) -> Path:
    """Slurm's commands on PATH (localaws's shims), recording in ``<tmp>/slurm``; AWS calls go to localaws."""
    folder, bin_dir = tmp_path / "slurm", tmp_path / "bin"
    bin_dir.mkdir()
    for name in slurm_shims.COMMANDS:
        path = bin_dir / name
        path.write_text(slurm_shims.shim_text(name, folder))
        path.chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]))
    monkeypatch.setenv("AWS_ENDPOINT_URL", localaws.endpoint_url)
    return folder


@pytest.fixture
def jobs(boto_client, tmp_path, job_agent, slurm):
    s3 = boto_client("s3")
    bucket = f"agent-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="code/bundle.zip", Body=make_bundle(FAKE_TRAIN))
    config = job_agent.AgentConfig(jobs_uri=f"s3://{bucket}/hp", region="us-east-1", work_dir=tmp_path / "fsx",
                                   poll_seconds=0.05)  # fmt: skip

    class Jobs:
        def __init__(self):
            self.s3, self.bucket, self.config = s3, bucket, config

        def agent(self):
            return job_agent.JobAgent(config, s3=s3)

        def put_spec(self, job_key: str, *args: str, env: dict | None = None, bundle: str = "bundle.zip",
                     sbatch_args: tuple = ()) -> None:  # fmt: skip
            spec = {"job_key": job_key, "bundle_uri": f"s3://{bucket}/code/{bundle}",
                    "command": ["python3", "train.py", "--output-uri", f"s3://{bucket}/models/{job_key}", *args],
                    "env": env or {"GREETING": "hello world"}, "nodes": 1, "time_limit_minutes": 5,
                    "sbatch_args": list(sbatch_args), "installed_modules": []}  # fmt: skip
            s3.put_object(Bucket=bucket, Key=f"hp/jobs/{job_key}.json", Body=json.dumps(spec).encode(), IfNoneMatch="*")

        def state(self, job_key: str) -> dict | None:
            try:
                return json.loads(s3.get_object(Bucket=bucket, Key=f"hp/state/{job_key}.json")["Body"].read())
            except s3.exceptions.NoSuchKey:
                return None

        def sbatch_count(self, job_key: str) -> int:
            path = slurm / "sbatch.log"
            lines = path.read_text().splitlines() if path.exists() else []
            return sum(1 for line in lines if json.loads(line)["name"] == job_key)

        def run_until_done(self, agent, job_key: str) -> dict:
            def done():
                agent.poll_once()
                state = self.state(job_key)
                return state if state and state["state"] in ("COMPLETED", "FAILED", "CANCELLED") else None

            return wait_for(done, timeout=60, what=f"job {job_key} to end")

    return Jobs()


def test_a_crash_between_sbatch_and_the_state_write_adopts_the_queued_job(jobs, monkeypatch):
    job_key = "ftp-crash"
    jobs.put_spec(job_key)
    crashing = jobs.agent()

    def crash(*args, **kwargs):
        raise SystemExit("the agent died right after sbatch")

    monkeypatch.setattr(crashing, "write_state", crash)
    with pytest.raises(SystemExit):
        crashing.handle(job_key)
    assert jobs.sbatch_count(job_key) == 1 and jobs.state(job_key) is None

    restarted = jobs.agent()  # no state object: it finds the Slurm job by its name instead of submitting
    record = jobs.run_until_done(restarted, job_key)
    assert (record["state"], record["slurm_job_id"], record["exit_code"]) == ("COMPLETED", "1", 0)
    assert jobs.sbatch_count(job_key) == 1


def test_the_batch_script_runs_srun_auto_resume_in_the_bundle(jobs):
    job_key = "ftp-script"
    jobs.put_spec(job_key)
    agent = jobs.agent()
    record = jobs.run_until_done(agent, job_key)
    assert record["state"] == "COMPLETED" and record["log_tail"][-1] == "rank 0 done"
    script = (jobs.config.work_dir / job_key / "job.sbatch").read_text()
    assert "srun --auto-resume=1 --nodes=1 --ntasks-per-node=1 --kill-on-bad-exit=1 python3 train.py" in script
    assert "export GREETING='hello world'" in script
    assert (jobs.config.work_dir / job_key / "exit_code.1").read_text().strip() == "0"
    restarted = jobs.agent()  # a job with a final state is left alone
    restarted.poll_once()
    assert jobs.sbatch_count(job_key) == 1 and job_key in restarted.finished


def test_job_dir_stands_for_the_jobs_folder_on_shared_storage(jobs):
    job_key = "ftp-job-dir"
    jobs.put_spec(job_key, "--sleep", "0", env={"CHECKPOINTS": "{job_dir}/checkpoints"})
    jobs.run_until_done(jobs.agent(), job_key)
    script = (jobs.config.work_dir / job_key / "job.sbatch").read_text()
    job_dir = jobs.config.work_dir / job_key
    assert f"export JOB_DIR={job_dir}" in script and f"export CHECKPOINTS={job_dir}/checkpoints" in script


def test_a_cancel_before_submission_submits_nothing(jobs):
    job_key = "ftp-early-cancel"
    jobs.put_spec(job_key)
    jobs.s3.put_object(Bucket=jobs.bucket, Key=f"hp/cancel/{job_key}", Body=b"")
    jobs.agent().poll_once()
    assert jobs.state(job_key)["state"] == "CANCELLED" and jobs.sbatch_count(job_key) == 0


def test_a_failing_job_reports_its_exit_code_and_tail(jobs):
    job_key = "ftp-fails"
    jobs.put_spec(job_key, "--fail")
    record = jobs.run_until_done(jobs.agent(), job_key)
    assert (record["state"], record["exit_code"], record["reason"]) == ("FAILED", 1, "the job exited 1")
    assert record["log_tail"][-1] == "RuntimeError: the fake trainer failed on purpose"


def test_a_job_slurm_lost_is_failed(jobs, slurm):
    """Its runner gone without a final state (a node that died): NODE_FAIL in sacct, FAILED for Airflow."""
    job_key = "ftp-lost"
    jobs.put_spec(job_key, "--sleep", "30")
    agent = jobs.agent()
    agent.poll_once()
    record = json.loads((slurm / "jobs" / "1.json").read_text())
    wait_for(lambda: json.loads((slurm / "jobs" / "1.json").read_text()).get("state") == "RUNNING", what="RUNNING")
    os.killpg(json.loads((slurm / "jobs" / "1.json").read_text())["runner_pid"], 9)
    final = jobs.run_until_done(agent, job_key)
    assert final["state"] == "FAILED" and "NODE_FAIL" in final["reason"]
    assert record["name"] == job_key


def test_a_spec_that_cannot_run_is_failed_not_retried_forever(jobs):
    jobs.put_spec("ftp-no-bundle", bundle="missing.zip")
    jobs.s3.put_object(Bucket=jobs.bucket, Key="code/not-a-zip.zip", Body=b"plain text")
    jobs.put_spec("ftp-bad-bundle", bundle="not-a-zip.zip")
    jobs.put_spec("ftp-bad-option", sbatch_args=("bad-option",))  # sbatch: no such script
    agent = jobs.agent()
    for _ in range(3):
        agent.poll_once()
    assert jobs.state("ftp-no-bundle")["reason"].startswith("cannot read the bundle")
    assert jobs.state("ftp-bad-bundle")["reason"].startswith("the spec cannot run: BadZipFile")
    assert jobs.state("ftp-bad-option")["reason"].startswith("sbatch failed 3 times")
    assert {jobs.state(key)["state"] for key in ("ftp-no-bundle", "ftp-bad-bundle", "ftp-bad-option")} == {"FAILED"}
