"""The Iceberg catalog that holds a dataset's tables: a typed spec, the AWS access it runs with, and the
properties pyiceberg's ``load_catalog`` takes.

Kinds:
- ``sql``: pyiceberg's ``SqlCatalog`` on a SQLAlchemy URL. The embedded default is a SQLite file, which only
  works when every process that syncs or reads runs on one machine; several machines (Airflow workers on
  other hosts, training nodes) need a shared database (``postgresql+psycopg://...``) or one of the kinds below.
- ``glue``: the AWS Glue Data Catalog (the namespace is a Glue database).
- ``s3tables``: Amazon S3 Tables through its Iceberg REST endpoint, requests signed with SigV4
  (``https://s3tables.<region>.amazonaws.com/iceberg``, the warehouse is the table bucket's ARN).
- ``rest``: any other Iceberg REST catalog (its own properties, e.g. SigV4 or OAuth, in ``properties``).

Credentials never live in the spec: :class:`AwsAccess` carries them at run time (from the Airflow AWS
connection's boto3 session, or the default boto3 chain), and nothing here logs them.

.. seealso::
    https://py.iceberg.apache.org/configuration/ (catalog and FileIO properties) and
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/s3-tables-integrating-open-source.html
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from finetune_pipeline.datasets import sync_defaults

CatalogKind = Literal["sql", "glue", "s3tables", "rest"]
KINDS: tuple[str, ...] = ("sql", "glue", "s3tables", "rest")
# S3 Tables and Glue accept lowercase letters, digits and underscores in namespace and table names.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,253}[a-z0-9]$|^[a-z0-9]$")
_S3TABLES_ARN_RE = re.compile(r"^arn:aws[a-z-]*:s3tables:[a-z0-9-]+:\d{12}:bucket/[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
# Properties that carry credentials: refused in the spec (they come from AwsAccess or a connection).
_SECRET_HINTS = ("secret", "password", "token", "credential", "access-key")


class CatalogError(Exception):
    """The catalog could not be reached or refused us; the message names the catalog, never a secret."""


class NoNamespaceError(CatalogError):
    """The catalog answers but has no namespace of that name: nothing was ever synced into it."""


def table_name_of(table: str) -> str:
    """``public.tickets`` -> ``public__tickets``: the Iceberg table name of a ``schema.table`` contract."""
    schema_name, _, name = table.partition(".")
    return f"{schema_name}__{name}".lower()


class CatalogSpec(BaseModel):
    """Which catalog, where its warehouse is, and the namespace of the dataset's tables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: CatalogKind = sync_defaults.CATALOG_KIND
    name: str = Field(default=sync_defaults.CATALOG_NAME, min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    namespace: str = sync_defaults.NAMESPACE
    # sql: a SQLAlchemy URL (sqlite:////path/catalog.db, postgresql+psycopg://host/db); s3tables: the REST
    # endpoint (defaults to the region's); rest: the endpoint.
    uri: str | None = None
    # sql, glue: where table data and metadata go (s3://bucket/prefix or a file:// folder); s3tables: the
    # table bucket's ARN; rest: whatever the catalog calls its warehouse.
    warehouse: str | None = None
    # More pyiceberg catalog properties (e.g. glue.id, rest.signing-name). Never credentials.
    properties: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> CatalogSpec:
        if not _NAME_RE.match(self.namespace):
            raise ValueError(
                f"namespace {self.namespace!r}: use lowercase letters, digits and '_' (Glue and S3 Tables names)"
            )
        secret = sorted(k for k in self.properties if any(h in k.lower() for h in _SECRET_HINTS))
        if secret:
            raise ValueError(f"properties {secret} look like credentials; they come from the AWS connection")
        if self.kind == "sql" and not self.uri:
            raise ValueError("a sql catalog needs uri, a SQLAlchemy URL like sqlite:////var/lib/finetune/catalog.db")
        if self.kind == "s3tables" and not (self.warehouse and _S3TABLES_ARN_RE.match(self.warehouse)):
            raise ValueError(
                "an s3tables catalog needs warehouse, the table bucket's ARN like "
                "arn:aws:s3tables:us-east-1:123456789012:bucket/finetune"
            )
        if self.kind == "rest" and not self.uri:
            raise ValueError("a rest catalog needs uri, the catalog's endpoint")
        return self

    def identifier(self, table: str) -> tuple[str, str]:
        """The Iceberg identifier of a ``schema.table`` contract in this catalog."""
        return (self.namespace, table_name_of(table))

    def table_location(self, table: str) -> str | None:
        """Where a new table's files go; None where the catalog chooses (S3 Tables, REST)."""
        if self.kind not in ("sql", "glue"):
            return None
        if not self.warehouse:
            raise ValueError(f"a {self.kind} catalog needs a warehouse (e.g. s3://bucket/datasets/warehouse) to create "
                             f"table {table}")
        return f"{self.warehouse.rstrip('/')}/{self.namespace}/{table_name_of(table)}"

    def describe(self) -> str:
        """One line naming the catalog, with any password in the URL hidden."""
        where = f" at {_hide_password(self.uri)}" if self.uri else ""
        return f"{self.kind} catalog {self.name!r}{where}, warehouse {self.warehouse or '(the catalog’s)'}"


def _hide_password(uri: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", uri)


@dataclass(frozen=True)
class AwsAccess:
    """How to reach AWS at run time: region, an endpoint override (localaws) and credentials, never printed."""

    region: str | None = None
    endpoint_url: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_session(cls, session: Any, *, region: str | None = None, endpoint_url: str | None = None) -> AwsAccess:
        """From a boto3 session (e.g. ``S3Hook.get_session()``): the credentials it resolves right now."""
        credentials = session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
        return cls(
            region=region or session.region_name,
            endpoint_url=endpoint_url,
            access_key_id=frozen.access_key if frozen else None,
            secret_access_key=frozen.secret_key if frozen else None,
            session_token=frozen.token if frozen else None,
        )


class StandardS3Retries(pafs.AwsStandardS3RetryStrategy):
    """Arrow's S3 client (pyiceberg's FileIO) retrying as botocore's standard mode on the connection does.

    Arrow's own default gives up after 3 attempts; throttling (SlowDown, 503) on a busy bucket outlasts that,
    and a failed metadata read would fail the whole commit. pyiceberg builds it by class path with no
    arguments (``s3.retry-strategy-impl``), hence the fixed count here.
    """

    def __init__(self) -> None:
        super().__init__(max_attempts=10)


def catalog_properties(spec: CatalogSpec, access: AwsAccess | None = None) -> dict[str, str]:
    """The properties for ``load_catalog``: the spec's, then FileIO (S3) and client settings from ``access``.

    The result holds credentials: hand it to pyiceberg, never to a log.
    """
    props: dict[str, str] = {"type": "sql" if spec.kind == "sql" else spec.kind}
    if spec.kind == "s3tables":
        region = (access.region if access else None) or _region_of_arn(spec.warehouse)
        props.update(
            {
                "type": "rest",
                "uri": spec.uri or f"https://s3tables.{region}.amazonaws.com/iceberg",
                "rest.sigv4-enabled": "true",
                "rest.signing-name": "s3tables",
                "rest.signing-region": region,
            }
        )
    elif spec.uri:
        props["uri"] = spec.uri
    if spec.warehouse:
        props["warehouse"] = spec.warehouse
    if spec.kind == "sql":
        # Create the catalog's two tables on first use; a shared database may already have them.
        props["init_catalog_tables"] = "true"
    props["s3.retry-strategy-impl"] = f"{StandardS3Retries.__module__}.{StandardS3Retries.__qualname__}"
    if access is not None:
        if access.region:
            props.update({"client.region": access.region, "s3.region": access.region, "glue.region": access.region})
        if access.access_key_id and access.secret_access_key:
            props.update(
                {
                    "client.access-key-id": access.access_key_id,
                    "client.secret-access-key": access.secret_access_key,
                    "s3.access-key-id": access.access_key_id,
                    "s3.secret-access-key": access.secret_access_key,
                    "glue.access-key-id": access.access_key_id,
                    "glue.secret-access-key": access.secret_access_key,
                }
            )
            if access.session_token:
                props.update(
                    {
                        "client.session-token": access.session_token,
                        "s3.session-token": access.session_token,
                        "glue.session-token": access.session_token,
                    }
                )
        if access.endpoint_url:
            props["s3.endpoint"] = access.endpoint_url
            if spec.kind == "glue":
                props["glue.endpoint"] = access.endpoint_url
    props.update(spec.properties)
    return props


def fileio_properties(access: AwsAccess | None) -> dict[str, str]:
    """Only the S3 FileIO properties of :func:`catalog_properties` (for reading tables without a catalog)."""
    props = catalog_properties(CatalogSpec(kind="rest", uri="unused"), access)
    return {k: v for k, v in props.items() if k.startswith(("s3.", "client."))}


def _region_of_arn(arn: str | None) -> str:
    return arn.split(":")[3] if arn and arn.count(":") >= 4 else "us-east-1"


def load(spec: CatalogSpec, access: AwsAccess | None = None, *, create_namespace: bool = False) -> Any:
    """``load_catalog`` with the spec's properties, and a first call that proves the catalog answers.

    :param create_namespace: Create the namespace if missing (the sync); a reader only checks it exists.
    :raises CatalogError: the catalog is unreachable, refuses the credentials, or lacks the namespace.
    """
    from pyiceberg.catalog import load_catalog
    from pyiceberg.exceptions import NoSuchNamespaceError

    props = catalog_properties(spec, access)
    secrets = [v for k, v in props.items() if any(h in k for h in ("secret", "token"))]
    try:
        catalog = load_catalog(spec.name, **props)
        if create_namespace:
            catalog.create_namespace_if_not_exists(spec.namespace)
        else:
            catalog.load_namespace_properties(spec.namespace)
    except NoSuchNamespaceError:
        raise NoNamespaceError(f"{spec.describe()}: no namespace {spec.namespace!r} (nothing synced yet)") from None
    except Exception as error:  # sqlalchemy, requests, botocore: one clear line instead of a driver's traceback
        raise CatalogError(f"cannot use the {spec.describe()}: {_scrub(error, secrets)}") from None
    return catalog


def _scrub(error: BaseException, secrets: list[str]) -> str:
    text = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _hide_password(text)[:500]


# ------------------------------------------------------------------------------------------ command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The catalog options shared by the CLI and the training entrypoint."""
    group = parser.add_argument_group("Iceberg catalog")
    group.add_argument("--catalog-kind", choices=KINDS, default=None, help="default: sql (SQLite)")
    group.add_argument("--catalog-name", default=sync_defaults.CATALOG_NAME)
    group.add_argument("--catalog-uri", help="sql: SQLAlchemy URL; s3tables/rest: endpoint")
    group.add_argument("--warehouse", help="sql/glue: s3://bucket/prefix or a folder; s3tables: table bucket ARN")
    group.add_argument("--namespace", default=sync_defaults.NAMESPACE)
    group.add_argument("--catalog-property", action="append", default=[], metavar="KEY=VALUE",
                       help="another pyiceberg catalog property (repeatable)")


def spec_from_arguments(
    args: argparse.Namespace, *, default_uri: str | None = None, default_warehouse: str | None = None
) -> CatalogSpec:
    """A spec from :func:`add_arguments`' options; ``default_*`` fill what a local dataset folder implies."""
    props = {}
    for item in args.catalog_property:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--catalog-property {item!r}: expected KEY=VALUE")
        props[key] = value
    kind = args.catalog_kind or sync_defaults.CATALOG_KIND
    try:
        return CatalogSpec(
            kind=kind,
            name=args.catalog_name,
            namespace=args.namespace,
            uri=args.catalog_uri or (default_uri if kind == "sql" else None),
            warehouse=args.warehouse or (default_warehouse if kind in ("sql", "glue") else None),
            properties=props,
        )
    except ValidationError as error:
        raise ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())) from None
