"""Stage 4: fine-tune on a published dataset version, on SageMaker HyperPod, on EC2 or locally."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param, task

from finetune_pipeline.pipeline import tasks as pipeline_tasks
from finetune_pipeline.pipeline import training as training_tasks
from finetune_pipeline.pipeline import training_dag
from finetune_pipeline.pipeline.assets import dataset_asset, model_asset
from finetune_pipeline.pipeline.config import load_config
from finetune_pipeline.pipeline.dag_defaults import DEFAULT_ARGS

config = load_config()
training = config.training
DATASET = dataset_asset(config)
MODEL = model_asset(config)

with DAG(
    dag_id="finetune_training",
    description="Fine-tune on a published dataset version when the retrain policy says it is worth it.",
    doc_md=__doc__
    + """

Scheduled on the dataset Asset: a published version starts a run for exactly that version (read from the
Asset event; a manual run takes the form's `dataset_version`, or the newest published one). The version is
opened through the dataset reader first, so a version missing from any table stops the run, and the
entrypoint on the nodes opens the same version with the same reader.

`retrain_gate` skips the run, saying why, unless the retrain policy (`training.retrain` in the config: a
share of rows changed since the last trained version, or enough hours since it) or the form's `force` says
the version is worth training. `preflight` refuses what can never run before anything launches.

Backends: `hyperpod` (a SageMaker HyperPod Slurm cluster, created if missing; the job goes through a job spec
in S3 to the job agent on its controller, which runs it with `sbatch` and `srun --auto-resume=1`), `ec2`
(instances that run the entrypoint from their user data, then shut down), `local` (the entrypoint as a
process beside the worker). Each runs
the same bundle (entrypoint, trainers, package) and ends when the model's `_SUCCESS` is written; the model
Asset event then carries the version and the metrics.
""",
    schedule=[DATASET],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={
        "backend": Param(training.backend, type="string", enum=training.backends,
                         description="Where to train (the backends this deployment's config sets up)."),
        "dataset_version": Param("", type="string", pattern=r"^(v[0-9]{6,})?$",
                                 description="A published version like v000012; empty: the one that triggered "
                                             "the run, or the newest."),
        "instance_type": Param("", type="string", pattern=r"^([a-z0-9]+\.)?[a-z0-9-]+\.[a-z0-9]+$|^$",
                               description="Empty: the config's (ml.* for HyperPod, an EC2 type for EC2)."),
        "instance_count": Param(None, type=["null", "integer"], minimum=1,
                                description="Training nodes; empty: the config's."),
        "hyperparameters": Param(training.hyperparameters, type="object",
                                 description="A JSON object for the trainer, e.g. {\"epochs\": 3}."),
        "max_runtime_hours": Param(training.max_runtime_hours, type="number", exclusiveMinimum=0,
                                   maximum=training.runtime_limit_hours,
                                   description="The job is stopped after this long."),
        "force": Param(False, type="boolean", description="Train even if the retrain policy would skip."),
    },
    tags=["finetune", "training", *training.backends],
) as dag:

    @task(multiple_outputs=False)
    def dataset_version(params=None, triggering_asset_events=None) -> str:
        """The version to train: the form's, the triggering sync's, or the newest published one."""
        return pipeline_tasks.triggered_dataset_version(config, triggering_asset_events,
                                                        params.get("dataset_version"))

    @task(multiple_outputs=False)
    def run_settings(version: str, params=None) -> dict:
        """The form's values over the config's defaults, checked before anything launches."""
        return training_tasks.run_settings(config, params, version).to_dict()

    @task(multiple_outputs=False)
    def retrain_gate(run: dict) -> dict:
        """Skip, saying why, unless the retrain policy (or force) says this version is worth a run."""
        return training_tasks.retrain_gate(config, run["version"], run["force"])

    @task(multiple_outputs=False)
    def preflight(run: dict, run_id=None) -> dict:
        """What the APIs can tell before launching: the bucket's region, the role, the instance type, the
        hyperparameters (asked of the trainer)."""
        run = training_tasks.TrainingRun(**run)
        training_tasks.check_bucket_region(config)
        if run.backend == "hyperpod":
            training_tasks.check_role(config, training.hyperpod.execution_role_arn)
            training_tasks.check_hyperpod_instance_type(config, run.instance_type)
            training_tasks.check_hyperpod_fit(config, run)
        elif run.backend == "ec2":
            training_tasks.check_ec2(config, run)
        return {**run.to_dict(), "job_key": training_tasks.job_key(config, run.version, run_id),
                "hyperparameters": training_tasks.check_hyperparameters(config, run.hyperparameters)}

    @task(multiple_outputs=False)
    def upload_training_bundle() -> str:
        """The entrypoint, the trainers and the package as one zip at its content key."""
        return training_tasks.upload_training_bundle(config)

    @task.branch
    def choose_backend(run: dict) -> str:
        """The first task of the chosen backend's group; the other groups are skipped."""
        return training_dag.first_task_id(run["backend"])

    @task(multiple_outputs=False, trigger_rule="none_failed_min_one_success", outlets=[MODEL])
    def record_model(run: dict, outlet_events=None) -> dict:
        """The model's record (version, URI, metrics), carried by the model Asset event."""
        record = training_tasks.record_model(config, run["version"])
        outlet_events[MODEL].extra = record
        return record

    settings = run_settings(dataset_version())
    run = preflight(settings)
    retrain_gate(settings) >> run
    bundle = upload_training_bundle()
    branch = choose_backend(run)
    run >> bundle >> branch
    done = record_model(run)
    for backend in training.backends:
        first, last = training_dag.backend_tasks(config, backend, run, bundle)
        branch >> first
        last >> done
