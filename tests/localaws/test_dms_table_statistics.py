"""DescribeTableStatistics on localaws: each table's counts are what the task's data plane wrote to S3, over real
boto3 clients (every answer checked against botocore's model by the ``dms`` fixture)."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError
from replication_helpers import wait_for


def _rule(rule_id: str, action: str, schema: str, table: str) -> dict:
    return {
        "rule-type": "selection",
        "rule-id": rule_id,
        "rule-name": rule_id,
        "object-locator": {"schema-name": schema, "table-name": table},
        "rule-action": action,
    }


ALL_TABLES = {"rules": [_rule("1", "include", "%", "%")]}


@pytest.fixture
def tables(source):
    """Make tables in the source: ``tables("public.orders", "sales.orders")``."""

    def make(*names: str) -> None:
        for name in names:
            schema, table = name.split(".")
            source.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}; CREATE TABLE {schema}.{table} "
                           "(id int PRIMARY KEY, state text)")  # fmt: skip

    return make


@pytest.fixture
def started(replication, source):
    """A running CDC task on a new slot of the source, over ``table_mappings`` (every table by default)."""

    def start(table_mappings: dict | None = None, **kwargs):
        lsn = source.create_slot("stats_slot")
        task = replication(mappings=table_mappings or ALL_TABLES, postgres={"SlotName": "stats_slot"}, **kwargs)
        task.start(CdcStartPosition=lsn)
        # A running task lists every selected table as soon as it reads the source's catalog.
        wait_for(lambda: _by_table(task), what="the task's tables")
        return task

    return start


def _by_table(task, **params) -> dict[str, dict]:
    answer = task.dms.describe_table_statistics(ReplicationTaskArn=task.arn, **params)["TableStatistics"]
    return {f"{t['SchemaName']}.{t['TableName']}": t for t in answer}


def _error_code(error: pytest.ExceptionInfo) -> str:
    return error.value.response["Error"]["Code"]


def test_counts_each_operation_the_task_wrote(started, tables, source):
    tables("public.orders", "sales.customers")
    task = started()
    source.execute("INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 4) g;"
                   "UPDATE orders SET state = 'paid' WHERE id <= 3; DELETE FROM orders WHERE id = 4;"
                   "INSERT INTO sales.customers VALUES (1, 'x'); DELETE FROM sales.customers")  # fmt: skip
    before = _by_table(task)
    assert (before["public.orders"]["Inserts"], before["public.orders"]["Updates"]) == (0, 0)  # not yet in S3
    task.flush()
    wait_for(lambda: _by_table(task)["public.orders"]["Inserts"] == 4, what="the counts")

    orders, customers = _by_table(task)["public.orders"], _by_table(task)["sales.customers"]
    assert (orders["Inserts"], orders["Updates"], orders["Deletes"]) == (4, 3, 1)
    assert (orders["AppliedInserts"], orders["AppliedUpdates"], orders["AppliedDeletes"]) == (4, 3, 1)
    assert (orders["FullLoadRows"], orders["Ddls"], orders["TableState"]) == (0, 0, "Table completed")
    assert (customers["Inserts"], customers["Updates"], customers["Deletes"]) == (1, 0, 1)


def test_full_load_rows_come_from_the_load(replication, tables, source):
    tables("public.orders")
    source.execute("INSERT INTO orders SELECT g, 'old' FROM generate_series(1, 7) g")
    task = replication(migration_type="full-load-and-cdc", mappings=ALL_TABLES)
    task.start()
    wait_for(lambda: _by_table(task).get("public.orders", {}).get("FullLoadEndTime"), what="the load")
    source.execute("UPDATE orders SET state = 'new' WHERE id = 1; INSERT INTO orders VALUES (8, 'x')")
    task.flush()
    orders = wait_for(lambda: (o := _by_table(task)["public.orders"])["Inserts"] == 1 and o, what="the changes")
    assert (orders["FullLoadRows"], orders["Updates"], orders["Deletes"]) == (7, 1, 0)
    assert orders["FullLoadReloaded"] is False
    assert orders["FullLoadStartTime"] <= orders["FullLoadEndTime"]


def test_only_tables_the_selection_rules_pick_are_listed(started, tables):
    tables("public.orders", "public.audit_log", "public.auditor", "sales.orders")
    mappings = {"rules": [_rule("1", "include", "public", "%"), _rule("2", "exclude", "public", "audit[_]%")]}
    task = started(mappings)
    assert sorted(_by_table(task)) == ["public.auditor", "public.orders"]  # listed from the start, with zeros


def test_filters_combine_as_and(started, tables):
    tables("public.orders", "public.items", "sales.orders")
    task = started()

    def names(*filters: tuple[str, list[str]]) -> list[str]:
        return sorted(_by_table(task, Filters=[{"Name": n, "Values": v} for n, v in filters]))

    assert names(("schema-name", ["public"])) == ["public.items", "public.orders"]
    assert names(("table-name", ["orders"])) == ["public.orders", "sales.orders"]
    assert names(("schema-name", ["public"]), ("table-name", ["orders", "other"])) == ["public.orders"]
    assert len(names(("table-state", ["Table completed"]))) == 3
    assert names(("table-state", ["Table error"])) == []
    with pytest.raises(ClientError) as error:
        names(("table-status", ["Table completed"]))
    assert _error_code(error) == "InvalidParameterValueException"


def test_the_botocore_paginator_pages_through_every_table(started, tables):
    expected = [f"public.t{n:02d}" for n in range(25)]
    tables(*expected)
    task = started()

    first = task.dms.describe_table_statistics(ReplicationTaskArn=task.arn, MaxRecords=20)
    assert len(first["TableStatistics"]) == 20 and first["Marker"]
    pages = list(
        task.dms.get_paginator("describe_table_statistics").paginate(
            ReplicationTaskArn=task.arn, PaginationConfig={"PageSize": 20}
        )
    )

    assert [len(page["TableStatistics"]) for page in pages] == [20, 5]
    assert "Marker" not in pages[-1]
    assert [f"{t['SchemaName']}.{t['TableName']}" for page in pages for t in page["TableStatistics"]] == expected


@pytest.mark.parametrize("max_records", [19, 501])
def test_max_records_outside_20_to_500_is_refused(dms, ready_task, max_records):
    with pytest.raises(ClientError) as error:
        dms.describe_table_statistics(ReplicationTaskArn=ready_task(), MaxRecords=max_records)
    assert _error_code(error) == "InvalidParameterValueException"


def test_unknown_task_is_not_found(dms, ready_task):
    with pytest.raises(dms.exceptions.ResourceNotFoundFault):
        dms.describe_table_statistics(ReplicationTaskArn=f"{ready_task()}-missing")


def test_a_task_never_started_has_no_statistics(replication, tables):
    tables("public.orders")
    task = replication(mappings=ALL_TABLES)
    answer = task.dms.describe_table_statistics(ReplicationTaskArn=task.arn)
    assert answer["TableStatistics"] == []
    assert answer["ReplicationTaskArn"] == task.arn


def test_the_raw_answer_fits_the_model_and_has_no_nulls(started, tables, source, shape_checker):
    tables("public.orders")
    task = started()
    source.execute("INSERT INTO orders VALUES (1, 'x')")
    task.flush()
    wait_for(lambda: _by_table(task)["public.orders"]["Inserts"], what="the insert")
    raw = []
    task.dms.meta.events.register(
        "before-parse.*.DescribeTableStatistics",
        lambda response_dict, **_: raw.append(json.loads(response_dict["body"])),
    )

    task.dms.describe_table_statistics(ReplicationTaskArn=task.arn)

    (body,) = raw
    shape_checker(body, task.dms.meta.service_model.operation_model("DescribeTableStatistics").output_shape)
    assert set(body) == {"ReplicationTaskArn", "TableStatistics"}  # one page: no Marker
    (table,) = body["TableStatistics"]
    assert None not in table.values()
    # A CDC-only task loads nothing, so AWS sends no full-load times for its tables.
    assert not {"FullLoadStartTime", "FullLoadEndTime", "FullLoadReloaded"} & set(table)
    assert isinstance(table["LastUpdateTime"], float)


def test_last_update_time_moves_only_when_counts_change(started, tables, source):
    tables("public.orders")
    task = started()
    source.execute("INSERT INTO orders VALUES (1, 'x')")
    task.flush()
    first = wait_for(lambda: (o := _by_table(task)["public.orders"])["Inserts"] and o, what="the insert")
    task.advance(5)
    assert _by_table(task)["public.orders"]["LastUpdateTime"] == first["LastUpdateTime"]  # nothing new

    source.execute("UPDATE orders SET state = 'y'")
    task.flush()
    later = wait_for(lambda: (o := _by_table(task)["public.orders"])["Updates"] and o, what="the update")
    assert later["LastUpdateTime"] > first["LastUpdateTime"]
