"""Typed model of ``include/config/pipeline.yaml``, validated once at DAG parse time.

Loading reads one local file and makes no AWS or database call, so a wrong value fails the DAG parse with
one message that names the field and the form it expects. Credentials never live here: they come from
Airflow connections named by ``aws.conn_id`` and ``source.conn_id``.

Relative paths in the file (contracts, training code, scripts, the export folder) are resolved against the
folder that holds the file, so the package finds them wherever it is installed, and a deployment that
copies ``include/`` somewhere else only has to say where the config is.
"""

from __future__ import annotations

import functools
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from finetune_pipeline.aws.hooks.ec2 import DLAMI_PARAMETER
from finetune_pipeline.datasets import sync_defaults

CONFIG_PATH_ENV = "FINETUNE_PIPELINE_CONFIG"
# Where the config sits relative to Airflow's dags folder when nothing says otherwise: the Astro and the
# official docker-compose layouts keep include/ beside dags/.
DEFAULT_CONFIG_BESIDE_DAGS = Path("include") / "config" / "pipeline.yaml"

# https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
_BUCKET_RE = re.compile(r"^(?!xn--)(?!sthree-)(?!.*\.\.)(?!\d+\.\d+\.\d+\.\d+$)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# https://docs.aws.amazon.com/IAM/latest/UserGuide/reference-arns.html; the role and KMS key forms are
# botocore's patterns for Snowball's RoleARN and KmsKeyARN (SageMaker's RoleArn is the same shape).
_PARTITION = r"arn:aws(-cn|-us-gov|-iso|-iso-b|-iso-e|-iso-f|-eusc)?"
_ROLE_ARN_RE = re.compile(rf"^{_PARTITION}:iam::\d{{12}}:role/[A-Za-z0-9_+=,.@/-]+$")
_INSTANCE_PROFILE_ARN_RE = re.compile(rf"^{_PARTITION}:iam::\d{{12}}:instance-profile/[A-Za-z0-9_+=,.@/-]+$")
_KMS_KEY_ARN_RE = re.compile(rf"^{_PARTITION}:kms:[a-z0-9-]+:\d{{12}}:key/[A-Za-z0-9-]+$")
_REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso|-isob)?-[a-z]+-\d$")
# A device's S3 adapter, or a template rendered when the device is loaded (it is known only on site).
_DEVICE_ENDPOINT_RE = re.compile(r"^(https?://[^\s/]+(/\S*)?|.*\{\{.+\}\}.*)$")
_IDENTIFIER_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{0,62}$")
# DMS identifiers: a letter first, no "--", no trailing "-"; lowercase, since DMS stores them lowercased
# and a mixed-case name would not match on the lookup a retry makes.
_DMS_IDENTIFIER_RE = re.compile(r"^[a-z](?!.*--)[a-z0-9-]{0,62}(?<!-)$")
_SQL_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*$")


class PipelineConfigError(ValueError):
    """The pipeline config is invalid; the message names each bad field and the form it expects."""


def _matches(pattern: re.Pattern[str], expected: str):
    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"expected {expected}, got {value!r}")
        return value

    return AfterValidator(check)


BucketName = Annotated[
    str, _matches(_BUCKET_RE, "an S3 bucket name: 3-63 characters of a-z, 0-9, '.' and '-'")
]
RoleArn = Annotated[str, _matches(_ROLE_ARN_RE, "an IAM role ARN like arn:aws:iam::123456789012:role/name")]
InstanceProfileArn = Annotated[
    str, _matches(_INSTANCE_PROFILE_ARN_RE,
                  "an instance profile ARN like arn:aws:iam::123456789012:instance-profile/name")
]
KmsKeyArn = Annotated[
    str, _matches(_KMS_KEY_ARN_RE, "a KMS key ARN like arn:aws:kms:us-east-1:123456789012:key/1234abcd-...")
]


@functools.cache
def _known_regions() -> frozenset[str]:
    """Every region botocore knows in any partition (its endpoint data, no network)."""
    import botocore.session

    session = botocore.session.get_session()
    return frozenset(region for partition in session.get_available_partitions()
                     for region in session.get_available_regions("s3", partition_name=partition))


def _known_region(value: str) -> str:
    if not _REGION_RE.match(value) or value not in _known_regions():
        raise ValueError(f"expected an AWS region like us-east-1 that botocore knows, got {value!r}")
    return value


Region = Annotated[str, AfterValidator(_known_region)]
# Whole numbers and finite numbers as written: YAML's `true` is not 1 and `.inf` is not a duration.
Count = Annotated[int, Strict()]
Number = Annotated[float, Strict(), AllowInfNan(False)]
Identifier = Annotated[
    str, _matches(_IDENTIFIER_RE, "an identifier: a letter, then up to 62 letters, digits or '-'")
]
DmsIdentifier = Annotated[
    str,
    _matches(_DMS_IDENTIFIER_RE, "a DMS identifier: a lowercase letter, then lowercase letters, digits and "
             "single '-', not ending in '-'"),
]
SqlName = Annotated[str, _matches(_SQL_NAME_RE, "a SQL identifier like public or order_items")]
Prefix = Annotated[
    str, _matches(_PREFIX_RE, "an S3 key prefix without leading or trailing '/', like landing/cdc")
]


def _resolve_path(value: str | Path, info: ValidationInfo) -> Path:
    """A path from the file, made absolute against the config file's folder (the working folder if none)."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    base_dir = (info.context or {}).get("base_dir") or Path.cwd()
    return (Path(base_dir) / path).resolve()


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]


def _path_field(default: str):
    # validate_default: the default is relative too, and must be resolved like a written value.
    return Field(default=default, validate_default=True)


class _Model(BaseModel):
    # Unknown keys are typos more often than not: refuse them instead of silently ignoring them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class TableConfig(_Model):
    """One source table and the key that identifies a row."""

    schema_name: SqlName = Field(alias="schema")
    name: SqlName
    primary_key: list[SqlName]

    @field_validator("primary_key")
    @classmethod
    def _has_key(cls, value: list[str]) -> list[str]:
        # Without a key, CDC events cannot be merged into a current state.
        if not value:
            raise ValueError("expected at least one primary-key column, like [order_id]")
        repeated = sorted({column for column in value if value.count(column) > 1})
        if repeated:
            raise ValueError(f"each primary-key column may appear once, got {repeated} more than once")
        return value

    @property
    def qualified_name(self) -> str:
        return f"{self.schema_name}.{self.name}"


class SourceConfig(_Model):
    conn_id: str = Field(min_length=1)
    engine: Literal["postgres", "mysql"]
    database: SqlName
    tables: list[TableConfig] = Field(min_length=1)
    # The logical replication slot the export creates and DMS reads (PostgreSQL; DMS's SlotName).
    slot_name: str = Field(default="finetune_dms", pattern=r"^[a-z0-9_]{1,63}$")
    # Run the export as a task (Airflow reaches the source); otherwise it runs on premises with
    # python -m finetune_pipeline.export into snowball.export_dir, and the DAG reads its manifest.
    export_from_airflow: bool = False
    export_workers: Count = Field(default=2, ge=1, le=64)
    # How long the slot must keep its WAL: the whole Snowball trip (prepare, ship, load, ship back, import)
    # plus margin. The export refuses a max_slot_wal_keep_size that this many days of WAL would pass.
    wal_retention_days: Number = Field(default=30, gt=0)
    # The source's steady WAL rate; unset, the export measures it from pg_stat_wal.
    wal_bytes_per_day: Count | None = Field(default=None, gt=0)
    # A SQL connection to the source through which the bulk DAG logs the slot's retained WAL while the
    # device travels; unset, nothing is logged.
    wal_monitor_conn_id: str | None = Field(default=None, min_length=1)
    wal_monitor_minutes: Number = Field(default=60, gt=0)
    # An estimate before any export exists; the planner plans from the export manifest's real size.
    size_bytes: Count | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _unique_tables(self) -> SourceConfig:
        names = [table.qualified_name for table in self.tables]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"each table may appear once, got duplicates {duplicates}")
        return self


class StorageConfig(_Model):
    bucket: BucketName
    region: Region
    landing_prefix: Prefix = "landing"
    dataset_prefix: Prefix = "datasets"
    quarantine_prefix: Prefix = "quarantine"

    @model_validator(mode="after")
    def _prefixes_apart(self) -> StorageConfig:
        # The sync lists the landing prefix for change files: a dataset or quarantine under it (or the other
        # way round) would be read back as landed data.
        prefixes = {"landing_prefix": self.landing_prefix, "dataset_prefix": self.dataset_prefix,
                    "quarantine_prefix": self.quarantine_prefix}
        names = list(prefixes)
        for i, first in enumerate(names):
            for second in names[i + 1:]:
                a, b = prefixes[first] + "/", prefixes[second] + "/"
                if a.startswith(b) or b.startswith(a):
                    raise ValueError(f"{first} ({prefixes[first]!r}) and {second} ({prefixes[second]!r}) must be "
                                     "separate prefixes, neither inside the other")
        return self


class TransferConfig(_Model):
    """What the planner weighs: the link and how much of it we may use, the deadline, and the devices."""

    # auto: the planner decides; offline/online: that route whatever the plan says (the plan is still logged).
    route: Literal["auto", "offline", "online"] = "auto"
    link: Literal["internet", "vpn", "direct_connect"] = "internet"
    # internet: the bandwidth to AWS; vpn: 1.25 Gbps per tunnel; direct_connect: the port speed.
    link_gbps: Number | None = Field(default=None, gt=0)
    vpn_tunnels: Count = Field(default=2, ge=1, le=100)
    direct_connect_gbps: Literal[1, 10, 100] = 10
    link_utilization: Number = Field(gt=0, le=1)
    # The bulk copy should be in S3 within this many days.
    deadline_days: Number = Field(gt=0)
    # Door to door, each way; unset, from snowball.shipping_option.
    shipping_days_each_way: Number | None = Field(default=None, gt=0)
    # Sustained copy rate onto one device; unset, the device type's (see planning.DEVICE_COPY_MB_PER_S).
    device_copy_mb_per_s: Number | None = Field(default=None, gt=0)
    # Days from a device's arrival at AWS until its import starts.
    import_handling_days: Number = Field(default=1, ge=0)

    @model_validator(mode="after")
    def _link_has_speed(self) -> TransferConfig:
        if self.link == "internet" and self.link_gbps is None:
            raise ValueError("link is 'internet', so link_gbps (the bandwidth to AWS) is required")
        return self


class AddressConfig(_Model):
    name: str = Field(min_length=1)
    company: str | None = None
    street1: str = Field(min_length=1)
    city: str = Field(min_length=1)
    state_or_province: str = Field(min_length=1)
    postal_code: str = Field(min_length=1)
    country: str = Field(min_length=2)
    phone_number: str = Field(min_length=1)


class SnowballConfig(_Model):
    role_arn: RoleArn
    kms_key_arn: KmsKeyArn | None = None
    snowball_type: Literal["EDGE", "EDGE_C", "EDGE_CG", "EDGE_S", "STANDARD", "V3_5C", "V3_5S"] = "EDGE_S"
    capacity: Literal["T8", "T13", "T14", "T32", "T42", "T50", "T80", "T98", "T100", "T240", "NoPreference"] = "T80"
    shipping_option: Literal["SECOND_DAY", "NEXT_DAY", "EXPRESS", "STANDARD"] = "SECOND_DAY"
    address: AddressConfig
    # Where the on-premises export writes the consistent snapshot before it is copied onto the device.
    export_dir: ConfigPath
    # The unlocked device's S3 adapter on the local network, e.g. https://192.168.1.20:8443, or a template
    # rendered when the device is loaded (its address is known only once it is on site).
    device_endpoint_url: Annotated[str, _matches(
        _DEVICE_ENDPOINT_RE, "the device's S3 adapter URL like https://192.168.1.20:8443, or a template like "
        "{{ var.value.finetune_snowball_device_endpoint }}")]
    # Connection with the device's own access key; defaults to aws.conn_id.
    device_conn_id: str | None = None
    poll_seconds: Number = Field(default=300, gt=0)


class DmsConfig(_Model):
    replication_instance_id: DmsIdentifier
    instance_class: str = Field(default="dms.t3.medium", pattern=r"^dms\.[a-z0-9]+\.[a-z0-9]+$")
    allocated_storage_gb: Count = Field(default=50, ge=5, le=6144)
    source_endpoint_id: DmsIdentifier
    target_endpoint_id: DmsIdentifier
    task_id: DmsIdentifier
    service_access_role_arn: RoleArn
    poll_seconds: Number = Field(default=30, gt=0)
    # The source's credentials through Secrets Manager (a secret's name or ARN) and the role DMS reads it with;
    # unset, the source endpoint takes the connection's password in clear text (DMS encrypts it at rest).
    source_secret_id: str | None = Field(default=None, min_length=1, max_length=2048)
    secrets_manager_access_role_arn: RoleArn | None = None
    # Create the secret from the source connection when it does not exist yet; an existing one is never
    # overwritten (Secrets Manager may be rotating it).
    create_source_secret: bool = False
    # DMS's WAL heartbeat: a small write every few minutes, so that an idle slot does not hold WAL.
    heartbeat_enable: bool = True
    heartbeat_frequency_minutes: Count = Field(default=5, ge=1)

    @model_validator(mode="after")
    def _distinct_endpoints(self) -> DmsConfig:
        if self.source_endpoint_id == self.target_endpoint_id:
            raise ValueError(f"source_endpoint_id and target_endpoint_id must differ, both are "
                             f"{self.source_endpoint_id!r}: one identifier names one endpoint")
        if self.source_secret_id and not self.secrets_manager_access_role_arn:
            raise ValueError("source_secret_id needs secrets_manager_access_role_arn, the role DMS reads the "
                             "secret with")
        return self


def _cron_schedule(value: str) -> str:
    """A schedule Airflow's cron timetable can compute a next run from (checked now, not by the scheduler)."""
    from airflow.timetables.trigger import CronTriggerTimetable

    try:
        CronTriggerTimetable(value, timezone="UTC").validate()
    except Exception as error:  # AirflowTimetableInvalid, or croniter's own errors
        raise ValueError(f"expected a cron expression like '0 * * * *' or a preset like @hourly, got {value!r} "
                         f"({error})") from None
    return value


def _existing_folder(value: Path) -> Path:
    if not value.is_dir():
        raise ValueError(f"expected an existing folder, {value} is not one")
    return value


class SyncConfig(_Model):
    schedule: Annotated[str, AfterValidator(_cron_schedule)] = "@hourly"
    retention_versions: Count = Field(default=sync_defaults.RETENTION_VERSIONS, ge=1)
    contracts_dir: Annotated[ConfigPath, AfterValidator(_existing_folder)] = _path_field("../contracts")
    # How far behind the watermark discovery looks again for change files that landed late. DMS names a
    # file when it opens it and uploads it up to CdcMaxBatchInterval (60 s) later, so keep a wide margin.
    late_file_grace_minutes: Number = Field(
        default=sync_defaults.LATE_FILE_GRACE / timedelta(minutes=1),
        ge=sync_defaults.MIN_LATE_FILE_GRACE / timedelta(minutes=1),
    )
    # Reconcile each table's rows with what the CDC task's DMS table statistics say it captured.
    reconcile_with_dms: bool = True
    # Airflow connection (any SQL provider) to count each table's rows in the source or a read replica;
    # unset, there is no source count. It may differ from source.conn_id, the DMS source endpoint's.
    source_count_conn_id: str | None = Field(default=None, min_length=1)


class IcebergConfig(_Model):
    """The Apache Iceberg catalog that holds the dataset's tables (one per source table, in ``namespace``).

    ``sql`` with no ``sql_uri`` is an embedded SQLite file under ``$AIRFLOW_HOME``: it works only when every
    Airflow worker runs on one machine. With workers on several machines (and for training nodes that read
    the catalog), use ``glue``, ``s3tables``, or ``sql`` on a shared PostgreSQL database through
    ``sql_conn_id``. Credentials never go here: AWS ones come from ``aws.conn_id``, a database's from its
    Airflow connection.
    """

    catalog: Literal["sql", "glue", "s3tables", "rest"] = sync_defaults.CATALOG_KIND
    catalog_name: str = Field(default=sync_defaults.CATALOG_NAME, pattern=r"^[A-Za-z0-9_-]+$")
    # A Glue database / S3 Tables namespace: lowercase letters, digits and '_'.
    namespace: str = Field(default=sync_defaults.NAMESPACE, pattern=r"^[a-z0-9][a-z0-9_]{0,253}[a-z0-9]$")
    # sql: a SQLAlchemy URL without a password (sqlite:////var/lib/finetune/catalog.db).
    sql_uri: str | None = Field(default=None, pattern=r"^(sqlite|postgresql(\+psycopg2?)?)://")
    # sql on a shared database: an Airflow connection (postgres) whose URL the catalog uses.
    sql_conn_id: str | None = Field(default=None, min_length=1)
    # s3tables: the Iceberg REST endpoint (default https://s3tables.<region>.amazonaws.com/iceberg); rest: required.
    rest_uri: str | None = Field(default=None, pattern=r"^https?://")
    # sql, glue: where table files go (default s3://<bucket>/<dataset_prefix>/warehouse); s3tables: the table
    # bucket's ARN.
    warehouse: str | None = None
    # More pyiceberg catalog properties (e.g. glue.id for another account's catalog); never credentials.
    properties: dict[str, str] = Field(default_factory=dict)
    # Unreferenced data files are deleted only once older than this (and than the newest commit).
    orphan_file_grace_hours: Number = Field(default=sync_defaults.ORPHAN_FILE_GRACE / timedelta(hours=1), ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> IcebergConfig:
        if self.catalog != "sql" and (self.sql_uri or self.sql_conn_id):
            raise ValueError(f"sql_uri and sql_conn_id apply to catalog: sql, not {self.catalog}")
        if self.sql_uri and self.sql_conn_id:
            raise ValueError("give sql_uri or sql_conn_id, not both")
        if self.sql_uri and re.search(r"://[^/@]+:[^/@]*@", self.sql_uri):
            raise ValueError("sql_uri must not hold a password: use sql_conn_id, an Airflow connection")
        if self.catalog == "s3tables" and not (self.warehouse or "").startswith("arn:"):
            raise ValueError("catalog s3tables needs warehouse, the table bucket's ARN "
                             "(arn:aws:s3tables:<region>:<account>:bucket/<name>)")
        if self.catalog == "rest" and not self.rest_uri:
            raise ValueError("catalog rest needs rest_uri, the catalog's endpoint")
        if self.catalog in ("sql", "glue") and self.warehouse and not self.warehouse.startswith("s3://"):
            raise ValueError(f"warehouse of a {self.catalog} catalog must be an s3:// location, got {self.warehouse!r}")
        if any(word in key.lower() for key in self.properties for word in ("secret", "password", "token", "key-id")):
            raise ValueError("properties must not hold credentials; they come from Airflow connections")
        return self


class HyperPodConfig(_Model):
    cluster_name: Identifier
    execution_role_arn: RoleArn
    # HyperPod only reads lifecycle scripts from buckets named sagemaker-* (its managed instance policy).
    lifecycle_s3_uri: str = Field(pattern=r"^s3://sagemaker-[a-z0-9.-]{1,53}[a-z0-9](/[^/].*)?$")
    lifecycle_on_create: str = "on_create.sh"
    # The local folder of lifecycle scripts uploaded to lifecycle_s3_uri.
    lifecycle_scripts_dir: ConfigPath = _path_field("../scripts/hyperpod")
    controller_group: Identifier = "controller"
    worker_group: Identifier = "workers"
    controller_instance_type: str = Field(default="ml.m5.xlarge", pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
    worker_instance_type: str = Field(default="ml.g5.2xlarge", pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
    worker_count: Count = Field(default=1, ge=1)
    poll_seconds: Number = Field(default=60, gt=0)
    # Job specs, states and cancel markers between Airflow and the controller's job agent, in the bucket.
    jobs_prefix: Prefix = "hyperpod-jobs"
    # Where the agent puts each job (bundle, batch script, log, checkpoints): shared storage on every node.
    agent_work_dir: str = Field(default="/fsx/finetune-jobs", pattern=r"^(/|~/)\S+$")
    agent_poll_seconds: Number = Field(default=10, gt=0)
    # Delete the cluster once training has ended (succeeded or not), if this run created it: a cluster
    # bills while it is up, but creating one takes most of an hour. One that existed before is never deleted.
    delete_created_cluster: Annotated[bool, Strict()] = False


class Ec2TrainingConfig(_Model):
    # None: the Deep Learning AMI, resolved at launch from its public SSM parameter (always the newest).
    image_id: str | None = Field(default=None, pattern=r"^ami-[0-9a-f]{8,17}$")
    image_ssm_parameter: str = Field(default=DLAMI_PARAMETER, pattern=r"^/aws/service/[\w./-]+$")
    instance_type: str = Field(pattern=r"^[a-z0-9]+\.[a-z0-9]+$")
    instance_count: Count = Field(default=1, ge=1)
    # The instances read the bundle and the dataset and write the model with its role (include/iam/).
    instance_profile_arn: InstanceProfileArn
    subnet_id: str | None = Field(default=None, pattern=r"^subnet-[0-9a-f]{8,17}$")
    security_group_ids: list[Annotated[str, Field(pattern=r"^sg-[0-9a-f]{8,17}$")]] = Field(default_factory=list)
    # A cluster placement group (created if absent): the instances on one low-latency network spine.
    placement_group: Identifier | None = None
    # EFA interfaces per instance (one per network card); they need subnet_id and security_group_ids.
    efa_interfaces: Count = Field(default=0, ge=0)
    # An On-Demand Capacity Reservation, or with capacity_block a Capacity Block for ML (cr-...).
    capacity_reservation_id: str | None = Field(default=None, pattern=r"^cr-[0-9a-f]{17}$")
    capacity_block: Annotated[bool, Strict()] = False
    poll_seconds: Number = Field(default=30, gt=0)
    # Rendered into each instance's user data; it downloads and runs the training bundle.
    user_data_path: ConfigPath = _path_field("../scripts/ec2/user_data.sh")

    @model_validator(mode="after")
    def _launch_settings_fit(self) -> Ec2TrainingConfig:
        if self.efa_interfaces and not (self.subnet_id and self.security_group_ids):
            raise ValueError("efa_interfaces need subnet_id and security_group_ids (EFA interfaces are created in "
                             "the launch, in that subnet)")
        if self.capacity_block and not self.capacity_reservation_id:
            raise ValueError("capacity_block needs capacity_reservation_id, the block's cr-... id")
        return self


class RetrainPolicy(_Model):
    """When a newly published version is worth a training run (an hourly sync must not mean hourly training):
    no model yet, or at least ``min_changed_fraction`` of the rows changed since the last trained version, or
    any change once ``max_hours_between`` hours have passed since that one."""

    min_changed_fraction: Number = Field(default=0.05, ge=0, le=1)
    max_hours_between: Number | None = Field(default=168, gt=0)


class TrainingConfig(_Model):
    backend: Literal["hyperpod", "ec2", "local"]
    region: Region
    # The training script every backend runs, and the trainers beside it: shipped to the nodes as one bundle.
    entrypoint: ConfigPath = _path_field("../training/train.py")
    # The trainer module train.py loads (FINETUNE_TRAINER); its file lives beside the entrypoint.
    trainer: str = Field(default="reference_trainer", pattern=r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    # Where each version's model goes: s3://<bucket>/<models_prefix>/<version>/.
    models_prefix: Prefix = "models"
    max_runtime_hours: Number = Field(default=12, gt=0)
    # The most a run may ask for in its trigger form.
    runtime_limit_hours: Number = Field(default=72, gt=0)
    retrain: RetrainPolicy = RetrainPolicy()
    hyperpod: HyperPodConfig | None = None
    ec2: Ec2TrainingConfig | None = None

    @model_validator(mode="after")
    def _backend_has_settings(self) -> TrainingConfig:
        if self.backend != "local" and getattr(self, self.backend) is None:
            raise ValueError(f"backend is {self.backend!r}, so a '{self.backend}' section is required")
        if self.max_runtime_hours > self.runtime_limit_hours:
            raise ValueError(f"max_runtime_hours ({self.max_runtime_hours}) is above runtime_limit_hours "
                             f"({self.runtime_limit_hours})")
        return self

    @property
    def backends(self) -> list[str]:
        """The backends a run may choose: those with settings, and the local one."""
        return [name for name in ("hyperpod", "ec2") if getattr(self, name) is not None] + ["local"]


class AwsConfig(_Model):
    conn_id: str = Field(default="aws_default", min_length=1)


class PipelineConfig(_Model):
    project: Identifier
    aws: AwsConfig = AwsConfig()
    source: SourceConfig
    storage: StorageConfig
    transfer: TransferConfig
    snowball: SnowballConfig
    dms: DmsConfig
    # Validated from {} with the file's context, so the default contracts_dir resolves beside the file.
    sync: SyncConfig = Field(default_factory=dict, validate_default=True)
    iceberg: IcebergConfig = IcebergConfig()
    training: TrainingConfig

    @model_validator(mode="after")
    def _data_next_to_training(self) -> PipelineConfig:
        # Training reads the dataset in place; a cross-region bucket would mean slow, billed transfer.
        if self.storage.region != self.training.region:
            raise ValueError(
                f"storage.region ({self.storage.region}) must equal training.region "
                f"({self.training.region}): the data bucket has to be in the region where training runs"
            )
        return self

    @property
    def landing_uri(self) -> str:
        return f"s3://{self.storage.bucket}/{self.storage.landing_prefix}"


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid pipeline config {source}:"]
    for item in error.errors():
        field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"])
        field = field.lstrip(".") or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field (check the spelling against include/config/pipeline.yaml)"
        lines.append(f"  {field}: {message}")
    return "\n".join(lines)


def parse_config(data: object, source: str = "<memory>", base_dir: Path | str | None = None) -> PipelineConfig:
    """
    Validate already-loaded YAML data; raise PipelineConfigError naming every bad field.

    :param base_dir: The folder relative paths are resolved against (the config file's); the working
        folder if None.
    """
    try:
        return PipelineConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as error:
        raise PipelineConfigError(_describe(error, source)) from None


def config_path() -> Path:
    """``$FINETUNE_PIPELINE_CONFIG``, else ``include/config/pipeline.yaml`` beside Airflow's dags folder."""
    if os.environ.get(CONFIG_PATH_ENV):
        return Path(os.environ[CONFIG_PATH_ENV])
    from airflow.configuration import conf

    return Path(conf.get("core", "dags_folder")).resolve().parent / DEFAULT_CONFIG_BESIDE_DAGS


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; a config where a key is written twice is a mistake."""

    def construct_mapping(self, node, deep=False):
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (lines {seen[key]} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


@functools.lru_cache(maxsize=4)
def _load(path: Path, mtime_ns: int) -> PipelineConfig:
    if path.is_dir():
        raise PipelineConfigError(f"pipeline config {path} is a folder: point {CONFIG_PATH_ENV} at the YAML file")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except FileNotFoundError:
        raise PipelineConfigError(f"pipeline config not found at {path} (set {CONFIG_PATH_ENV})") from None
    except yaml.YAMLError as error:
        raise PipelineConfigError(f"pipeline config {path} is not valid YAML: {error}") from None
    if data is None:
        raise PipelineConfigError(f"pipeline config {path} is empty: start from include/config/pipeline.yaml")
    if not isinstance(data, dict):
        raise PipelineConfigError(f"pipeline config {path} must be a mapping of sections (project, source, ...), "
                                  f"not a {type(data).__name__}")
    return parse_config(data, str(path), base_dir=path.resolve().parent)


def load_config(path: Path | str | None = None) -> PipelineConfig:
    """Load and validate the pipeline config; cached until the file changes."""
    resolved = Path(path) if path else config_path()
    mtime_ns = resolved.stat().st_mtime_ns if resolved.exists() else 0
    return _load(resolved, mtime_ns)
