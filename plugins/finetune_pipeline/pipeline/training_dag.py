"""The training DAG's backend task groups (dags/finetune_training.py builds one per configured backend).

Each group starts with the task the branch picks and ends with the task after which the model's ``_SUCCESS``
is written; ``record_model`` follows whichever ran. Built here, not in the DAG file, so the DAG reads as the
run's steps and each backend's wiring stays in one place.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import TaskGroup, task

from finetune_pipeline.pipeline import training as training_tasks
from finetune_pipeline.pipeline.config import PipelineConfig

FIRST_TASK = {"hyperpod": "upload_lifecycle_scripts", "ec2": "launch_training_instances", "local": "train"}


def first_task_id(backend: str) -> str:
    return f"{backend}.{FIRST_TASK[backend]}"


def backend_tasks(config: PipelineConfig, backend: str, run, bundle) -> tuple:
    """(first task, last task) of ``backend``'s group, given the run's settings and the bundle's URI (XComArgs)."""
    with TaskGroup(backend, tooltip=f"train on the {backend} backend"):
        return {"local": _local, "hyperpod": _hyperpod, "ec2": _ec2}[backend](config, run, bundle)


def _local(config: PipelineConfig, run, bundle) -> tuple:
    @task(task_id=FIRST_TASK["local"], multiple_outputs=False,
          execution_timeout=timedelta(hours=config.training.runtime_limit_hours))
    def train(run: dict, bundle: str) -> dict:
        """The bundle's entrypoint as a process on this worker, logged line by line (a laptop's backend)."""
        return training_tasks.run_local(config, bundle, training_tasks.TrainingRun.from_settings(run))

    trained = train(run, bundle)
    return trained, trained


# The tag a HyperPod cluster gets from the run that created it.
CREATED_BY_RUN_TAG = "finetune-pipeline:created-by-run"
CREATED_BY_RUN = "{{ dag.dag_id }}/{{ run_id }}"


def _hyperpod(config: PipelineConfig, run, bundle) -> tuple:
    from finetune_pipeline.aws.operators.sagemaker_hyperpod import (
        HyperPodDeleteClusterOperator,
        HyperPodEnsureClusterOperator,
        HyperPodSubmitJobOperator,
    )
    from finetune_pipeline.pipeline.training_bundle import node_modules

    hyperpod = config.training.hyperpod

    @task(task_id=FIRST_TASK["hyperpod"])
    def upload_lifecycle_scripts() -> str:
        """Put the lifecycle scripts, the job agent and its config where the cluster's nodes read them."""
        return training_tasks.upload_lifecycle_scripts(config)

    cluster = HyperPodEnsureClusterOperator(
        task_id="ensure_cluster",
        cluster_name=hyperpod.cluster_name,
        instance_groups=training_tasks.hyperpod_instance_groups(config),
        execution_role_arn=hyperpod.execution_role_arn,
        lifecycle_s3_uri=hyperpod.lifecycle_s3_uri,
        lifecycle_on_create=hyperpod.lifecycle_on_create,
        # Which run created the cluster: the same on every try of this run, so only its teardown deletes it.
        tags={CREATED_BY_RUN_TAG: CREATED_BY_RUN},
        waiter_delay=hyperpod.poll_seconds,
        aws_conn_id=config.aws.conn_id,
        region_name=config.training.region,
        deferrable=True,
        # Creating a cluster (instances, lifecycle scripts, health checks) can take most of an hour.
        execution_timeout=timedelta(hours=3),
    )
    settings = "ti.xcom_pull(task_ids='preflight')"
    version = f"{{{{ {settings}['version'] }}}}"
    submit = HyperPodSubmitJobOperator(
        task_id="train",
        cluster_name=hyperpod.cluster_name,
        job_key=f"{{{{ {settings}['job_key'] }}}}",
        jobs_uri=training_tasks.jobs_uri(config),
        bundle_uri=bundle,
        entrypoint="train.py",
        entrypoint_args=[
            "--dataset-uri", f"s3://{config.storage.bucket}/{config.storage.dataset_prefix}",
            "--dataset-version", version, "--output-uri", training_tasks.model_uri(config, version),
            "--hyperparameters", f"{{{{ {settings}['hyperparameters'] | tojson }}}}",
            # On the cluster's shared storage: srun --auto-resume re-runs the step there after a node is replaced.
            "--checkpoint-dir", "{job_dir}/checkpoints",
        ],
        env=training_tasks.node_environment(config),
        nodes=f"{{{{ {settings}['instance_count'] }}}}",
        time_limit_minutes=f"{{{{ ({settings}['max_runtime_hours'] * 60) | int }}}}",
        # A Deep Learning AMI's (or localaws's) Python already has them: no pip install.
        installed_modules=node_modules(),
        controller_group=hyperpod.controller_group,
        waiter_delay=hyperpod.poll_seconds,
        waiter_max_attempts=int(config.training.runtime_limit_hours * 3600 / hyperpod.poll_seconds) + 1,
        aws_conn_id=config.aws.conn_id,
        region_name=config.training.region,
        deferrable=True,
        execution_timeout=timedelta(hours=config.training.runtime_limit_hours + 1),
    )
    first = upload_lifecycle_scripts()
    first >> cluster >> submit
    if hyperpod.delete_created_cluster:
        delete = HyperPodDeleteClusterOperator(
            task_id="delete_created_cluster",
            cluster_name=hyperpod.cluster_name,
            only_if_tags={CREATED_BY_RUN_TAG: CREATED_BY_RUN},
            aws_conn_id=config.aws.conn_id,
            region_name=config.training.region,
        )
        submit >> delete.as_teardown(setups=cluster)  # runs whether training succeeded or failed
    return first, submit


def _ec2(config: PipelineConfig, run, bundle) -> tuple:
    from finetune_pipeline.aws.operators.ec2 import (
        Ec2LaunchTrainingInstancesOperator,
        Ec2TerminateTrainingInstancesOperator,
    )
    from finetune_pipeline.pipeline.training_bundle import node_modules

    ec2 = config.training.ec2
    settings = "ti.xcom_pull(task_ids='preflight')"
    version = f"{{{{ {settings}['version'] }}}}"
    launch = Ec2LaunchTrainingInstancesOperator(
        task_id=FIRST_TASK["ec2"],
        instance_type=f"{{{{ {settings}['instance_type'] }}}}",
        min_count=f"{{{{ {settings}['instance_count'] }}}}",
        max_count=f"{{{{ {settings}['instance_count'] }}}}",
        image_id=ec2.image_id,
        image_ssm_parameter=ec2.image_ssm_parameter,
        user_data_path=str(ec2.user_data_path),
        user_data_variables={
            "BUNDLE_URI": bundle,
            "DATASET_URI": f"s3://{config.storage.bucket}/{config.storage.dataset_prefix}",
            "DATASET_VERSION": version,
            "OUTPUT_URI": training_tasks.model_uri(config, version),
            "HYPERPARAMETERS": f"{{{{ {settings}['hyperparameters'] | tojson }}}}",
            # Instance storage ends with the instance: a relaunch after a lost instance starts over.
            "CHECKPOINT_DIR": "",
            "WORLD_SIZE": f"{{{{ {settings}['instance_count'] }}}}",
            "AWS_REGION": config.training.region,
            "INSTALLED_MODULES": ", ".join(node_modules()),
        },
        success_marker_uri=f"s3://{config.storage.bucket}/{training_tasks.success_key(config, version)}",
        instance_profile=ec2.instance_profile_arn,
        subnet_id=ec2.subnet_id,
        security_group_ids=ec2.security_group_ids or None,
        placement_group=ec2.placement_group,
        efa_interfaces=ec2.efa_interfaces,
        capacity_reservation_id=ec2.capacity_reservation_id,
        capacity_block=ec2.capacity_block,
        tags={"finetune-pipeline:project": config.project, "finetune-pipeline:dataset-version": version},
        waiter_delay=ec2.poll_seconds,
        # The job's time limit is the run's max_runtime_hours: polls of poll_seconds until then.
        waiter_max_attempts=f"{{{{ ({settings}['max_runtime_hours'] * 3600 / {ec2.poll_seconds}) | int + 1 }}}}",
        aws_conn_id=config.aws.conn_id,
        region_name=config.training.region,
        deferrable=True,
        execution_timeout=timedelta(hours=config.training.runtime_limit_hours + 1),
    )
    # Whatever the launch did (even killed while deferred, having pushed no XCom), nothing keeps running.
    teardown = Ec2TerminateTrainingInstancesOperator(
        task_id="terminate_training_instances",
        launch_task_id=launch.task_id,
        trigger_rule="all_done",
        aws_conn_id=config.aws.conn_id,
        region_name=config.training.region,
    )
    launch >> teardown
    return launch, launch
