"""The DMS S3 target contract: one owner for what DMS writes and what the sync reads back."""

from __future__ import annotations

import pytest

from finetune_pipeline.datasets import dms_format
from finetune_pipeline.datasets.contracts import RESERVED_COLUMNS
from finetune_pipeline.datasets.dms_target import (
    OP_COLUMN,
    SEQUENCE_COLUMN,
    TIMESTAMP_COLUMN,
    cdc_table_mappings,
    s3_target_settings,
)

TABLES = [("public", "customers"), ("public", "tickets")]


def test_the_reader_and_the_contracts_use_the_columns_dms_is_told_to_write():
    settings = s3_target_settings(bucket="b", folder="landing", service_access_role_arn="arn:aws:iam::1:role/r")
    assert settings["TimestampColumnName"] == TIMESTAMP_COLUMN == dms_format.TS
    assert settings["IncludeOpForFullLoad"] is True and OP_COLUMN == dms_format.OP
    sequence_rules = [r for r in cdc_table_mappings(TABLES)["rules"] if r["rule-type"] == "transformation"]
    assert {r["value"] for r in sequence_rules} == {SEQUENCE_COLUMN} and SEQUENCE_COLUMN == dms_format.SEQ
    assert set(RESERVED_COLUMNS) == {OP_COLUMN, TIMESTAMP_COLUMN, SEQUENCE_COLUMN}


def test_table_mappings_select_each_table_and_add_the_sequence_column():
    rules = cdc_table_mappings(TABLES)["rules"]
    selections = [r for r in rules if r["rule-type"] == "selection"]
    additions = [r for r in rules if r["rule-type"] == "transformation"]
    assert [r["object-locator"] for r in selections] == [
        {"schema-name": "public", "table-name": "customers"},
        {"schema-name": "public", "table-name": "tickets"},
    ]
    assert all(r["rule-action"] == "include" for r in selections)
    assert [(r["rule-action"], r["value"], r["expression"]) for r in additions] == [
        ("add-column", "_dms_seq", "$AR_H_CHANGE_SEQ")
    ] * 2
    assert [r["rule-id"] for r in rules] == ["1", "2", "3", "4"]
    assert len({r["rule-name"] for r in rules}) == 4


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ([], "At least one"),
        ([("public", "t"), ("public", "t")], "listed twice"),
        ([("public", "%")], "wildcards"),
        (["public.t"], "pair of non-empty names"),
        ([("public", "")], "pair of non-empty names"),
    ],
)
def test_table_mappings_reject_bad_tables(tables, message):
    with pytest.raises(ValueError, match=message):
        cdc_table_mappings(tables)
