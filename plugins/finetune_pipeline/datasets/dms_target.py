"""What the DMS S3 target must write for the sync to read it: the one owner of that contract.

The pipeline hands :func:`s3_target_settings` and :func:`cdc_table_mappings` to the generic DMS operators
(as the provider's operators take ``table_mappings``), and the reader (:mod:`.dms_format`), the contracts
and the merge use the column names below. Change a name here and both sides follow.

.. seealso::
    https://docs.aws.amazon.com/dms/latest/userguide/CHAP_Target.S3.html (S3 target settings, the ``Op``
    column, ``TimestampColumnName``) and
    https://docs.aws.amazon.com/dms/latest/userguide/CHAP_Tasks.CustomizingTasks.TableMapping.SelectionTransformation.Expressions.html
    (``$AR_H_CHANGE_SEQ``)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# The operation of each row: I, U or D (IncludeOpForFullLoad puts I on full-load rows too).
OP_COLUMN = "Op"
# The commit time of each change, added by the TimestampColumnName setting.
TIMESTAMP_COLUMN = "_dms_ts"
# The source's commit order, from the $AR_H_CHANGE_SEQ header: 35 digits.
SEQUENCE_COLUMN = "_dms_seq"
SEQUENCE_LENGTH = 35
# Columns DMS adds; a table's own columns may not use these names.
RESERVED_COLUMNS = (OP_COLUMN, TIMESTAMP_COLUMN, SEQUENCE_COLUMN)
# How often DMS closes a CDC file, in seconds; the sync's late-file window must be wider.
CDC_MAX_BATCH_INTERVAL_SECONDS = 60


def s3_target_settings(*, bucket: str, folder: str, service_access_role_arn: str) -> dict[str, Any]:
    """``S3Settings`` of the target endpoint: exactly the layout and columns the reader expects."""
    return {
        "BucketName": bucket,
        "BucketFolder": folder,
        "ServiceAccessRoleArn": service_access_role_arn,
        "DataFormat": "parquet",
        "ParquetVersion": "parquet-2-0",
        # Full-load rows carry Op=I, so LOAD and CDC files have the same columns.
        "IncludeOpForFullLoad": True,
        "TimestampColumnName": TIMESTAMP_COLUMN,
        # The reader parses the timestamp column's microseconds.
        "ParquetTimestampInMillisecond": False,
        # Files sit directly under <folder>/<schema>/<table>/, named by time, so key order is time order.
        "DatePartitionEnabled": False,
        "PreserveTransactions": False,
        "CdcMaxBatchInterval": CDC_MAX_BATCH_INTERVAL_SECONDS,
    }


def cdc_table_mappings(tables: Sequence[Sequence[str]]) -> dict[str, Any]:
    """
    DMS table mappings that include exactly ``tables`` and add the sequence column from ``$AR_H_CHANGE_SEQ``.

    :param tables: ``(schema, table)`` pairs, no wildcards, no duplicates.
    :raises ValueError: on an empty list, a malformed pair, a wildcard or a duplicate.
    """
    pairs: list[tuple[str, str]] = []
    for item in tables:
        if isinstance(item, str) or len(item) != 2 or not all(isinstance(p, str) and p.strip() for p in item):
            raise ValueError(f"Each table must be a (schema, table) pair of non-empty names, got {item!r}.")
        schema, table = item[0].strip(), item[1].strip()
        if "%" in schema or "%" in table:
            raise ValueError(f"Table {schema}.{table}: wildcards are not allowed, list each table.")
        if (schema, table) in pairs:
            raise ValueError(f"Table {schema}.{table} is listed twice.")
        pairs.append((schema, table))
    if not pairs:
        raise ValueError("At least one (schema, table) pair is needed to replicate.")
    selections = [
        {
            "rule-type": "selection",
            "rule-name": f"include-{schema}-{table}",
            "object-locator": {"schema-name": schema, "table-name": table},
            "rule-action": "include",
        }
        for schema, table in pairs
    ]
    transformations = [
        {
            "rule-type": "transformation",
            "rule-name": f"add-{SEQUENCE_COLUMN}-{schema}-{table}",
            "rule-target": "column",
            "object-locator": {"schema-name": schema, "table-name": table},
            "rule-action": "add-column",
            "value": SEQUENCE_COLUMN,
            "expression": "$AR_H_CHANGE_SEQ",
            "data-type": {"type": "string", "length": 50},
        }
        for schema, table in pairs
    ]
    rules = [*selections, *transformations]
    for number, rule in enumerate(rules, start=1):
        rule["rule-id"] = str(number)
    return {"rules": rules}
