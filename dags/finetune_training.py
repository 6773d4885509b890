"""Stage 4: fine-tune on each newly published dataset version, on SageMaker HyperPod or EC2."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, task

from finetune_pipeline.aws.operators.ec2 import Ec2LaunchTrainingInstancesOperator
from finetune_pipeline.aws.operators.sagemaker_hyperpod import (
    HyperPodEnsureClusterOperator,
    HyperPodSubmitJobOperator,
)
from finetune_pipeline.pipeline import tasks as pipeline_tasks
from finetune_pipeline.pipeline.assets import dataset_asset
from finetune_pipeline.pipeline.config import load_config
from finetune_pipeline.pipeline.dag_defaults import DEFAULT_ARGS

config = load_config()
training = config.training
DATASET = dataset_asset(config)
DATASET_URI = f"s3://{config.storage.bucket}/{config.storage.dataset_prefix}"
VERSION = "{{ ti.xcom_pull(task_ids='dataset_version') }}"
ENTRYPOINT_ARGS = ["--dataset-uri", DATASET_URI, "--dataset-version", VERSION,
                   "--output-uri", f"s3://{config.storage.bucket}/models/{VERSION}"]

with DAG(
    dag_id="finetune_training",
    description="Launch fine-tuning on the dataset version the sync just published.",
    doc_md=__doc__
    + """

Scheduled on the dataset Asset: every published version starts one training run for exactly that
version (read from the Asset event; a manual run uses the newest published one), opened through the
dataset reader first, so a version missing from any table stops the run. The entrypoint opens the same
version from its record under the dataset prefix (`versions/<version>.json`), with the same reader. The backend is
`training.backend` in the pipeline config: a SageMaker HyperPod cluster (created if missing, reused
otherwise) that runs the job through Slurm, submitted over SSM to its controller; or EC2 instances that
run the entrypoint from their user data and terminate when it ends. Every wait is deferred.
""",
    schedule=[DATASET],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["finetune", "training", training.backend],
) as dag:

    @task
    def dataset_version(triggering_asset_events=None) -> str:
        """The version published by the sync run that triggered this run."""
        return pipeline_tasks.triggered_dataset_version(config, triggering_asset_events)

    version = dataset_version()
    if training.backend == "hyperpod":
        hyperpod = training.hyperpod

        @task
        def upload_lifecycle_scripts() -> str:
            """Put the lifecycle scripts and the entrypoint where the cluster's nodes read them."""
            return pipeline_tasks.upload_lifecycle_scripts(config)

        cluster = HyperPodEnsureClusterOperator(
            task_id="ensure_cluster",
            cluster_name=hyperpod.cluster_name,
            instance_groups=pipeline_tasks.hyperpod_instance_groups(config),
            execution_role_arn=hyperpod.execution_role_arn,
            lifecycle_s3_uri=hyperpod.lifecycle_s3_uri,
            lifecycle_on_create=hyperpod.lifecycle_on_create,
            waiter_delay=hyperpod.poll_seconds,
            aws_conn_id=config.aws.conn_id,
            deferrable=True,
            # Creating a cluster (instances, lifecycle scripts, health checks) can take most of an hour.
            execution_timeout=timedelta(hours=3),
        )
        submit = HyperPodSubmitJobOperator(
            task_id="submit_training_job",
            cluster_name=hyperpod.cluster_name,
            job_key=f"{config.project}-{VERSION}",
            # on_create.sh copies the uploaded entrypoint onto the cluster's shared file system.
            entrypoint=f"/fsx/finetune/{training.entrypoint.name}",
            entrypoint_args=ENTRYPOINT_ARGS,
            nodes=hyperpod.worker_count,
            controller_group=hyperpod.controller_group,
            waiter_delay=hyperpod.poll_seconds,
            aws_conn_id=config.aws.conn_id,
            deferrable=True,
        )
        upload_lifecycle_scripts() >> cluster
        [version, cluster] >> submit
    else:
        ec2 = training.ec2

        @task
        def upload_training_code() -> str:
            """Put the entrypoint where the instances' user data downloads it from."""
            return pipeline_tasks.upload_training_code(config)

        code = upload_training_code()
        launch = Ec2LaunchTrainingInstancesOperator(
            task_id="launch_training_instances",
            image_id=ec2.image_id,
            instance_type=ec2.instance_type,
            user_data_path=str(ec2.user_data_path),
            user_data_variables={"ENTRYPOINT_URI": code, "DATASET_URI": DATASET_URI, "DATASET_VERSION": VERSION,
                                 "OUTPUT_URI": f"s3://{config.storage.bucket}/models/{VERSION}"},
            instance_profile=ec2.instance_profile_arn,
            subnet_id=ec2.subnet_id,
            min_count=ec2.instance_count,
            max_count=ec2.instance_count,
            aws_conn_id=config.aws.conn_id,
            deferrable=True,
        )
        [version, code] >> launch
