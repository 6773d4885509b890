"""The training DAG's own steps: the run's settings from its form, the retrain policy, preflight, the local
backend and the model record. The AWS backends' launches and waits are operators in :mod:`finetune_pipeline.aws`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections import deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from botocore.exceptions import ClientError

from finetune_pipeline.pipeline import credentials_endpoint, retrain, training_bundle
from finetune_pipeline.pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

_OUTPUT_TAIL_LINES = 40


# The training DAG's trigger form (its Params): a run's conf with any other key is refused, not ignored.
FORM_FIELDS = ("backend", "dataset_version", "instance_type", "instance_count", "hyperparameters",
               "max_runtime_hours", "force")


@dataclass(frozen=True)
class TrainingRun:
    """One run's settings: the trigger form's values over the config's defaults, checked."""

    backend: str
    version: str
    instance_type: str | None
    instance_count: int
    hyperparameters: dict[str, Any]
    max_runtime_hours: float
    force: bool

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> TrainingRun:
        """From preflight's XCom, which carries what some backends need beside the run (the job key)."""
        return cls(**{name: settings[name] for name in cls.__dataclass_fields__})

    @property
    def max_runtime_seconds(self) -> int:
        return int(self.max_runtime_hours * 3600)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_settings(config: PipelineConfig, params: dict[str, Any], version: str) -> TrainingRun:
    """The run's settings; a value a run can never succeed with fails here, before anything launches."""
    training = config.training
    unknown = sorted(set(params) - set(FORM_FIELDS))
    if unknown:
        raise AirflowFailException(f"unknown settings {unknown} in the run's conf; the form has {list(FORM_FIELDS)} "
                                   "(hyperparameters go inside 'hyperparameters')")
    backend = params.get("backend") or training.backend
    if backend not in training.backends:
        raise AirflowFailException(f"backend {backend!r} is not configured; this deployment has "
                                   f"{training.backends} (a backend needs its section under training: in the config)")
    defaults = {"hyperpod": (training.hyperpod.worker_instance_type, training.hyperpod.worker_count)
                if training.hyperpod else (None, 1),
                "ec2": (training.ec2.instance_type, training.ec2.instance_count) if training.ec2 else (None, 1),
                "local": (None, 1)}[backend]
    instance_type = params.get("instance_type") or defaults[0]
    count = params.get("instance_count")
    count = defaults[1] if count in (None, "") else count
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise AirflowFailException(f"instance_count must be a whole number of at least 1, got {count!r}")
    if backend == "local" and count != 1:
        raise AirflowFailException("the local backend runs one process: instance_count must be 1")
    hyperparameters = params.get("hyperparameters")
    if hyperparameters in (None, ""):
        hyperparameters = training.hyperparameters
    if isinstance(hyperparameters, str):
        try:
            hyperparameters = json.loads(hyperparameters)
        except json.JSONDecodeError as error:
            raise AirflowFailException(f"hyperparameters are not JSON: {error.msg} at character {error.pos}") from None
    if not isinstance(hyperparameters, dict):
        raise AirflowFailException(f"hyperparameters must be a JSON object, got {type(hyperparameters).__name__}")
    runtime = params.get("max_runtime_hours")
    runtime = training.max_runtime_hours if runtime in (None, "") else runtime
    limit = training.runtime_limit_hours
    if isinstance(runtime, bool) or not isinstance(runtime, int | float) or not 0 < runtime <= limit:
        raise AirflowFailException(f"max_runtime_hours must be above 0 and at most training.runtime_limit_hours "
                                   f"({training.runtime_limit_hours:g}), got {runtime!r}")
    return TrainingRun(backend, version, instance_type, count, hyperparameters, float(runtime),
                       bool(params.get("force")))


def model_prefix(config: PipelineConfig, version: str) -> str:
    return f"{config.training.models_prefix}/{version}"


def model_uri(config: PipelineConfig, version: str) -> str:
    return f"s3://{config.storage.bucket}/{model_prefix(config, version)}"


def success_key(config: PipelineConfig, version: str) -> str:
    return f"{model_prefix(config, version)}/{training_bundle.SUCCESS_MARKER}"


def _s3(config: PipelineConfig) -> S3Hook:
    return S3Hook(aws_conn_id=config.aws.conn_id, region_name=config.storage.region)


def last_trained(config: PipelineConfig, hook: S3Hook | None = None) -> tuple[str, datetime] | None:
    """The newest version with a whole model (its ``_SUCCESS``), and when that was written."""
    from finetune_pipeline.datasets.reader import version_number

    hook = hook or _s3(config)
    client = hook.get_conn()
    best = None
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=config.storage.bucket, Prefix=f"{config.training.models_prefix}/"):
        for item in page.get("Contents", []):
            version, _, name = item["Key"][len(config.training.models_prefix) + 1 :].partition("/")
            number = version_number(version)
            if name == training_bundle.SUCCESS_MARKER and number is not None and (best is None or number > best[0]):
                best = (number, version, item["LastModified"])
    return None if best is None else (best[1], best[2])


def retrain_gate(config: PipelineConfig, version: str, force: bool, now: datetime | None = None) -> dict:
    """Skip the run (saying why) unless the retrain policy, or ``force``, says this version is worth training."""
    from finetune_pipeline.datasets.reader import VersionNotFound, open_version
    from finetune_pipeline.pipeline.catalog import open_catalog

    hook = _s3(config)
    if hook.check_for_key(success_key(config, version), bucket_name=config.storage.bucket):
        raise AirflowSkipException(f"not training version {version}: it has a model already at "
                                   f"{model_uri(config, version)} (delete that folder to train it again)")
    if force:
        decision = retrain.RetrainDecision(True, "forced from the trigger form")
    else:
        previous = last_trained(config, hook)
        spec, catalog = open_catalog(config.iceberg, hook, config.storage.bucket, config.storage.dataset_prefix)
        current = open_version(catalog, spec.namespace, version)
        last = None
        if previous is not None:
            try:
                last = open_version(catalog, spec.namespace, previous[0])
            except VersionNotFound:  # retention removed it: compare as if it never was
                log.warning("the last trained version %s is no longer in the dataset", previous[0])
        decision = retrain.decide(current, last, previous[1] if previous else None, now or datetime.now(UTC),
                                  config.training.retrain)
    if not decision.train:
        raise AirflowSkipException(f"not training version {version}: {decision.reason}")
    log.info("training version %s: %s", version, decision.reason)
    return decision.to_dict()


def check_hyperparameters(config: PipelineConfig, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """Ask the configured trainer (its optional ``check_hyperparameters``) before anything launches."""
    import importlib.util

    path = config.training.entrypoint.parent / f"{config.training.trainer.replace('.', '/')}.py"
    if not path.is_file():
        log.info("trainer %s is not beside the entrypoint: its hyperparameters are checked on the nodes",
                 config.training.trainer)
        return hyperparameters
    name = f"_preflight_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    check = getattr(module, "check_hyperparameters", None)
    if check is None:
        return hyperparameters
    try:
        return check(hyperparameters)
    except ValueError as error:
        raise AirflowFailException(f"the trainer refuses these hyperparameters: {error}") from None


def check_bucket_region(config: PipelineConfig) -> None:
    """The dataset bucket must be where training runs: reading it from another region is slow and billed."""
    hook = _s3(config)
    try:
        location = hook.get_conn().get_bucket_location(Bucket=config.storage.bucket)["LocationConstraint"]
    except ClientError as error:
        raise AirflowFailException(f"cannot find the region of bucket {config.storage.bucket}: "
                                   f"{error.response['Error']['Code']}") from None
    region = location or "us-east-1"  # GetBucketLocation answers null for us-east-1
    if region != config.training.region:
        raise AirflowFailException(f"bucket {config.storage.bucket} is in {region}, but training runs in "
                                   f"{config.training.region}: the data has to be in the training region")


def check_role(config: PipelineConfig, role_arn: str) -> None:
    """The role exists, as far as this connection may ask IAM (no iam:GetRole: a warning, not a failure)."""
    iam = AwsBaseHook(aws_conn_id=config.aws.conn_id, client_type="iam").get_conn()
    name = role_arn.rsplit("/", 1)[-1]
    try:
        iam.get_role(RoleName=name)
    except ClientError as error:
        code = error.response["Error"]["Code"]
        if code == "NoSuchEntity":
            raise AirflowFailException(f"role {role_arn} does not exist") from None
        log.warning("could not check role %s (%s): going on", role_arn, code)


def check_hyperpod_instance_type(config: PipelineConfig, instance_type: str) -> None:
    """HyperPod takes the instance types in its API's ClusterInstanceType enum, and no other."""
    client = AwsBaseHook(aws_conn_id=config.aws.conn_id, client_type="sagemaker",
                         region_name=config.training.region).get_conn()
    known = client.meta.service_model.shape_for("ClusterInstanceType").enum
    if instance_type not in known:
        raise AirflowFailException(f"instance type {instance_type!r} is not a HyperPod instance type "
                                   f"(ClusterInstanceType: {', '.join(sorted(known)[:6])}, ...)")


def check_ec2(config: PipelineConfig, run: TrainingRun) -> None:
    """The EC2 launch as far as the APIs can tell: type offered in the subnet's zone, EFA, the instance
    profile, the capacity reservation (:meth:`Ec2InstancesHook.check_launch`)."""
    from finetune_pipeline.aws.hooks.ec2 import Ec2InstancesHook, Ec2PreflightError

    ec2 = config.training.ec2
    hook = Ec2InstancesHook(aws_conn_id=config.aws.conn_id, region_name=config.training.region)
    try:
        notes = hook.check_launch(instance_type=run.instance_type, instance_count=run.instance_count,
                                  subnet_id=ec2.subnet_id, instance_profile=ec2.instance_profile_arn,
                                  efa=ec2.efa_interfaces > 0, capacity_reservation_id=ec2.capacity_reservation_id,
                                  capacity_block=ec2.capacity_block)
    except Ec2PreflightError as error:
        raise AirflowFailException("the EC2 launch would fail: " + "; ".join(error.problems)) from None
    for note in notes:
        log.warning("EC2 preflight: %s", note)
    log.info("EC2 preflight passed: %d x %s", run.instance_count, run.instance_type)


def check_hyperpod_fit(config: PipelineConfig, run: TrainingRun) -> None:
    """The job runs on the cluster's worker group: the run cannot ask for another type or more nodes."""
    hyperpod = config.training.hyperpod
    if run.instance_type != hyperpod.worker_instance_type:
        raise AirflowFailException(f"the HyperPod cluster's {hyperpod.worker_group} group is "
                                   f"{hyperpod.worker_instance_type}, not {run.instance_type}: change "
                                   "training.hyperpod.worker_instance_type to train on another type")
    if run.instance_count > hyperpod.worker_count:
        raise AirflowFailException(f"the HyperPod cluster has {hyperpod.worker_count} worker node(s), the run asks "
                                   f"for {run.instance_count}: raise training.hyperpod.worker_count")


def job_key(config: PipelineConfig, version: str, run_id: str) -> str:
    """One HyperPod job per DAG run and version: a retry of the run finds its job, a new run makes a new one
    (a failed job's key never runs again)."""
    return f"{config.project}-{version}-{hashlib.sha256(run_id.encode()).hexdigest()[:10]}"


def jobs_uri(config: PipelineConfig) -> str:
    return f"s3://{config.storage.bucket}/{config.training.hyperpod.jobs_prefix}"


def hyperpod_instance_groups(config: PipelineConfig) -> list[dict]:
    """A Slurm controller group of one node and a worker group of ``worker_count`` nodes."""
    hyperpod = config.training.hyperpod
    return [
        {"InstanceGroupName": hyperpod.controller_group, "InstanceType": hyperpod.controller_instance_type,
         "InstanceCount": 1},
        {"InstanceGroupName": hyperpod.worker_group, "InstanceType": hyperpod.worker_instance_type,
         "InstanceCount": hyperpod.worker_count},
    ]


def upload_lifecycle_scripts(config: PipelineConfig) -> str:
    """The lifecycle scripts, the job agent and its config where HyperPod's nodes read them (same content,
    same keys: idempotent). The agent's config tells it where the job specs are and where jobs run."""
    hyperpod = config.training.hyperpod
    hook = S3Hook(aws_conn_id=config.aws.conn_id, region_name=config.training.region)
    bucket, _, prefix = hyperpod.lifecycle_s3_uri.removeprefix("s3://").partition("/")
    if not hook.check_for_bucket(bucket):
        hook.create_bucket(bucket_name=bucket, region_name=config.training.region)
    agent = {"jobs_uri": jobs_uri(config), "region": config.training.region, "work_dir": hyperpod.agent_work_dir,
             "controller_group": hyperpod.controller_group, "poll_seconds": hyperpod.agent_poll_seconds}
    uploads = {path.name: path.read_bytes() for path in sorted(hyperpod.lifecycle_scripts_dir.glob("*"))
               if path.suffix in (".sh", ".py")}
    uploads["job_agent.json"] = json.dumps(agent, indent=2).encode()
    for name, data in uploads.items():
        key = f"{prefix}/{name}" if prefix else name
        hook.load_bytes(data, key=key, bucket_name=bucket, replace=True)
        log.info("uploaded %s to s3://%s/%s", name, bucket, key)
    return hyperpod.lifecycle_s3_uri


def upload_training_bundle(config: PipelineConfig) -> str:
    """The bundle of the entrypoint, the trainers and the package, at its content key (idempotent)."""
    data = training_bundle.build_bundle(config.training.entrypoint.parent)
    return training_bundle.upload_bundle(_s3(config).get_conn(), config.storage.bucket, data)


def entrypoint_arguments(config: PipelineConfig, run: TrainingRun, checkpoint_dir: str | None = None) -> list[str]:
    """train.py's command line for ``run`` (the same on every backend)."""
    arguments = ["--dataset-uri", f"s3://{config.storage.bucket}/{config.storage.dataset_prefix}",
                 "--dataset-version", run.version, "--output-uri", model_uri(config, run.version),
                 "--hyperparameters", json.dumps(run.hyperparameters, sort_keys=True)]
    return arguments + (["--checkpoint-dir", checkpoint_dir] if checkpoint_dir else [])


def checkpoint_name(config: PipelineConfig, run: TrainingRun) -> str:
    """A name for the run's checkpoints: the same for a retry, different for another model or settings."""
    identity = json.dumps([model_uri(config, run.version), run.hyperparameters], sort_keys=True)
    return f"{run.version}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


def node_environment(config: PipelineConfig) -> dict[str, str]:
    """What the entrypoint's process needs beside its arguments: the trainer's name."""
    return {"FINETUNE_TRAINER": config.training.trainer}


def run_local(config: PipelineConfig, bundle_uri: str, run: TrainingRun, work_dir: Path | None = None) -> dict:
    """The local backend: the bundle's entrypoint as a process here, as a node runs it, logged as it goes."""
    hook = _s3(config)
    bucket, _, key = bundle_uri.removeprefix("s3://").partition("/")
    # Kept between tries, so a retry resumes; one folder per model and hyperparameters, so nothing else does.
    work_dir = work_dir or Path(tempfile.gettempdir()) / "finetune-training" / checkpoint_name(config, run)
    checkpoints = work_dir / "checkpoints"
    with tempfile.TemporaryDirectory(prefix="finetune-bundle-") as bundle_dir:
        archive = Path(bundle_dir) / training_bundle.BUNDLE_NAME
        hook.get_conn().download_file(bucket, key, str(archive))
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(bundle_dir)
        command = [sys.executable, str(Path(bundle_dir) / "train.py"),
                   *entrypoint_arguments(config, run, str(checkpoints))]
        log.info("running %s from %s", " ".join(command[1:3]), bundle_uri)
        # The connection's credentials for the whole run: refreshed while it trains (never logged).
        with credentials_endpoint.child_credentials(hook.get_session().get_credentials()) as (credentials, shadowed):
            environment = {name: value for name, value in os.environ.items() if name not in shadowed}
            environment |= credentials | _aws_settings(hook) | node_environment(config) | {"PYTHONPATH": bundle_dir}
            exit_code, tail = _run_logged(command, environment, run.max_runtime_seconds)
    if exit_code != 0:
        raise (AirflowFailException if exit_code == 2 else RuntimeError)(
            f"training exited with {exit_code}; its last lines:\n" + "\n".join(tail))
    return {"version": run.version, "model_uri": model_uri(config, run.version)}


def _aws_settings(hook: S3Hook) -> dict[str, str]:
    """The connection's region and endpoint for a child process."""
    environment = {"AWS_DEFAULT_REGION": hook.conn_region_name or "us-east-1"}
    if hook.conn_config.endpoint_url:
        environment["AWS_ENDPOINT_URL"] = hook.conn_config.endpoint_url
    return environment


def _run_logged(command: list[str], environment: dict[str, str], timeout_seconds: int) -> tuple[int, list[str]]:
    """Run ``command``, each line of its output into the task log; killed at the timeout or with the task."""
    tail: deque[str] = deque(maxlen=_OUTPUT_TAIL_LINES)
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        os.killpg(process.pid, signal.SIGKILL)

    timer = threading.Timer(timeout_seconds, stop)
    timer.start()
    try:
        for line in process.stdout:
            tail.append(line.rstrip())
            log.info("train.py: %s", line.rstrip())
        exit_code = process.wait()
    finally:
        timer.cancel()
        if process.poll() is None:  # the task was killed: never leave the trainer running
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if timed_out.is_set():
        raise RuntimeError(f"training ran past max_runtime_hours ({timeout_seconds / 3600:g} h) and was stopped")
    return exit_code, list(tail)


def record_model(config: PipelineConfig, version: str) -> dict[str, Any]:
    """The model's ``_SUCCESS`` record (version and metrics): what the model Asset event carries."""
    hook = _s3(config)
    key = success_key(config, version)
    if not hook.check_for_key(key, bucket_name=config.storage.bucket):
        raise AirflowFailException(f"the job ended but s3://{config.storage.bucket}/{key} is missing: no whole model")
    record = json.loads(hook.read_key(key, bucket_name=config.storage.bucket))
    metrics = record.get("metrics", {})
    log.info("model for %s at %s: held-out accuracy %s (zero-shot %s, majority %s)", version,
             model_uri(config, version), metrics.get("accuracy"), metrics.get("baselines", {}).get("zero_shot"),
             metrics.get("baselines", {}).get("majority"))
    return {"version": version, "uri": model_uri(config, version), "metrics": metrics}
