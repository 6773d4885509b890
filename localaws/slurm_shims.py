"""Slurm's commands (``sbatch``, ``squeue``, ``sacct``, ``scancel``, ``srun``) for a localaws HyperPod cluster.

A node's shim is a two-line script that runs :func:`main` with the command's name and the cluster's Slurm
folder (``<nodes root>/<cluster id>-slurm``), which holds one JSON record per job (``jobs/<id>.json``), the
next job ID, and ``sbatch.log`` (one line per accepted submission, which tests count). Standard library only:
it runs in the node's processes, not in the server.

- ``sbatch [--parsable] [--job-name=N] [--nodes=N] [--time=M] [--output=F] [--chdir=D] script [args]``: refuses
  more ``--nodes`` than the cluster has outside the submitting node's group (its compute nodes), records
  the job ``PENDING``, starts a runner in a session of its own (so ``scancel`` can end the whole job) and prints
  the job ID; the runner marks it ``RUNNING``, runs the script with ``SLURM_JOB_ID`` and friends, and records
  ``COMPLETED`` or ``FAILED`` with the exit code, or ``TIMEOUT`` after ``--time`` minutes
  (https://slurm.schedmd.com/sbatch.html).
- ``srun [options] command``: one task per node (``--nodes``, else the job's), in parallel, each with
  ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_NODEID``; exits with the first failing task's code.
  ``--auto-resume`` is HyperPod's flag and must be ``1``
  (https://docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-hyperpod-resiliency-slurm-auto-resume.html);
  no node is ever replaced here, so it changes nothing.
- ``squeue`` / ``sacct``: the records, with ``--name``, ``--jobs``, ``--format``, ``--noheader``,
  ``--parsable2``; a job whose runner is gone without a final state (localaws restarted) is ``NODE_FAIL``.
- ``scancel <id>...``: records ``CANCELLED`` and ends the job's process group.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ACTIVE = ("PENDING", "RUNNING")


# Records


@contextlib.contextmanager
def _locked(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _record_path(folder: Path, job_id: str) -> Path:
    return folder / "jobs" / f"{job_id}.json"


def _read(folder: Path, job_id: str) -> dict | None:
    try:
        return json.loads(_record_path(folder, job_id).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _write(folder: Path, record: dict) -> None:
    path = _record_path(folder, str(record["id"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(record))
    partial.replace(path)


def _update(folder: Path, job_id: str, unless_final: bool = True, **fields) -> dict | None:
    with _locked(folder):
        record = _read(folder, job_id)
        if record is None or (unless_final and record["state"] not in ACTIVE):
            return record
        record.update(fields)
        _write(folder, record)
        return record


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is not a running job.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def records(folder: Path) -> list[dict]:
    """Every job's record, oldest first; an active job whose runner died is marked ``NODE_FAIL``."""
    result = []
    for path in sorted((folder / "jobs").glob("*.json"), key=lambda p: int(p.stem)):
        record = _read(folder, path.stem)
        if record is None:
            continue
        if record["state"] in ACTIVE and record.get("runner_pid") and not _alive(record["runner_pid"]):
            record = _update(folder, path.stem, state="NODE_FAIL", exit_code="0:9", ended=_now()) or record
        result.append(record)
    return result


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")


# Options


def _options(args: list[str], takes_value: set[str], short: dict[str, str]) -> tuple[dict, list[str]]:
    """``--name=value``, ``--name value``, ``-x value`` and flags, up to the first operand."""
    options: dict[str, str | bool] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            index += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        if arg.startswith("--"):
            name, has_value, value = arg[2:].partition("=")
        else:
            name, has_value, value = short.get(arg[1:2], arg[1:2]), bool(arg[2:]), arg[2:]
        if name in takes_value and not has_value:
            index += 1
            if index >= len(args):
                raise SystemExit(f"option --{name} needs a value")
            value = args[index]
        options[name] = value if (has_value or name in takes_value) else True
        index += 1
    return options, args[index:]


# Commands


def sbatch(folder: Path, args: list[str]) -> int:
    options, rest = _options(
        args, {"job-name", "nodes", "time", "output", "chdir", "ntasks", "ntasks-per-node", "gpus-per-node"},
        {"J": "job-name", "N": "nodes", "t": "time", "o": "output", "D": "chdir", "n": "ntasks"},
    )
    if not rest:
        print("sbatch: error: no batch script given (localaws runs script files only)", file=sys.stderr)
        return 1
    nodes, available = int(options.get("nodes", 1)), _compute_nodes(folder)
    if available is not None and nodes > available:
        # What slurmctld answers for more nodes than the partition has (https://slurm.schedmd.com/sbatch.html).
        print("sbatch: error: Batch job submission failed: Requested node configuration is not available",
              file=sys.stderr)  # fmt: skip
        return 1
    script = Path(options.get("chdir", ".")) / rest[0] if not os.path.isabs(rest[0]) else Path(rest[0])
    if not script.is_file():
        print(f"sbatch: error: Unable to open file {rest[0]}", file=sys.stderr)
        return 1
    with _locked(folder):
        counter = folder / "next_job_id"
        job_id = int(counter.read_text()) if counter.exists() else 1
        counter.write_text(str(job_id + 1))
        record = {
            "id": job_id,
            "name": options.get("job-name") or script.name,
            "nodes": int(options.get("nodes", 1)),
            "time_minutes": _minutes(options.get("time")),
            "script": str(script),
            "args": rest[1:],
            "chdir": options.get("chdir") or os.getcwd(),
            "output": options.get("output") or f"slurm-{job_id}.out",
            "state": "PENDING",
            "exit_code": "0:0",
            "submitted": _now(),
        }
        _write(folder, record)
        with open(folder / "sbatch.log", "a") as calls:
            calls.write(json.dumps({"id": job_id, "name": record["name"], "at": _now()}) + "\n")
    runner = subprocess.Popen(
        [sys.executable, "-c", _RUNNER, str(Path(__file__).resolve().parents[1]), str(folder), str(job_id)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    _update(folder, str(job_id), runner_pid=runner.pid)
    print(job_id if options.get("parsable") else f"Submitted batch job {job_id}", flush=True)
    return 0


_RUNNER = (
    "import sys; sys.path.insert(0, sys.argv[1]); from localaws.slurm_shims import run_job; run_job(*sys.argv[2:])"
)


def _compute_nodes(folder: Path) -> int | None:
    """The cluster's Slurm compute nodes: every node outside the submitting node's instance group (its
    controller's), from ``nodes.json``; ``None`` when there is no cluster to count (a bare test folder)."""
    try:
        nodes = json.loads((folder / "nodes.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    own = next((n["group"] for n in nodes if n["node_id"] == os.environ.get("LOCALAWS_NODE_ID")), None)
    return sum(1 for n in nodes if n["group"] != own) if own else None


def _minutes(value) -> float | None:
    """Slurm's --time: minutes, or [days-]hours:minutes:seconds."""
    if not value:
        return None
    text = str(value)
    days, _, clock = text.rpartition("-") if "-" in text else ("0", "", text)
    parts = [float(p) for p in clock.split(":")]
    if len(parts) == 1:
        minutes = parts[0]
    elif len(parts) == 2:
        minutes = parts[0] + parts[1] / 60
    else:
        minutes = parts[0] * 60 + parts[1] + parts[2] / 60
    return float(days or 0) * 1440 + minutes


def run_job(folder: str, job_id: str) -> None:
    """The job's runner (in a session of its own): run the batch script, record how it ended."""
    root = Path(folder)
    record = _update(root, job_id, state="RUNNING", started=_now(), runner_pid=os.getpid())
    if record is None or record["state"] != "RUNNING":
        return
    output = record["output"].replace("%j", job_id).replace("%x", record["name"])
    output_path = Path(output) if os.path.isabs(output) else Path(record["chdir"]) / output
    env = {
        **os.environ,
        "SLURM_JOB_ID": job_id,
        "SLURM_JOBID": job_id,
        "SLURM_JOB_NAME": record["name"],
        "SLURM_JOB_NUM_NODES": str(record["nodes"]),
        "SLURM_NNODES": str(record["nodes"]),
        "SLURM_SUBMIT_DIR": record["chdir"],
    }
    with open(output_path, "ab") as out:
        process = subprocess.Popen(
            ["/bin/bash", record["script"], *record["args"]], cwd=record["chdir"], env=env,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
        limit = record.get("time_minutes")
        try:
            code = process.wait(timeout=limit * 60 if limit else None)
        except subprocess.TimeoutExpired:
            _update(root, job_id, state="TIMEOUT", exit_code="0:15", ended=_now())
            os.killpg(os.getpid(), signal.SIGTERM)
            return
    if code == 0:
        _update(root, job_id, state="COMPLETED", exit_code="0:0", ended=_now())
    elif code < 0:
        _update(root, job_id, state="FAILED", exit_code=f"0:{-code}", ended=_now())
    else:
        _update(root, job_id, state="FAILED", exit_code=f"{code}:0", ended=_now())


def scancel(folder: Path, args: list[str]) -> int:
    _options_, ids = _options(args, {"signal", "name"}, {"s": "signal", "n": "name"})
    for job_id in ids:
        record = _update(folder, job_id, state="CANCELLED", ended=_now())
        if record is None:
            print(f"scancel: error: Invalid job id {job_id}", file=sys.stderr)
            continue
        pid = record.get("runner_pid")
        if record["state"] == "CANCELLED" and pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    return 0


def _select(folder: Path, options: dict) -> list[dict]:
    jobs = records(folder)
    if options.get("name"):
        names = set(str(options["name"]).split(","))
        jobs = [job for job in jobs if job["name"] in names]
    if options.get("jobs"):
        wanted = set(str(options["jobs"]).split(","))
        jobs = [job for job in jobs if str(job["id"]) in wanted]
    return jobs


SQUEUE_FIELDS = {"i": "id", "j": "name", "T": "state", "r": "reason", "D": "nodes"}


def squeue(folder: Path, args: list[str]) -> int:
    options, _ = _options(args, {"name", "jobs", "format", "states"},
                          {"n": "name", "j": "jobs", "o": "format", "t": "states", "h": "noheader"})
    fmt = str(options.get("format") or "%i %j %T %r")
    jobs = [job for job in _select(folder, options) if job["state"] in ACTIVE]
    lines = [] if options.get("noheader") else [_format(fmt, {"id": "JOBID", "name": "NAME", "state": "STATE",
                                                                 "reason": "REASON", "nodes": "NODES"})]
    for job in jobs:
        lines.append(_format(fmt, {**job, "reason": "None" if job["state"] == "RUNNING" else "Priority"}))
    if lines:
        print("\n".join(lines))
    return 0


def _format(fmt: str, values: dict) -> str:
    out, index = [], 0
    while index < len(fmt):
        if fmt[index] == "%" and index + 1 < len(fmt):
            out.append(str(values.get(SQUEUE_FIELDS.get(fmt[index + 1], ""), "")))
            index += 2
        else:
            out.append(fmt[index])
            index += 1
    return "".join(out)


SACCT_FIELDS = {"jobid": "id", "jobname": "name", "state": "state", "exitcode": "exit_code",
                "nnodes": "nodes", "start": "started", "end": "ended", "submit": "submitted"}


def sacct(folder: Path, args: list[str]) -> int:
    options, _ = _options(args, {"name", "jobs", "format", "starttime", "endtime", "state"},
                          {"j": "jobs", "o": "format", "S": "starttime", "E": "endtime", "n": "noheader",
                           "P": "parsable2", "X": "allocations", "s": "state"})
    fields = [f.strip().lower() for f in str(options.get("format") or "JobID,JobName,State,ExitCode").split(",")]
    unknown = [f for f in fields if f not in SACCT_FIELDS]
    if unknown:
        print(f"sacct: error: Invalid field requested: \"{unknown[0]}\"", file=sys.stderr)
        return 1
    separator = "|" if options.get("parsable2") else " "
    lines = [] if options.get("noheader") else [separator.join(f.upper() for f in fields)]
    for job in _select(folder, options):
        lines.append(separator.join(str(job.get(SACCT_FIELDS[f]) or "") for f in fields))
    if lines:
        print("\n".join(lines))
    return 0


def srun(folder: Path, args: list[str]) -> int:
    options, command = _options(
        args,
        {"auto-resume", "nodes", "ntasks", "ntasks-per-node", "chdir", "output", "job-name", "gpus-per-node",
         "cpus-per-task", "export", "mpi"},
        {"N": "nodes", "n": "ntasks", "D": "chdir", "o": "output", "J": "job-name", "c": "cpus-per-task",
         "K": "kill-on-bad-exit"},
    )
    if "auto-resume" in options and str(options["auto-resume"]) != "1":
        print(f"srun: error: --auto-resume must be 1, got {options['auto-resume']!r}", file=sys.stderr)
        return 1
    if not command:
        print("srun: fatal: No command given to execute.", file=sys.stderr)
        return 1
    nodes = int(options.get("nodes") or os.environ.get("SLURM_NNODES") or 1)
    per_node = int(options.get("ntasks-per-node") or 1)
    tasks = int(options.get("ntasks") or nodes * per_node)
    cwd = options.get("chdir") or os.getcwd()
    processes = []
    for rank in range(tasks):
        env = {**os.environ, "SLURM_PROCID": str(rank), "SLURM_NTASKS": str(tasks), "SLURM_NPROCS": str(tasks),
               "SLURM_NODEID": str(rank // per_node), "SLURM_LOCALID": str(rank % per_node),
               "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_STEP_NUM_NODES": str(nodes), "SLURM_STEP_ID": "0"}
        processes.append(subprocess.Popen(command, cwd=cwd, env=env))
    code = 0
    pending = list(processes)
    while pending:
        for process in list(pending):
            result = process.poll()
            if result is None:
                continue
            pending.remove(process)
            if result != 0 and code == 0:
                code = result if result > 0 else 128 - result
                if options.get("kill-on-bad-exit") not in (None, "0"):
                    for other in pending:
                        other.terminate()
        time.sleep(0.02)
    return code


COMMANDS = {"sbatch": sbatch, "squeue": squeue, "sacct": sacct, "scancel": scancel, "srun": srun}


def main(name: str, folder: str, args: list[str] | None = None) -> int:
    return COMMANDS[name](Path(folder), sys.argv[1:] if args is None else args)


def shim_text(name: str, folder: Path) -> str:
    """The executable a node gets for Slurm command ``name``."""
    package_parent = Path(__file__).resolve().parents[1]
    return (
        f"#!{sys.executable}\n"
        f"import sys; sys.path.insert(0, {str(package_parent)!r})\n"
        f"from localaws.slurm_shims import main; sys.exit(main({name!r}, {str(folder)!r}))\n"
    )
