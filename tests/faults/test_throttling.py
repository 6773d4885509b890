"""Throttling on 30% of all AWS calls: the pipeline's AWS operators complete, and nothing is made twice."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from airflow.sdk import Asset
from airflow.sdk.exceptions import TaskDeferred
from fault_helpers import (
    CONTROLLER,
    FAST_WAIT,
    IMAGE_ID,
    LIFECYCLE_URI,
    ROLE_ARN,
    Figures,
    addresses_named,
    client,
    clusters_named,
    dms_resources,
    instances_with_token,
    job_specs,
    jobs_with_key,
    upload_lifecycle,
)

from finetune_pipeline.aws.operators.dms import (
    DmsEnsureEndpointOperator,
    DmsEnsureReplicationInstanceOperator,
    DmsEnsureTaskOperator,
    DmsStartTaskAtPositionOperator,
)
from finetune_pipeline.aws.operators.ec2 import Ec2LaunchTrainingInstancesOperator, launch_token_base
from finetune_pipeline.aws.operators.sagemaker_hyperpod import (
    HyperPodEnsureClusterOperator,
    HyperPodSubmitJobOperator,
)
from finetune_pipeline.aws.operators.snowball import (
    SnowballCreateAddressOperator,
    SnowballCreateJobOperator,
    SnowballLoadDeviceOperator,
)
from finetune_pipeline.aws.sensors.snowball import SnowballJobStateSensor
from finetune_pipeline.datasets.dms_target import cdc_table_mappings
from localaws import control

THROTTLE_ALL = {"service": "*", "operation": "*", "kind": "throttle", "rate": 0.3, "seed": 20261201}
SNOWBALL_STATES = (
    "New",
    "PreparingAppliance",
    "PreparingShipment",
    "InTransitToCustomer",
    "WithCustomer",
    "InTransitToAWS",
    "WithAWSSortingFacility",
    "WithAWS",
)


class Runs:
    """Counts operator runs and the ones that completed."""

    def __init__(self) -> None:
        self.started = self.completed = 0

    def __call__(self, run, *args):
        self.started += 1
        result = run(*args)
        self.completed += 1
        return result


def advance_to(url: str, created: datetime, seconds_into_job: float) -> None:
    """Move the clock to ``seconds_into_job`` after the job's creation."""
    now = datetime.fromisoformat(control.get_clock(url)["now"])
    control.advance_clock(url, max(0.0, seconds_into_job - (now - created).total_seconds()))


def test_throttling_on_30_percent_of_calls_the_aws_operators_complete(
    localaws, aws_conn, context, unique, timing, tmp_path, run_trigger, monkeypatch, record, source
):
    url, runs = localaws.endpoint_url, Runs()
    keys: dict = {}  # each resource's marker, as the scenario gets to it
    bucket = unique("faults-landing")
    client(url, "s3").create_bucket(Bucket=bucket)
    export = tmp_path / "export"
    (export / "public" / "tickets").mkdir(parents=True)
    (export / "public" / "tickets" / "LOAD00000001.parquet").write_bytes(b"t" * 5000)
    (export / "manifest.json").write_text(json.dumps({"snapshot_position": "2026-01-01T00:00:00Z"}))
    # DMS starts a PostgreSQL CDC task only at an LSN of a slot made beforehand, on a source it can reach.
    source.execute("CREATE TABLE public.tickets (ticket_id bigint PRIMARY KEY, subject text)")
    slot = unique("faults_slot").replace("-", "_")
    slot_lsn = source.create_slot(slot)
    monkeypatch.setenv(
        "AIRFLOW_CONN_SOURCE_DB",
        json.dumps({"conn_type": "postgres", "host": source.server.host, "port": source.server.port,
                    "login": "replicator", "password": source.server.password, "schema": source.name}),  # fmt: skip
    )
    upload_lifecycle(url)
    # The HyperPod job's state as its agent would have written it (this cluster runs no agent): the
    # submission under throttling writes the spec, reads this state and returns the ended job.
    hyperpod_job_key = unique("ftp-train")
    client(url, "s3").put_object(
        Bucket=bucket, Key=f"hyperpod/state/{hyperpod_job_key}.json",
        Body=json.dumps({"job_key": hyperpod_job_key, "state": "COMPLETED", "slurm_job_id": "1", "exit_code": 0,
                         "reason": None, "log_tail": [], "updated": "2026-01-01T00:00:00Z"}).encode(),
    )  # fmt: skip
    control.add_faults(url, THROTTLE_ALL)
    try:
        # Snowball, on a frozen clock moved state by state.
        name = keys["name"] = unique("Faults Team")
        address = {"Name": name, "Street1": "410 Terry Ave N", "City": "Seattle", "Country": "US",
                   "PostalCode": "98109"}  # fmt: skip
        address_id = runs(SnowballCreateAddressOperator(task_id="address", address=address).execute, context)
        key = keys["key"] = unique("bulk")
        job_id = runs(
            SnowballCreateJobOperator(
                task_id="job", description_key=key, bucket_arn=f"arn:aws:s3:::{bucket}", role_arn=ROLE_ARN,
                address_id=address_id,
            ).execute,
            context,
        )  # fmt: skip
        created = client(url, "snowball").describe_job(JobId=job_id)["JobMetadata"]["CreationDate"]
        durations = timing["snowball"]["state_seconds"]
        until_with_customer = sum(durations[s] for s in SNOWBALL_STATES[: SNOWBALL_STATES.index("WithCustomer")])
        advance_to(url, created, until_with_customer + 60)
        arrived = SnowballJobStateSensor(task_id="arrived", job_id=job_id, target_state="WithCustomer",
                                         poke_interval=0.05, timeout=60, deferrable=False)  # fmt: skip
        runs(arrived.execute, context)
        load = SnowballLoadDeviceOperator(
            task_id="load", job_id=job_id, source_dir=str(export), key_prefix="landing",
            device_endpoint_url=f"{url}/_localaws/snowball-device/{job_id}",
        )  # fmt: skip
        runs(load.execute, context)
        advance_to(url, created, until_with_customer + durations["WithCustomer"] + 60)  # on its way back
        # A deferred path: the sensor defers, its trigger polls through the throttling while the job completes.
        imported = SnowballJobStateSensor(task_id="imported", job_id=job_id, target_state="Complete",
                                          poke_interval=0.05, timeout=60, deferrable=True)  # fmt: skip
        runs(lambda: _defer_and_complete(imported, context, run_trigger,
                                         during=lambda: control.advance_clock(url, 10 * 86_400)))  # fmt: skip

        # HyperPod and EC2 on a running clock (2000x: a 15-minute cluster creation takes 0.45 s).
        control.set_clock_speed(url, 2000)
        cluster = keys["cluster"] = unique("hp")
        ensure = HyperPodEnsureClusterOperator(
            task_id="cluster", cluster_name=cluster, instance_groups=[CONTROLLER], execution_role_arn=ROLE_ARN,
            lifecycle_s3_uri=LIFECYCLE_URI, deferrable=True, **FAST_WAIT,
        )  # fmt: skip
        runs(lambda: _defer_and_complete(ensure, context, run_trigger))
        keys["bucket"], keys["job_key"] = bucket, hyperpod_job_key
        job_key = hyperpod_job_key
        submit = HyperPodSubmitJobOperator(
            task_id="submit", cluster_name=cluster, job_key=job_key, controller_group="controller",
            jobs_uri=f"s3://{bucket}/hyperpod", bundle_uri=f"s3://{bucket}/code/training.zip",
            entrypoint="train.py", deferrable=False, **FAST_WAIT,
        )  # fmt: skip
        assert runs(submit.execute, context)["state"] == "COMPLETED"
        launch = Ec2LaunchTrainingInstancesOperator(
            task_id="launch", image_id=IMAGE_ID, instance_type="g5.2xlarge", min_count=2, max_count=2,
            deferrable=False, **FAST_WAIT,
        )  # fmt: skip
        instance_ids = runs(launch.execute, context)

        # DMS: instance, endpoints, the CDC task, started at a position.
        ids = keys["ids"] = {part: unique(part) for part in ("ri", "src", "tgt", "cdc")}
        instance_arn = runs(
            DmsEnsureReplicationInstanceOperator(
                task_id="ri", replication_instance_identifier=ids["ri"], deferrable=False, **FAST_WAIT
            ).execute,
            context,
        )
        source_arn = runs(
            DmsEnsureEndpointOperator(
                task_id="src", endpoint_identifier=ids["src"], endpoint_type="source", engine_name="postgres",
                source_conn_id="source_db", slot_name=slot, plugin_name="test-decoding",
            ).execute,
            context,
        )  # fmt: skip
        target_arn = runs(
            DmsEnsureEndpointOperator(
                task_id="tgt", endpoint_identifier=ids["tgt"], endpoint_type="target", engine_name="s3",
                s3_settings={"BucketName": bucket, "ServiceAccessRoleArn": ROLE_ARN},
            ).execute,
            context,
        )  # fmt: skip
        task_arn = runs(
            DmsEnsureTaskOperator(
                task_id="cdc", replication_task_identifier=ids["cdc"], replication_instance_arn=instance_arn,
                source_endpoint_arn=source_arn, target_endpoint_arn=target_arn,
                table_mappings=cdc_table_mappings([("public", "tickets")]), deferrable=False, **FAST_WAIT,
            ).execute,
            context,
        )  # fmt: skip
        runs(
            DmsStartTaskAtPositionOperator(
                task_id="start", replication_task_arn=task_arn, cdc_start_position=slot_lsn,
                deferrable=False, **FAST_WAIT,
            ).execute,
            context,
        )  # fmt: skip
    finally:
        control.set_clock_speed(url, 0)
        view = control.clear_faults(url)
        injected, calls = sum(view["injected"].values()), sum(view["calls"].values())
        made = _made(url, context, keys)
        duplicates = sum(max(0, count - 1) for count in made.values())
        record(
            Figures(
                "throttle 30% of all calls: Snowball, HyperPod, EC2, DMS operators",
                injected,
                runs.completed,
                runs.started,
                duplicates,
                notes=[f"{calls} calls"],
            )
        )
    assert len(instance_ids) == 2
    assert made == dict.fromkeys(made, 1), made
    assert duplicates == 0
    assert injected > 0.2 * calls  # the share actually throttled
    assert runs.completed == runs.started == 13


def _made(url: str, context: dict, keys: dict) -> dict[str, int]:
    """How many of each resource the scenario made (1 each when all is well), as far as it got."""
    ti = context["ti"]
    token = f"{launch_token_base(ti.dag_id, ti.task_id, ti.run_id, ti.map_index)}-0"
    counters = {
        "address": lambda: addresses_named(url, keys["name"]),
        "job": lambda: jobs_with_key(url, keys["key"]),
        "cluster": lambda: clusters_named(url, keys["cluster"]),
        "job spec": lambda: job_specs(url, keys["bucket"], keys["job_key"]),
        "instances": lambda: instances_with_token(url, token) - 1,  # one launch of two instances
        "dms instance": lambda: dms_resources(url, "instance", keys["ids"]["ri"]),
        "dms endpoints": lambda: dms_resources(url, "endpoint", keys["ids"]["src"])
        + dms_resources(url, "endpoint", keys["ids"]["tgt"]) - 1,
        "dms task": lambda: dms_resources(url, "task", keys["ids"]["cdc"]),
    }
    made = {}
    for what, count in counters.items():
        try:
            made[what] = count()
        except KeyError:  # the scenario stopped before this step
            break
    return made


def _defer_and_complete(operator, context, run_trigger, during=None):
    """The deferred path: execute defers, the trigger runs (here, in asyncio) and execute_complete ends it."""
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    event = run_trigger(deferred.value.trigger, during=during)
    return getattr(operator, deferred.value.method_name)(context, event, **(deferred.value.kwargs or {}))


def test_s3_slowdown_on_30_percent_of_calls_the_sync_publishes_every_row(
    localaws, aws_conn, tmp_path, boto_client, record
):
    """The incremental sync reads the landing files and writes a version through throttled S3."""
    import uuid
    from collections import defaultdict
    from types import SimpleNamespace

    from landed_changes import seed_demo

    from devstack.config import demo_config
    from finetune_pipeline.pipeline import landing
    from finetune_pipeline.pipeline.export_manifest import read_manifest
    from finetune_pipeline.pipeline.sync_operator import DatasetSyncOperator

    config = demo_config(home=tmp_path, localaws_url=localaws.endpoint_url,
                         overrides={"storage": {"bucket": f"ft-faults-{uuid.uuid4().hex[:12]}"}})  # fmt: skip
    seeded = seed_demo(config, localaws.endpoint_url, report=lambda line: None)
    s3, storage = boto_client("s3"), config.storage
    manifest = read_manifest(config.snowball.export_dir)
    landing.upload_export(s3, config.snowball.export_dir, manifest, storage.bucket, storage.landing_prefix)
    landing.publish_snapshot_manifest(s3, manifest, storage.bucket, storage.landing_prefix)
    expected = {name: table.num_rows for name, table in seeded["tables"].items()}

    control.add_faults(localaws.endpoint_url, {**THROTTLE_ALL, "service": "s3"})
    try:
        operator = DatasetSyncOperator(
            task_id="sync_dataset", bucket=storage.bucket, landing_prefix=storage.landing_prefix,
            dataset_prefix=storage.dataset_prefix, quarantine_prefix=storage.quarantine_prefix, retention=3,
            contracts_dir=str(config.sync.contracts_dir), outlets=[Asset("s3://x/current")],
            tables=sorted(expected),  # the tables the landed files cover
        )  # fmt: skip
        context = {"ti": SimpleNamespace(xcom_push=lambda **_: None),
                   "outlet_events": defaultdict(lambda: SimpleNamespace(extra=None))}  # fmt: skip
        result = operator.execute(context)
    finally:
        view = control.clear_faults(localaws.endpoint_url)
    published = result["row_counts"]
    lost = sum(max(0, rows - published.get(name, 0)) for name, rows in expected.items())
    quarantined = s3.list_objects_v2(Bucket=storage.bucket, Prefix=storage.quarantine_prefix).get("KeyCount", 0)
    record(
        Figures(
            "S3 SlowDown on 30% of S3 calls: incremental sync",
            sum(view["injected"].values()),
            1 if result["status"] == "published" else 0,
            1,
            0,
            lost,
            notes=[f"{sum(view['calls'].values())} calls", f"{quarantined} files quarantined"],
        )
    )
    assert result["status"] == "published"
    assert published == expected and lost == 0
    assert quarantined == 0
