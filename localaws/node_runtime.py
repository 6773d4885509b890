"""The scripts that AWS runs on an instance (EC2 user data, HyperPod lifecycle scripts) run here as local
processes, against this localaws.

A node is a folder (its root file system stands in: the script's working directory and ``HOME``) and the
process tree of its script. The script gets what an instance with an instance profile gets: credentials
and a region in its environment, ``AWS_ENDPOINT_URL`` pointing at this localaws (so boto3 and the AWS CLI
inside reach it), and commands on ``PATH`` that stand in for the instance's own (``shutdown``, ``sbatch``:
each service passes its shims). Python is this interpreter, so the node has what this environment has
installed, as a Deep Learning AMI has its frameworks.

The process is started in its own session, so that stopping a node kills everything the script started.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# What an instance profile gives a process on the instance; localaws accepts any credentials.
NODE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "localaws", "AWS_SECRET_ACCESS_KEY": "localaws"}


@dataclass
class NodeRuntime:
    """Where nodes live (one folder each) and the endpoint their scripts talk to."""

    endpoint_url: str | None = None
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="localaws-nodes-")))
    _processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def node_dir(self, node_id: str) -> Path:
        path = self.root / node_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start(
        self,
        node_id: str,
        script: str,
        *,
        region: str,
        shims: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> subprocess.Popen:
        """Run ``script`` (its text, with a ``#!`` line) on node ``node_id``; its output goes to
        ``<node>/script.log``. ``shims`` maps a command name to the text of the executable that stands in."""
        if self.endpoint_url is None:
            raise RuntimeError("localaws is not serving yet: a node has no endpoint to talk to")
        home = self.node_dir(node_id)
        bin_dir = home / ".localaws-bin"
        bin_dir.mkdir(exist_ok=True)
        for name, text in (shims or {}).items():
            _write_executable(bin_dir / name, text)
        path = _write_executable(home / "script", script)
        environment = {
            **{key: value for key, value in os.environ.items() if not key.startswith("AWS_")},
            **NODE_CREDENTIALS,
            "AWS_DEFAULT_REGION": region,
            "AWS_REGION": region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "HOME": str(home),
            "LOCALAWS_NODE_ID": node_id,
            # The shims first, then this interpreter (``python3`` is this environment's).
            "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            **(env or {}),
        }
        with open(home / "script.log", "ab") as output:
            process = subprocess.Popen(
                [str(path), *(args or [])], cwd=home, env=environment, stdout=output, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self._processes[node_id] = process
        log.info("node %s: started its script (pid %d), output in %s", node_id, process.pid, home / "script.log")
        return process

    def running(self, node_id: str) -> bool:
        process = self._processes.get(node_id)
        return process is not None and process.poll() is None

    def exit_code(self, node_id: str) -> int | None:
        process = self._processes.get(node_id)
        return None if process is None else process.poll()

    def stop(self, node_id: str) -> None:
        """End the node's script and everything it started (its session)."""
        process = self._processes.pop(node_id, None)
        if process is None:
            return
        # The session outlives its leader when the script left something running in the background (a
        # daemon it started, as a lifecycle script does): end what is left of it even after the script exited.
        exited = process.poll() is not None
        try:
            os.killpg(process.pid, signal.SIGTERM)
            if not exited:
                process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
        log.info("node %s: stopped", node_id)

    def stop_all(self) -> None:
        for node_id in list(self._processes):
            self.stop(node_id)

    def __getstate__(self) -> dict:
        # A saved state keeps the folders, not the processes: after a restart, nodes run no script.
        return {"endpoint_url": None, "root": self.root, "_processes": {}}


def _write_executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path
