"""A real local Airflow (api-server, scheduler, dag-processor, triggerer) wired to localaws.

Used by ``make demo`` and by the end-to-end test. It starts each process in its own session so that
stopping kills exactly what it started, and talks to Airflow only through its public REST API, as the UI does.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
ADMIN_USER = "admin"


class StackError(RuntimeError):
    """The local stack could not start or answer; the message says which part and where its log is."""


@dataclass
class AirflowStack:
    home: Path
    localaws_url: str
    port: int = 8080
    host: str = "127.0.0.1"
    config_path: Path | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    _token: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def password_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json.generated"

    def env(self) -> dict[str, str]:
        """Airflow settings for a self-contained local stack: SQLite, LocalExecutor, fast polling."""
        home = self.home
        airflow_bin = Path(sys.executable).parent
        env = {
            **os.environ,
            "PATH": f"{airflow_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.password_file),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__API__HOST": self.host,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API_AUTH__JWT_SECRET": self._secret("jwt_secret"),
            "AIRFLOW__API__SECRET_KEY": self._secret("api_secret_key"),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "True",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            **({"FINETUNE_PIPELINE_CONFIG": str(self.config_path)} if self.config_path else {}),
            # The demo's AWS is localaws: these keys are fake, and the connection below carries the endpoint.
            "AWS_ACCESS_KEY_ID": "localaws",
            "AWS_SECRET_ACCESS_KEY": "localaws",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        env.pop("AWS_PROFILE", None)
        return env

    def _secret(self, name: str) -> str:
        """A random secret per stack home, shared by all four processes (they must agree on it)."""
        path = self.home / f".{name}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text()

    def _airflow(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), *args],
            env=self.env(), capture_output=True, text=True,
        )
        if check and result.returncode != 0:
            raise StackError(f"'airflow {' '.join(args[:2])}' failed:\n{result.stderr[-3000:]}")
        return result

    def prepare(self, source_conn: dict | None = None) -> None:
        """Create the metadata DB, the admin login and the connections (idempotent).

        :param source_conn: The ``source_db`` connection (conn_type postgres, host, port, login, password,
            schema); without one it names a server that does not exist, so DMS still gets an endpoint.
        """
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.password_file.exists():
            self.password_file.write_text(json.dumps({ADMIN_USER: secrets.token_urlsafe(12)}))
            self.password_file.chmod(0o600)
        self._airflow("db", "migrate")
        from finetune_pipeline.aws.utils.retries import CONNECTION_RETRIES

        aws_conn = {
            "conn_type": "aws",
            "login": "localaws",
            "password": "localaws",
            "extra": {
                "endpoint_url": self.localaws_url,
                "region_name": "us-east-1",
                # The retry policy a real deployment's connection carries too (README, "Retries").
                "config_kwargs": {"retries": CONNECTION_RETRIES},
            },
        }
        source_conn = source_conn or {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432,
                                      "login": "replicator", "password": secrets.token_urlsafe(12), "schema": "appdb"}
        # Imported from a private file, so no password shows on a command line.
        connections_file = self.home / "connections.json"
        connections_file.touch(mode=0o600)
        aws_conn["extra"] = json.dumps(aws_conn["extra"])
        connections_file.write_text(json.dumps({"aws_default": aws_conn, "source_db": source_conn}))
        self._airflow("connections", "import", "--overwrite", str(connections_file))

    def start(self) -> None:
        logs = self.home / "process-logs"
        logs.mkdir(parents=True, exist_ok=True)
        for component in AIRFLOW_COMPONENTS:
            args = [str(Path(sys.executable).parent / "airflow"), component]
            if component == "api-server":
                args += ["--host", self.host, "--port", str(self.port), "--workers", "1"]
            log_file = open(logs / f"{component}.log", "ab")  # noqa: SIM115 - owned by the child process
            # A new session per child: stop() kills its whole group and never touches anything else.
            self.processes[component] = subprocess.Popen(
                args, env=self.env(), stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.wait_healthy()

    def log_path(self, component: str) -> Path:
        return self.home / "process-logs" / f"{component}.log"

    def check_alive(self) -> None:
        for component, process in self.processes.items():
            if process.poll() is not None:
                tail = self.log_path(component).read_text(errors="replace")[-3000:]
                raise StackError(f"airflow {component} exited with {process.returncode}:\n{tail}")

    def wait_healthy(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                health = self._request("GET", "/api/v2/monitor/health", auth=False)
                if health.get("metadatabase", {}).get("status") == "healthy":
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1)  # polling interval while the API server boots
        raise StackError(f"the API server did not become healthy in {timeout:.0f}s; see {self.log_path('api-server')}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()

    def admin_password(self) -> str:
        return json.loads(self.password_file.read_text())[ADMIN_USER]

    def _request(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> dict:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
        return json.loads(text) if text else {}

    def token(self) -> str:
        if self._token is None:
            body = {"username": ADMIN_USER, "password": self.admin_password()}
            self._token = self._request("POST", "/auth/token", body, auth=False)["access_token"]
        return self._token

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        """Call the public REST API (``/api/v2``) as the UI would."""
        try:
            return self._request(method, f"/api/v2{path}", body)
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:2000]
            raise StackError(f"{method} /api/v2{path} answered {error.code}: {detail}") from None

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        missing = set(dag_ids)
        while time.monotonic() < deadline:
            self.check_alive()
            listed = {dag["dag_id"] for dag in self.api("GET", "/dags?limit=100")["dags"]}
            missing = set(dag_ids) - listed
            errors = self.api("GET", "/importErrors")["import_errors"]
            if errors:
                details = "\n".join(f"{e['filename']}: {e['stack_trace'][-1500:]}" for e in errors)
                raise StackError(f"DAG import errors:\n{details}")
            if not missing:
                return
            time.sleep(2)  # polling interval while the dag-processor parses
        raise StackError(f"DAGs not parsed after {timeout:.0f}s: {sorted(missing)}")

    def unpause(self, dag_id: str) -> None:
        self.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}})
        return run["dag_run_id"]

    def dag_runs(self, dag_id: str) -> list[dict]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns?order_by=-run_after&limit=20")["dag_runs"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value"):
        quoted = urllib.request.quote(run_id, safe="")
        entry = self.api("GET", f"/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{task_id}/xcomEntries/{key}")
        return entry["value"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        quoted = urllib.request.quote(run_id, safe="")
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{quoted}/taskInstances?limit=200")["task_instances"]
