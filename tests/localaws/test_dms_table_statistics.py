"""DescribeTableStatistics on localaws: each table's counts come from the DMS files in the task's S3 target,
over real boto3 clients (every answer checked against botocore's model by the ``dms`` fixture)."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError

ALL_TABLES = {
    "rules": [
        {
            "rule-type": "selection",
            "rule-id": "1",
            "rule-name": "all",
            "object-locator": {"schema-name": "%", "table-name": "%"},
            "rule-action": "include",
        }
    ]
}
TS = "2025-01-01 12:00:00.000000"


def _parquet(ops: list[str]) -> bytes:
    """A DMS Parquet file: Op, the commit time, then the table's columns."""
    sink = io.BytesIO()
    pq.write_table(pa.table({"Op": ops, "_dms_ts": [TS] * len(ops), "id": list(range(len(ops)))}), sink)
    return sink.getvalue()


def _csv(ops: list[str], header: bool = False) -> bytes:
    """A DMS CSV file: the Op in the first field, then the commit time and the table's columns."""
    lines = ["Op,_dms_ts,id"] if header else []
    lines += [f'{op},{TS},"{n}"' for n, op in enumerate(ops)]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def started_task(dms, s3, ready_task, make_bucket):
    """A started task whose S3 target is a fresh bucket, folder ``landing``; returns (ARN, put)."""

    def start(migration_type: str = "cdc", table_mappings: dict | None = None, **s3_settings):
        bucket = make_bucket()
        arn = ready_task(
            migration_type,
            s3_settings={"BucketName": bucket, "BucketFolder": "landing", **s3_settings},
            table_mappings=table_mappings or ALL_TABLES,
        )
        dms.start_replication_task(ReplicationTaskArn=arn, StartReplicationTaskType="start-replication")

        def put(key: str, body: bytes) -> None:
            s3.put_object(Bucket=bucket, Key=f"landing/{key}", Body=body)

        return arn, put

    return start


def _by_table(dms, arn: str, **params) -> dict[str, dict]:
    tables = dms.describe_table_statistics(ReplicationTaskArn=arn, **params)["TableStatistics"]
    return {f"{t['SchemaName']}.{t['TableName']}": t for t in tables}


def _error_code(error: pytest.ExceptionInfo) -> str:
    return error.value.response["Error"]["Code"]


def test_counts_each_operation_in_parquet_and_csv_cdc_files(dms, started_task):
    arn, put = started_task()
    put("public/orders/20250101-120000000.parquet", _parquet(["I", "I", "U", "D", "I"]))
    put("public/orders/20250101-120100000.csv", _csv(["I", "U", "U"]))
    put("public/orders/LOAD00000001.parquet", _parquet(["I"] * 7))  # a CDC-only task loads nothing
    put("sales/customers/20250101-120000000.csv", _csv(["D"]))

    tables = _by_table(dms, arn)

    assert sorted(tables) == ["public.orders", "sales.customers"]
    orders = tables["public.orders"]
    assert (orders["Inserts"], orders["Updates"], orders["Deletes"]) == (4, 3, 1)
    assert (orders["AppliedInserts"], orders["AppliedUpdates"], orders["AppliedDeletes"]) == (4, 3, 1)
    assert (orders["FullLoadRows"], orders["Ddls"], orders["TableState"]) == (0, 0, "Table completed")
    customers = tables["sales.customers"]
    assert (customers["Inserts"], customers["Updates"], customers["Deletes"]) == (0, 0, 1)


def test_skips_unreadable_files_rows_with_unknown_ops_and_other_objects(dms, started_task):
    arn, put = started_task()
    put("public/orders/20250101-120000000.parquet", _parquet(["I", "X", "U"]))
    put("public/orders/20250101-120100000.parquet", b"not parquet at all")
    put("public/orders/20250101-120200000.csv", _csv(["D", "?"]))
    put("public/orders/notes.txt", _csv(["I"] * 9))
    put("public/orders/2025/01/20250101-120300000.csv", _csv(["I"] * 9))
    put("public/20250101-120000000.csv", _csv(["I"] * 9))

    orders = _by_table(dms, arn)["public.orders"]

    assert (orders["Inserts"], orders["Updates"], orders["Deletes"]) == (1, 1, 1)


def test_full_load_rows_come_from_load_files_when_the_task_loads(dms, started_task):
    arn, put = started_task("full-load-and-cdc", AddColumnName=True)
    put("public/orders/LOAD00000001.parquet", _parquet(["I"] * 5))
    put("public/orders/LOAD00000002.csv", _csv(["I", "I"], header=True))
    put("public/orders/20250101-120000000.csv", _csv(["U", "D", "I"], header=True))

    orders = _by_table(dms, arn)["public.orders"]

    assert orders["FullLoadRows"] == 7
    assert (orders["Inserts"], orders["Updates"], orders["Deletes"]) == (1, 1, 1)
    assert orders["FullLoadReloaded"] is False
    assert "FullLoadStartTime" in orders


def test_only_tables_the_selection_rules_pick_are_listed(dms, started_task):
    def rule(rule_id: str, action: str, schema: str, table: str) -> dict:
        return {
            "rule-type": "selection",
            "rule-id": rule_id,
            "rule-name": rule_id,
            "object-locator": {"schema-name": schema, "table-name": table},
            "rule-action": action,
        }

    mappings = {"rules": [rule("1", "include", "public", "%"), rule("2", "exclude", "public", "audit[_]%")]}
    arn, put = started_task(table_mappings=mappings)
    for table in ("public/orders", "public/audit_log", "public/auditor", "sales/orders"):
        put(f"{table}/20250101-120000000.csv", _csv(["I"]))

    assert sorted(_by_table(dms, arn)) == ["public.auditor", "public.orders"]


def test_filters_combine_as_and(dms, started_task):
    arn, put = started_task()
    for table in ("public/orders", "public/items", "sales/orders"):
        put(f"{table}/20250101-120000000.csv", _csv(["I"]))

    def names(*filters: tuple[str, list[str]]) -> list[str]:
        return sorted(_by_table(dms, arn, Filters=[{"Name": n, "Values": v} for n, v in filters]))

    assert names(("schema-name", ["public"])) == ["public.items", "public.orders"]
    assert names(("table-name", ["orders"])) == ["public.orders", "sales.orders"]
    assert names(("schema-name", ["public"]), ("table-name", ["orders", "other"])) == ["public.orders"]
    assert len(names(("table-state", ["Table completed"]))) == 3
    assert names(("table-state", ["Table error"])) == []
    with pytest.raises(ClientError) as error:
        names(("table-status", ["Table completed"]))
    assert _error_code(error) == "InvalidParameterValueException"


def test_the_botocore_paginator_pages_through_every_table(dms, started_task):
    arn, put = started_task()
    expected = [f"public.t{n:02d}" for n in range(25)]
    for name in expected:
        put(f"{name.replace('.', '/')}/20250101-120000000.csv", _csv(["I"]))

    first = dms.describe_table_statistics(ReplicationTaskArn=arn, MaxRecords=20)
    assert len(first["TableStatistics"]) == 20 and first["Marker"]
    pages = list(
        dms.get_paginator("describe_table_statistics").paginate(
            ReplicationTaskArn=arn, PaginationConfig={"PageSize": 20}
        )
    )

    assert [len(page["TableStatistics"]) for page in pages] == [20, 5]
    assert "Marker" not in pages[-1]
    assert [f"{t['SchemaName']}.{t['TableName']}" for page in pages for t in page["TableStatistics"]] == expected


@pytest.mark.parametrize("max_records", [19, 501])
def test_max_records_outside_20_to_500_is_refused(dms, started_task, max_records):
    arn, _put = started_task()
    with pytest.raises(ClientError) as error:
        dms.describe_table_statistics(ReplicationTaskArn=arn, MaxRecords=max_records)
    assert _error_code(error) == "InvalidParameterValueException"


def test_unknown_task_is_not_found(dms, started_task):
    arn, _put = started_task()
    with pytest.raises(dms.exceptions.ResourceNotFoundFault):
        dms.describe_table_statistics(ReplicationTaskArn=f"{arn}-missing")


def test_a_task_never_started_has_no_statistics(dms, s3, ready_task, make_bucket):
    bucket = make_bucket()
    s3.put_object(Bucket=bucket, Key="landing/public/orders/20250101-120000000.csv", Body=_csv(["I"]))
    arn = ready_task(s3_settings={"BucketName": bucket, "BucketFolder": "landing"}, table_mappings=ALL_TABLES)

    answer = dms.describe_table_statistics(ReplicationTaskArn=arn)

    assert answer["TableStatistics"] == []
    assert answer["ReplicationTaskArn"] == arn


def test_the_raw_answer_fits_the_model_and_has_no_nulls(dms, started_task, shape_checker):
    arn, put = started_task()
    put("public/orders/20250101-120000000.parquet", _parquet(["I"]))
    raw = []

    def keep_body(response_dict, **_):
        raw.append(json.loads(response_dict["body"]))

    dms.meta.events.register("before-parse.*.DescribeTableStatistics", keep_body)

    dms.describe_table_statistics(ReplicationTaskArn=arn)

    (body,) = raw
    shape_checker(body, dms.meta.service_model.operation_model("DescribeTableStatistics").output_shape)
    assert set(body) == {"ReplicationTaskArn", "TableStatistics"}  # one page: no Marker
    (table,) = body["TableStatistics"]
    assert None not in table.values()
    # A CDC-only task loads nothing, so AWS sends no full-load times for its tables.
    assert not {"FullLoadStartTime", "FullLoadEndTime", "FullLoadReloaded"} & set(table)
    assert isinstance(table["LastUpdateTime"], float)


def test_a_file_added_or_rewritten_later_is_counted_on_the_next_call(dms, started_task, advance):
    arn, put = started_task()
    put("public/orders/20250101-120000000.parquet", _parquet(["I", "I"]))
    first = _by_table(dms, arn)["public.orders"]
    advance(5)
    assert _by_table(dms, arn)["public.orders"]["LastUpdateTime"] == first["LastUpdateTime"]  # nothing new

    put("public/orders/20250101-120100000.csv", _csv(["U"]))
    added = _by_table(dms, arn)["public.orders"]
    put("public/orders/20250101-120000000.parquet", _parquet(["D", "D", "D"]))
    rewritten = _by_table(dms, arn)["public.orders"]

    assert (first["Inserts"], first["Updates"]) == (2, 0)
    assert (added["Inserts"], added["Updates"]) == (2, 1)
    assert (added["LastUpdateTime"] - first["LastUpdateTime"]).total_seconds() == pytest.approx(5)
    assert (rewritten["Inserts"], rewritten["Updates"], rewritten["Deletes"]) == (0, 1, 3)
