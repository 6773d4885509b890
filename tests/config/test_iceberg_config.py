"""The config's iceberg section: the catalog kinds, what each needs, and no credentials in the file."""

from __future__ import annotations

import pytest

from devstack.config import TEMPLATE_PATH, demo_config_data
from finetune_pipeline.pipeline.config import PipelineConfigError, parse_config


def _with(tmp_path, **iceberg):
    data = demo_config_data(home=tmp_path, localaws_url="http://127.0.0.1:4566")
    data["iceberg"] = iceberg
    return parse_config(data, "test", base_dir=TEMPLATE_PATH.parent)


def test_the_embedded_default_and_the_shipped_kinds(tmp_path):
    assert _with(tmp_path).iceberg.catalog == "sql"
    assert _with(tmp_path, catalog="glue").iceberg.namespace == "finetune"
    s3tables = _with(tmp_path, catalog="s3tables", warehouse="arn:aws:s3tables:us-east-1:123456789012:bucket/ft")
    assert s3tables.iceberg.warehouse.endswith("bucket/ft")
    assert _with(tmp_path, sql_uri="postgresql+psycopg://catalog-db/iceberg").iceberg.sql_uri


@pytest.mark.parametrize(
    ("iceberg", "message"),
    [
        ({"catalog": "s3tables"}, "catalog s3tables needs warehouse, the table bucket's ARN"),
        ({"catalog": "rest"}, "catalog rest needs rest_uri"),
        ({"catalog": "glue", "sql_uri": "sqlite:////x.db"}, "apply to catalog: sql, not glue"),
        ({"sql_uri": "postgresql://u:secret@db/iceberg"}, "must not hold a password: use sql_conn_id"),
        ({"sql_uri": "sqlite:////x.db", "sql_conn_id": "db"}, "give sql_uri or sql_conn_id, not both"),
        ({"namespace": "Fine-Tune"}, "iceberg.namespace"),
        ({"catalog": "glue", "warehouse": "/local/folder"}, "must be an s3:// location"),
        ({"properties": {"s3.secret-access-key": "x"}}, "must not hold credentials"),
        ({"orphan_file_grace_hours": 0.1}, "iceberg.orphan_file_grace_hours"),
    ],
)
def test_bad_settings_name_the_field(tmp_path, iceberg, message):
    with pytest.raises(PipelineConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _with(tmp_path, **iceberg)
