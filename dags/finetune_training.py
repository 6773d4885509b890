"""Stage 4: fine-tune on each newly published dataset version, on SageMaker HyperPod or EC2."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, task
from finetune_pipeline import pipeline_tasks
from finetune_pipeline.assets import dataset_asset
from finetune_pipeline.config import load_config
from finetune_pipeline.dag_defaults import DEFAULT_ARGS

config = load_config()
DATASET = dataset_asset(config)

with DAG(
    dag_id="finetune_training",
    description="Launch fine-tuning on the dataset version the sync just published, and track it to the end.",
    doc_md=__doc__
    + """

Scheduled on the dataset Asset: every published version starts one training run for exactly that
version (read from the Asset event). The backend is `training.backend` in the pipeline config:
a SageMaker HyperPod cluster (created if missing, reused otherwise) running the job through Slurm,
or EC2 instances that run the entrypoint from their user data. Every wait is deferred to the triggerer.
""",
    schedule=[DATASET],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["finetune", "training", config.training.backend],
) as dag:

    @task
    def dataset_version(triggering_asset_events=None) -> str:
        """The version published by the sync run that triggered this run."""
        return pipeline_tasks.triggered_dataset_version(config, triggering_asset_events)

    version = dataset_version()
    if config.training.backend == "hyperpod":
        from finetune_pipeline.training_hyperpod import hyperpod_training

        hyperpod_training(config, version)
    else:
        from finetune_pipeline.training_ec2 import ec2_training

        ec2_training(config, version)
