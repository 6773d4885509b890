"""Operators that make sure the DMS pieces of CDC into S3 exist (reusing earlier tries' work) and start it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils import validate_execute_complete_event
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.sdk import BaseHook, Connection, Context, conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from airflow.sdk.log import mask_secret

from finetune_pipeline.aws.hooks.dms import DmsResourceHook
from finetune_pipeline.aws.hooks.secrets_manager import SecretsManagerSecretHook
from finetune_pipeline.aws.triggers.dms import DmsReplicationInstanceAvailableTrigger, DmsTaskStatusTrigger
from finetune_pipeline.aws.utils.retries import create_once
from finetune_pipeline.aws.utils.waits import defer_or_wait, trigger_arguments

# Source engines whose credentials come from an Airflow connection, with their settings key and port.
DB_SOURCE_ENGINES: dict[str, tuple[str, int]] = {
    "postgres": ("PostgreSQLSettings", 5432),
    "aurora-postgresql": ("PostgreSQLSettings", 5432),
    "mysql": ("MySQLSettings", 3306),
    "aurora": ("MySQLSettings", 3306),
    "mariadb": ("MySQLSettings", 3306),
}
POSTGRES_ENGINES = ("postgres", "aurora-postgresql")
# libpq's sslmode values (an Airflow Postgres connection's ``sslmode`` extra) as DMS's SslMode. ``prefer`` asks for
# encryption when the server offers it; DMS has no such middle ground, and a silent downgrade to ``none`` would
# drop it, so it becomes ``require`` (a server without SSL then fails DMS's connection test, loudly).
LIBPQ_SSL_MODES = {
    "disable": "none",
    "allow": "none",
    "prefer": "require",
    "require": "require",
    "verify-ca": "verify-ca",
    "verify-full": "verify-full",
}


def _rules_signature(mappings: dict[str, Any]) -> list[tuple]:
    """What a mapping's rules do, ignoring IDs, names and defaults AWS may add when it stores them."""
    return sorted(
        (
            str(rule.get("rule-type")),
            str(rule.get("rule-action")),
            str(rule.get("object-locator", {}).get("schema-name")),
            str(rule.get("object-locator", {}).get("table-name")),
            str(rule.get("value")),
            str(rule.get("expression")),
        )
        for rule in mappings.get("rules", [])
    )


def _check_event(event: dict[str, Any] | None, return_key: str, what: str) -> str:
    event = validate_execute_complete_event(event)
    if event.get("status") != "success":
        raise AirflowException(f"{what} failed: {event.get('message', event)}")
    return event[return_key]


def _tags(tags: dict[str, str] | None) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in (tags or {}).items()]


class DmsEnsureReplicationInstanceOperator(AwsBaseOperator[DmsResourceHook]):
    """
    Return a replication instance's ARN, creating it only if none has this identifier; wait until available.

    :param replication_instance_identifier: The instance identifier (the idempotency key).
    :param replication_instance_class: e.g. ``dms.t3.medium``.
    :param allocated_storage: Storage in GB; the service default if ``None``.
    :param engine_version: DMS engine version; the service default if ``None``.
    :param multi_az: Create a Multi-AZ instance.
    :param publicly_accessible: Give the instance a public IP.
    :param vpc_security_group_ids: Security groups of the instance.
    :param replication_subnet_group_identifier: Subnet group (VPC) of the instance.
    :param kms_key_id: KMS key for the instance's storage.
    :param tags: Tags of a new instance.
    :param create_instance_kwargs: Further ``CreateReplicationInstance`` arguments.
    :param wait_for_completion: Wait until the instance is ``available``.
    :param deferrable: Wait in the triggerer. Defaults to ``[operators] default_deferrable``.
    :param waiter_delay: Seconds between status checks.
    :param waiter_max_attempts: Status checks before giving up.
    """

    aws_hook_class = DmsResourceHook
    template_fields: Sequence[str] = aws_template_fields(
        "replication_instance_identifier", "replication_instance_class", "allocated_storage", "tags"
    )

    def __init__(
        self,
        *,
        replication_instance_identifier: str,
        replication_instance_class: str = "dms.t3.medium",
        allocated_storage: int | None = None,
        engine_version: str | None = None,
        multi_az: bool = False,
        publicly_accessible: bool = False,
        vpc_security_group_ids: list[str] | None = None,
        replication_subnet_group_identifier: str | None = None,
        kms_key_id: str | None = None,
        tags: dict[str, str] | None = None,
        create_instance_kwargs: dict[str, Any] | None = None,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        waiter_delay: float = 60,
        waiter_max_attempts: int = 60,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.replication_instance_identifier = replication_instance_identifier
        self.replication_instance_class = replication_instance_class
        self.allocated_storage = allocated_storage
        self.engine_version = engine_version
        self.multi_az = multi_az
        self.publicly_accessible = publicly_accessible
        self.vpc_security_group_ids = vpc_security_group_ids
        self.replication_subnet_group_identifier = replication_subnet_group_identifier
        self.kms_key_id = kms_key_id
        self.tags = tags
        self.create_instance_kwargs = create_instance_kwargs or {}
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.waiter_delay = waiter_delay
        self.waiter_max_attempts = waiter_max_attempts

    def _create_arguments(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "ReplicationInstanceIdentifier": self.replication_instance_identifier,
            "ReplicationInstanceClass": self.replication_instance_class,
            "MultiAZ": self.multi_az,
            "PubliclyAccessible": self.publicly_accessible,
        }
        optional = {
            "AllocatedStorage": int(self.allocated_storage) if self.allocated_storage else None,
            "EngineVersion": self.engine_version,
            "VpcSecurityGroupIds": self.vpc_security_group_ids,
            "ReplicationSubnetGroupIdentifier": self.replication_subnet_group_identifier,
            "KmsKeyId": self.kms_key_id,
            "Tags": _tags(self.tags) or None,
        }
        arguments.update({key: value for key, value in optional.items() if value is not None})
        return {**arguments, **self.create_instance_kwargs}

    def execute(self, context: Context) -> str:
        instance = self.hook.find_replication_instance(self.replication_instance_identifier)
        if instance is None:
            instance = create_once(
                lambda: self.hook.create_replication_instance(**self._create_arguments()),
                lambda: self.hook.find_replication_instance(self.replication_instance_identifier),
                what=f"DMS replication instance {self.replication_instance_identifier}",
                log=self.log,
            )
            self.log.info("Created DMS replication instance %s.", instance["ReplicationInstanceArn"])
        arn, status = instance["ReplicationInstanceArn"], instance["ReplicationInstanceStatus"]
        self.log.info("DMS replication instance %s is %s.", arn, status)
        if status in DmsResourceHook.INSTANCE_FAILED_STATES:
            raise AirflowFailException(
                f"DMS replication instance {self.replication_instance_identifier} ({arn}) is {status} and "
                "will not become available by itself. Fix or delete it, then retry."
            )
        if status in DmsResourceHook.INSTANCE_GONE_STATES:
            raise RuntimeError(
                f"DMS replication instance {arn} is {status}; wait until it is gone, then retry."
            )
        if status == "available" or not self.wait_for_completion:
            return arn
        trigger = DmsReplicationInstanceAvailableTrigger(
            replication_instance_arn=arn, **trigger_arguments(self)
        )
        return defer_or_wait(self, context, trigger)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> str:
        return _check_event(
            event,
            "replication_instance_arn",
            f"Waiting for DMS replication instance {self.replication_instance_identifier}",
        )


class DmsEnsureEndpointOperator(AwsBaseOperator[DmsResourceHook]):
    """
    Return the ARN of a DMS endpoint, creating it only if none has this identifier, correcting its settings if
    they drifted.

    Two kinds are supported: an S3 target (``engine_name="s3"`` with its ``s3_settings``) and a
    PostgreSQL/MySQL source whose host, port, user and password come from the Airflow connection
    ``source_conn_id``. The source's credentials reach DMS one of two ways (DMS takes "one of the following sets
    of values, but not both"):

    - through Secrets Manager, with ``secrets_manager_secret_id`` and ``secrets_manager_access_role_arn``: the
      endpoint names the secret, and no password is sent to DMS. With ``create_secret_from_connection``, a
      missing secret is created from the connection (``username``, ``password``, ``port``, ``host``, the keys DMS
      reads); an existing secret is never overwritten, since Secrets Manager may be rotating it;
    - in clear text (``Password``, which DMS stores encrypted), as a fallback when no secret is configured.

    Either way the password is masked in Airflow's logs and kept out of botocore's DEBUG log
    (:mod:`finetune_pipeline.aws.utils.redaction`); it is never stored on the operator or returned.

    A PostgreSQL source also takes what DMS needs for CDC from a native start point (CHAP_Source.PostgreSQL):
    ``slot_name`` (the slot created beforehand), ``plugin_name`` (``test-decoding`` for a test_decoding slot) and
    the WAL heartbeat. ``ssl_mode`` defaults to the connection's ``sslmode`` extra.

    An existing endpoint must point at the same bucket/folder or database (and server, or secret); otherwise this
    fails. Settings that drifted (slot, plugin, heartbeat, SSL mode) are set back with ``ModifyEndpoint``.

    :param endpoint_identifier: The endpoint identifier (the idempotency key).
    :param endpoint_type: ``source`` or ``target``.
    :param engine_name: ``s3`` (target), or ``postgres``, ``aurora-postgresql``, ``mysql``, ``aurora``,
        ``mariadb`` (source).
    :param s3_settings: ``S3Settings`` of an S3 target, as they are sent; ``BucketName`` and
        ``ServiceAccessRoleArn`` required.
    :param source_conn_id: Airflow connection with the source database's host, port, login and password.
    :param database_name: Database to replicate; defaults to the connection's schema.
    :param slot_name: PostgreSQL: the logical replication slot CDC reads (``PostgreSQLSettings.SlotName``).
    :param plugin_name: PostgreSQL: ``test-decoding`` or ``pglogical`` (``PostgreSQLSettings.PluginName``).
    :param heartbeat_enable: PostgreSQL: DMS's WAL heartbeat, which keeps an idle slot from holding WAL.
    :param heartbeat_frequency: PostgreSQL: minutes between heartbeats (DMS's default: 5).
    :param secrets_manager_secret_id: Name or ARN of the secret with the source's credentials.
    :param secrets_manager_access_role_arn: The role DMS reads that secret with.
    :param create_secret_from_connection: Create the secret from ``source_conn_id`` if it does not exist.
    :param secret_kms_key_id: KMS key of a secret this operator creates.
    :param engine_settings: Further ``PostgreSQLSettings`` / ``MySQLSettings``.
    :param ssl_mode: ``none`` | ``require`` | ``verify-ca`` | ``verify-full``; from the connection if ``None``.
    :param kms_key_id: KMS key that encrypts the endpoint's connection parameters.
    :param tags: Tags of a new endpoint (and of a secret this operator creates).
    :param create_endpoint_kwargs: Further ``CreateEndpoint`` arguments.
    """

    aws_hook_class = DmsResourceHook
    template_fields: Sequence[str] = aws_template_fields(
        "endpoint_identifier",
        "s3_settings",
        "source_conn_id",
        "database_name",
        "engine_settings",
        "slot_name",
        "plugin_name",
        "secrets_manager_secret_id",
    )
    template_fields_renderers = {"s3_settings": "json", "engine_settings": "json"}

    def __init__(
        self,
        *,
        endpoint_identifier: str,
        endpoint_type: str,
        engine_name: str,
        s3_settings: dict[str, Any] | None = None,
        source_conn_id: str | None = None,
        database_name: str | None = None,
        slot_name: str | None = None,
        plugin_name: str | None = None,
        heartbeat_enable: bool = False,
        heartbeat_frequency: int | None = None,
        secrets_manager_secret_id: str | None = None,
        secrets_manager_access_role_arn: str | None = None,
        create_secret_from_connection: bool = False,
        secret_kms_key_id: str | None = None,
        engine_settings: dict[str, Any] | None = None,
        ssl_mode: str | None = None,
        kms_key_id: str | None = None,
        tags: dict[str, str] | None = None,
        create_endpoint_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.endpoint_identifier = endpoint_identifier
        self.endpoint_type = endpoint_type
        self.engine_name = engine_name
        self.s3_settings = s3_settings
        self.source_conn_id = source_conn_id
        self.database_name = database_name
        self.slot_name = slot_name
        self.plugin_name = plugin_name
        self.heartbeat_enable = heartbeat_enable
        self.heartbeat_frequency = heartbeat_frequency
        self.secrets_manager_secret_id = secrets_manager_secret_id
        self.secrets_manager_access_role_arn = secrets_manager_access_role_arn
        self.create_secret_from_connection = create_secret_from_connection
        self.secret_kms_key_id = secret_kms_key_id
        self.engine_settings = engine_settings
        self.ssl_mode = ssl_mode
        self.kms_key_id = kms_key_id
        self.tags = tags
        self.create_endpoint_kwargs = create_endpoint_kwargs or {}

    def _s3_settings(self) -> dict[str, Any]:
        if self.endpoint_type != "target":
            raise ValueError(
                f"Endpoint {self.endpoint_identifier}: only S3 *target* endpoints are supported."
            )
        settings = dict(self.s3_settings or {})
        missing = [key for key in ("BucketName", "ServiceAccessRoleArn") if not settings.get(key)]
        if missing:
            raise ValueError(f"Endpoint {self.endpoint_identifier}: s3_settings needs {', '.join(missing)}.")
        return settings

    def _source_connection(self) -> Connection:
        """The source database's Airflow connection; its password is masked in logs from here on."""
        if self.endpoint_type != "source":
            raise ValueError(
                f"Endpoint {self.endpoint_identifier}: a {self.engine_name} endpoint can only be a source."
            )
        if not self.source_conn_id:
            raise ValueError(
                f"Endpoint {self.endpoint_identifier}: a {self.engine_name} source needs source_conn_id."
            )
        conn = BaseHook.get_connection(self.source_conn_id)
        if conn.password:
            mask_secret(conn.password)
        return conn

    def _ssl_mode(self, conn: Connection | None) -> str | None:
        """DMS's SslMode: the one given, else the connection's libpq ``sslmode`` extra, as DMS names it."""
        if self.ssl_mode is not None or conn is None:
            return self.ssl_mode
        sslmode = (conn.extra_dejson or {}).get("sslmode")
        if sslmode is None:
            return None
        if sslmode not in LIBPQ_SSL_MODES:
            raise AirflowFailException(
                f"Airflow connection {self.source_conn_id!r}: sslmode {sslmode!r} is not one of "
                f"{', '.join(LIBPQ_SSL_MODES)}."
            )
        return LIBPQ_SSL_MODES[sslmode]

    def _postgres_settings(self) -> dict[str, Any]:
        """The CDC settings of a PostgreSQL source: slot, plugin, heartbeat."""
        settings: dict[str, Any] = {
            "SlotName": self.slot_name or None,
            "PluginName": self.plugin_name,
            "HeartbeatEnable": True if self.heartbeat_enable else None,
            "HeartbeatFrequency": self.heartbeat_frequency if self.heartbeat_enable else None,
        }
        settings = {key: value for key, value in settings.items() if value is not None}
        if settings and self.engine_name not in POSTGRES_ENGINES:
            raise ValueError(
                f"Endpoint {self.endpoint_identifier}: slot, plugin and heartbeat are PostgreSQL settings, not "
                f"{self.engine_name} ones."
            )
        return settings

    def _secret_arn(self, conn: Connection) -> str:
        """The ARN of the secret the endpoint names; created from the connection when asked and missing."""
        hook = SecretsManagerSecretHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name)
        found = hook.describe_secret(self.secrets_manager_secret_id)
        if found is not None:
            self.log.info("Using Secrets Manager secret %s for the DMS source's credentials.", found["ARN"])
            return found["ARN"]
        if not self.create_secret_from_connection:
            raise AirflowFailException(
                f"Secrets Manager secret {self.secrets_manager_secret_id} does not exist. Create it with the keys "
                "username, password, port and host, or set create_secret_from_connection, then retry."
            )
        value = self._connection_values(conn)
        secret = {"username": value["login"], "password": value["password"], "port": value["port"],
                  "host": value["host"]}  # fmt: skip
        arn = hook.create_secret(self.secrets_manager_secret_id, secret, self.secret_kms_key_id, self.tags)
        self.log.info("Created Secrets Manager secret %s from Airflow connection %s.", arn, self.source_conn_id)
        return arn

    def _connection_values(self, conn: Connection) -> dict[str, Any]:
        database = self.database_name or conn.schema
        values = {"host": conn.host, "login": conn.login, "password": conn.password, "database": database}
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise AirflowFailException(
                f"Airflow connection {self.source_conn_id!r} lacks {', '.join(missing)} for DMS endpoint "
                f"{self.endpoint_identifier}."
            )
        return {**values, "port": int(conn.port or DB_SOURCE_ENGINES[self.engine_name][1])}

    def _source_arguments(self) -> dict[str, Any]:
        """Connection details of a database source; the only place the password is read."""
        conn = self._source_connection()
        values = self._connection_values(conn)
        settings_key, _ = DB_SOURCE_ENGINES[self.engine_name]
        settings = {**self._postgres_settings(), **(self.engine_settings or {})}
        arguments: dict[str, Any] = {"DatabaseName": values["database"]}
        if self.secrets_manager_secret_id:
            if not self.secrets_manager_access_role_arn:
                raise ValueError(
                    f"Endpoint {self.endpoint_identifier}: secrets_manager_secret_id needs "
                    "secrets_manager_access_role_arn, the role DMS reads the secret with."
                )
            settings["SecretsManagerSecretId"] = self._secret_arn(conn)
            settings["SecretsManagerAccessRoleArn"] = self.secrets_manager_access_role_arn
        else:
            arguments.update({"ServerName": values["host"], "Port": values["port"], "Username": values["login"],
                              "Password": values["password"]})  # fmt: skip
        if settings:
            arguments[settings_key] = settings
        ssl_mode = self._ssl_mode(conn)
        if ssl_mode:
            arguments["SslMode"] = ssl_mode
        return arguments

    def _create_arguments(self) -> dict[str, Any]:
        if self.endpoint_type not in ("source", "target"):
            raise ValueError(f"endpoint_type must be 'source' or 'target', got {self.endpoint_type!r}.")
        arguments: dict[str, Any] = {
            "EndpointIdentifier": self.endpoint_identifier,
            "EndpointType": self.endpoint_type,
            "EngineName": self.engine_name,
        }
        if self.engine_name == "s3":
            settings = self._s3_settings()
            arguments["S3Settings"] = settings
            arguments["ServiceAccessRoleArn"] = settings["ServiceAccessRoleArn"]
            if self.ssl_mode:
                arguments["SslMode"] = self.ssl_mode
        elif self.engine_name in DB_SOURCE_ENGINES:
            arguments.update(self._source_arguments())
        else:
            raise ValueError(
                f"Endpoint {self.endpoint_identifier}: engine {self.engine_name!r} is not supported; "
                f"use 's3' or one of {sorted(DB_SOURCE_ENGINES)}."
            )
        optional = {"KmsKeyId": self.kms_key_id, "Tags": _tags(self.tags) or None}
        arguments.update({key: value for key, value in optional.items() if value is not None})
        return {**arguments, **self.create_endpoint_kwargs}

    def _check_existing(self, endpoint: dict[str, Any]) -> dict[str, Any]:
        """Refuse an endpoint with the same identifier that points somewhere else; return the settings to put
        back (``ModifyEndpoint`` arguments) if any drifted."""
        actual = {
            "EndpointType": str(endpoint.get("EndpointType", "")).lower(),
            "EngineName": endpoint.get("EngineName"),
        }
        expected: dict[str, Any] = {"EndpointType": self.endpoint_type, "EngineName": self.engine_name}
        drift: dict[str, Any] = {}
        if self.engine_name == "s3":
            s3 = endpoint.get("S3Settings") or {}
            actual["BucketName"] = s3.get("BucketName")
            actual["BucketFolder"] = (s3.get("BucketFolder") or "").strip("/")
            expected["BucketName"] = (self.s3_settings or {}).get("BucketName")
            expected["BucketFolder"] = ((self.s3_settings or {}).get("BucketFolder") or "").strip("/")
        elif self.engine_name in DB_SOURCE_ENGINES:
            conn = self._source_connection()
            settings_key, _ = DB_SOURCE_ENGINES[self.engine_name]
            stored = endpoint.get(settings_key) or {}
            actual["DatabaseName"] = endpoint.get("DatabaseName") or stored.get("DatabaseName")
            expected["DatabaseName"] = self.database_name or conn.schema
            # Whether the credentials come from a secret cannot change in place: DMS takes one way or the other.
            actual["credentials"] = "secret" if stored.get("SecretsManagerSecretId") else "password"
            expected["credentials"] = "secret" if self.secrets_manager_secret_id else "password"
            if not self.secrets_manager_secret_id:
                actual["ServerName"], expected["ServerName"] = endpoint.get("ServerName"), conn.host
            wanted = {**self._postgres_settings(), **(self.engine_settings or {})}
            changed = {key: value for key, value in wanted.items() if stored.get(key) != value}
            if changed:
                drift[settings_key] = changed
            ssl_mode = self._ssl_mode(conn)
            if ssl_mode and endpoint.get("SslMode") != ssl_mode:
                drift["SslMode"] = ssl_mode
        differences = [
            f"{key}={actual[key]!r} (wanted {value!r})"
            for key, value in expected.items()
            if actual[key] != value
        ]
        if differences:
            raise AirflowFailException(
                f"DMS endpoint {self.endpoint_identifier} already exists but differs: "
                f"{'; '.join(differences)}. "
                "Delete it (or choose another identifier), then retry."
            )
        return drift

    def execute(self, context: Context) -> str:
        endpoint = self.hook.find_endpoint(self.endpoint_identifier)
        if endpoint is not None:
            drift = self._check_existing(endpoint)
            if drift:
                self.hook.modify_endpoint(EndpointArn=endpoint["EndpointArn"], **drift)
                fields = sorted(key for name, value in drift.items() for key in (value if isinstance(value, dict)
                                                                                   else [name]))  # fmt: skip
                self.log.info("Corrected DMS endpoint %s: %s set back.", endpoint["EndpointArn"], ", ".join(fields))
                return endpoint["EndpointArn"]
            self.log.info("Reusing DMS %s endpoint %s.", self.endpoint_type, endpoint["EndpointArn"])
            return endpoint["EndpointArn"]
        endpoint = create_once(
            lambda: self.hook.create_endpoint(**self._create_arguments()),
            lambda: self.hook.find_endpoint(self.endpoint_identifier),
            what=f"DMS endpoint {self.endpoint_identifier}",
            log=self.log,
        )
        self.log.info(
            "Created DMS %s endpoint %s (%s).", self.endpoint_type, endpoint["EndpointArn"], self.engine_name
        )
        return endpoint["EndpointArn"]


class DmsEnsureTaskOperator(AwsBaseOperator[DmsResourceHook]):
    """
    Return the ARN of a CDC replication task, creating it only if none has this identifier; wait until ready.

    An existing task must have the same endpoints, instance, migration type and mappings; otherwise
    this fails (change it with the provider's ``DmsModifyTaskOperator``, or delete it).

    :param replication_task_identifier: The task identifier (the idempotency key).
    :param replication_instance_arn: Replication instance ARN.
    :param source_endpoint_arn: Source endpoint ARN.
    :param target_endpoint_arn: Target endpoint ARN.
    :param table_mappings: The task's ``TableMappings`` as a dict (selection and transformation rules).
    :param migration_type: ``cdc`` (default), ``full-load`` or ``full-load-and-cdc``.
    :param replication_task_settings: ``ReplicationTaskSettings`` as a dict.
    :param tags: Tags of a new task.
    :param wait_for_completion: Wait until the task is ``ready``.
    :param deferrable: Wait in the triggerer. Defaults to ``[operators] default_deferrable``.
    :param waiter_delay: Seconds between status checks.
    :param waiter_max_attempts: Status checks before giving up.
    """

    aws_hook_class = DmsResourceHook
    template_fields: Sequence[str] = aws_template_fields(
        "replication_task_identifier",
        "replication_instance_arn",
        "source_endpoint_arn",
        "target_endpoint_arn",
        "table_mappings",
        "replication_task_settings",
    )
    template_fields_renderers = {"table_mappings": "json", "replication_task_settings": "json"}

    def __init__(
        self,
        *,
        replication_task_identifier: str,
        replication_instance_arn: str,
        source_endpoint_arn: str,
        target_endpoint_arn: str,
        table_mappings: dict[str, Any],
        migration_type: str = "cdc",
        replication_task_settings: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        waiter_delay: float = 30,
        waiter_max_attempts: int = 60,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.replication_task_identifier = replication_task_identifier
        self.replication_instance_arn = replication_instance_arn
        self.source_endpoint_arn = source_endpoint_arn
        self.target_endpoint_arn = target_endpoint_arn
        self.table_mappings = table_mappings
        self.migration_type = migration_type
        self.replication_task_settings = replication_task_settings
        self.tags = tags
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.waiter_delay = waiter_delay
        self.waiter_max_attempts = waiter_max_attempts

    def _check_existing(self, task: dict[str, Any], mappings: dict[str, Any]) -> None:
        expected = {
            "ReplicationInstanceArn": self.replication_instance_arn,
            "SourceEndpointArn": self.source_endpoint_arn,
            "TargetEndpointArn": self.target_endpoint_arn,
            "MigrationType": self.migration_type,
        }
        differences = [key for key, value in expected.items() if task.get(key) != value]
        stored = json.loads(task["TableMappings"]) if task.get("TableMappings") else None
        if stored is not None and _rules_signature(stored) != _rules_signature(mappings):
            differences.append("TableMappings")
        if differences:
            raise AirflowFailException(
                f"DMS replication task {self.replication_task_identifier} already exists with a different "
                f"{', '.join(differences)}. Modify it (DmsModifyTaskOperator) or delete it, then retry."
            )

    def execute(self, context: Context) -> str:
        mappings = self.table_mappings
        if not mappings.get("rules"):
            raise ValueError(
                f"DMS replication task {self.replication_task_identifier}: table_mappings has no rules."
            )
        task = self.hook.find_replication_task(self.replication_task_identifier, without_settings=False)
        if task is None:
            extra: dict[str, Any] = {}
            if self.replication_task_settings:
                extra["ReplicationTaskSettings"] = json.dumps(self.replication_task_settings)
            if self.tags:
                extra["Tags"] = _tags(self.tags)

            def find() -> str | None:
                found = self.hook.find_replication_task(self.replication_task_identifier)
                return found["ReplicationTaskArn"] if found else None

            arn = create_once(
                lambda: self.hook.create_replication_task_nowait(
                    replication_task_id=self.replication_task_identifier,
                    source_endpoint_arn=self.source_endpoint_arn,
                    target_endpoint_arn=self.target_endpoint_arn,
                    replication_instance_arn=self.replication_instance_arn,
                    migration_type=self.migration_type,
                    table_mappings=mappings,
                    **extra,
                ),
                find,
                what=f"DMS replication task {self.replication_task_identifier}",
                log=self.log,
            )
            status = "creating"
            self.log.info("Created DMS replication task %s with %d mapping rules.", arn, len(mappings["rules"]))
        else:
            self._check_existing(task, mappings)
            arn, status = task["ReplicationTaskArn"], task["Status"]
            self.log.info("Reusing DMS replication task %s, now %s.", arn, status)
        if status in DmsResourceHook.TASK_GONE_STATES:
            raise RuntimeError(f"DMS replication task {arn} is {status}; wait until it is gone, then retry.")
        if status != "creating" or not self.wait_for_completion:
            return arn
        trigger = DmsTaskStatusTrigger(
            replication_task_arn=arn, target_status="ready", **trigger_arguments(self)
        )
        return defer_or_wait(self, context, trigger)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> str:
        return _check_event(
            event,
            "replication_task_arn",
            f"Waiting for DMS replication task {self.replication_task_identifier}",
        )


class DmsStartTaskAtPositionOperator(AwsBaseOperator[DmsResourceHook]):
    """
    Start a replication task and wait until it runs: its first start at ``cdc_start_position``, a restart where it
    stopped; a running task is reused.

    - ``ready`` (never run): ``start-replication`` at ``cdc_start_position`` (DMS: "start-replication is the only
      valid action ... the first time" a task runs).
    - ``stopped`` or ``failed``: ``resume-processing``, which continues from the task's recovery checkpoint, so
      nothing is lost and nothing replays beyond what DMS's at-least-once delivery does.
    - with ``reload_target``: a ``full-load``/``full-load-and-cdc`` task is started with ``reload-target`` (every
      table loaded again); a CDC-only task with ``start-replication`` at ``cdc_start_position`` again, which replays
      every change since that position, and only works while the source still holds it (a PostgreSQL slot that
      has moved on forwards the start past the changes in between). A running task is stopped first.
    - ``starting``: waited for; ``stopping``, ``modifying``, ``creating``: retried later.

    :param replication_task_arn: Replication task ARN (templated).
    :param cdc_start_position: Where a first start's CDC begins (templated): a PostgreSQL LSN (``0/1AF7CB8``), a
        MySQL ``binlog-file:position``, or a checkpoint. Required to start a CDC task for the first time.
    :param cdc_stop_position: Optional stop position (templated).
    :param reload_target: Reload instead of resuming (templated; ``"True"``/``"False"`` from a Param).
    :param wait_for_completion: Wait until the task is ``running``.
    :param deferrable: Wait in the triggerer. Defaults to ``[operators] default_deferrable``.
    :param waiter_delay: Seconds between status checks.
    :param waiter_max_attempts: Status checks before giving up.
    """

    aws_hook_class = DmsResourceHook
    template_fields: Sequence[str] = aws_template_fields(
        "replication_task_arn", "cdc_start_position", "cdc_stop_position", "reload_target"
    )

    def __init__(
        self,
        *,
        replication_task_arn: str,
        cdc_start_position: str | None = None,
        cdc_stop_position: str | None = None,
        reload_target: bool | str = False,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        waiter_delay: float = 30,
        waiter_max_attempts: int = 60,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.replication_task_arn = replication_task_arn
        self.cdc_start_position = cdc_start_position
        self.cdc_stop_position = cdc_stop_position
        self.reload_target = reload_target
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.waiter_delay = waiter_delay
        self.waiter_max_attempts = waiter_max_attempts

    @property
    def reloading(self) -> bool:
        value = self.reload_target
        if isinstance(value, str):
            if value.strip().lower() not in ("true", "false", ""):
                raise ValueError(f"reload_target must be true or false, got {value!r}.")
            return value.strip().lower() == "true"
        return bool(value)

    def _start(self, task: dict[str, Any]) -> None:
        """StartReplicationTask with the type and position the task's history asks for."""
        arn, status, migration = self.replication_task_arn, task["Status"], task.get("MigrationType")
        extra: dict[str, Any] = {}
        if status == "ready" or (self.reloading and migration == "cdc"):
            start_type = "start-replication"
            if migration != "full-load":
                if not self.cdc_start_position:
                    raise AirflowFailException(
                        f"cdc_start_position is empty: cannot start DMS replication task {arn} without one."
                    )
                extra["CdcStartPosition"] = self.cdc_start_position
        elif self.reloading:
            start_type = "reload-target"
        else:
            start_type = "resume-processing"  # continue from the task's recovery checkpoint
        if self.cdc_stop_position:
            extra["CdcStopPosition"] = self.cdc_stop_position
        self.hook.start_replication_task(
            replication_task_arn=arn, start_replication_task_type=start_type, **extra
        )
        where = f" at CDC position {extra['CdcStartPosition']}" if "CdcStartPosition" in extra else ""
        self.log.info("Started DMS replication task %s (%s%s).", arn, start_type, where)

    def _wait_running(self, context: Context) -> str:
        if not self.wait_for_completion:
            return self.replication_task_arn
        trigger = DmsTaskStatusTrigger(
            replication_task_arn=self.replication_task_arn, target_status="running", **trigger_arguments(self)
        )
        return defer_or_wait(self, context, trigger)

    def execute(self, context: Context) -> str:
        arn = self.replication_task_arn
        task = self.hook.describe_replication_task(arn)
        if task is None:
            raise AirflowFailException(f"DMS replication task {arn} does not exist.")
        status = task["Status"]
        self.log.info("DMS replication task %s is %s.", arn, status)
        if status == "running" and self.reloading:
            self.log.info("Stopping DMS replication task %s to reload it.", arn)
            self.hook.stop_replication_task(replication_task_arn=arn)
            trigger = DmsTaskStatusTrigger(replication_task_arn=arn, target_status="stopped",
                                           **trigger_arguments(self))  # fmt: skip
            return defer_or_wait(self, context, trigger, method_name="execute_after_stop")
        if status == "running":
            self.log.info("DMS replication task %s is already running; not starting it again.", arn)
            return arn
        if status in DmsResourceHook.TASK_STARTABLE_STATES:
            self._start(task)
        elif status == "starting":
            self.log.info("DMS replication task %s is already starting.", arn)
        else:
            raise RuntimeError(
                f"DMS replication task {arn} is {status}; it can be started only when "
                f"{', '.join(sorted(DmsResourceHook.TASK_STARTABLE_STATES))}. Wait for it to settle, then retry."
            )
        return self._wait_running(context)

    def execute_after_stop(self, context: Context, event: dict[str, Any] | None = None) -> str:
        _check_event(event, "replication_task_arn", f"Stopping DMS replication task {self.replication_task_arn}")
        task = self.hook.describe_replication_task(self.replication_task_arn)
        self._start(task)
        return self._wait_running(context)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> str:
        return _check_event(
            event, "replication_task_arn", f"Starting DMS replication task {self.replication_task_arn}"
        )
