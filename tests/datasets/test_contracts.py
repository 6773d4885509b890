"""Contracts: the demo contracts load; a bad contract fails with a message naming the field."""

from __future__ import annotations

from datetime import timedelta

import pyarrow as pa
import pytest
import yaml
from ds_helpers import DEMO_CONTRACTS, ITEMS_YAML

from finetune_pipeline.datasets.contracts import (
    BadFilePolicy,
    ContractError,
    load_contract,
    load_contracts,
    parse_arrow_type,
    parse_contract,
)


def test_demo_contracts():
    contracts = load_contracts(DEMO_CONTRACTS)
    assert sorted(contracts) == ["public.customers", "public.ticket_messages", "public.tickets"]
    customers, tickets = contracts["public.customers"], contracts["public.tickets"]
    assert customers.primary_key == ["customer_id"]
    assert customers.arrow_schema() == pa.schema(
        [
            ("customer_id", pa.int64()),
            ("name", pa.string()),
            ("tier", pa.string()),
            ("created_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    assert customers.column("tier").allowed_values == ["free", "pro", "enterprise"]
    assert not customers.column("name").nullable
    assert tickets.column("priority").arrow_type == pa.int32()
    assert (tickets.column("priority").min, tickets.column("priority").max) == (1, 4)
    assert tickets.column("status").allowed_values == ["open", "pending", "closed"]
    assert not tickets.column("customer_id").nullable and not tickets.column("subject").nullable
    assert tickets.freshness.max_lag == timedelta(hours=2)
    assert tickets.severity_of("freshness") == "warning" and tickets.severity_of("not_null") == "blocking"
    assert tickets.bad_file_policy is BadFilePolicy.QUARANTINE_AND_CONTINUE


def test_types():
    assert parse_arrow_type("timestamp[us, UTC]") == pa.timestamp("us", tz="UTC")
    assert parse_arrow_type("timestamp[ms]") == pa.timestamp("ms")
    with pytest.raises(ValueError, match="unknown type"):
        parse_arrow_type("varchar")


def _bad(mutate) -> str:
    data = yaml.safe_load(ITEMS_YAML)
    mutate(data)
    with pytest.raises(ContractError) as info:
        parse_contract(data, "shop.items.yaml")
    return str(info.value)


def test_errors_name_the_field():
    msg = _bad(lambda d: d["columns"][2].update(type="integer"))
    assert "columns[2](qty).type" in msg and "unknown type 'integer'" in msg
    assert "primary_key" in _bad(lambda d: d.update(primary_key=["nope"]))
    assert "must be nullable: false" in _bad(lambda d: d["columns"][0].update(nullable=True))
    assert "columns[1](name).regex" in _bad(lambda d: d["columns"][1].update(regex="(unclosed"))
    assert "min is greater than max" in _bad(lambda d: d["columns"][2].update(min=10, max=1))
    assert "severity.freshness" in _bad(lambda d: d.update(severity={"freshness": "fatal"}))
    assert "bad_file_policy" in _bad(lambda d: d.update(bad_file_policy="delete"))
    assert "colour" in _bad(lambda d: d["columns"][1].update(colour="red"))  # unknown keys are errors
    assert "reserved" in _bad(lambda d: d["columns"].append({"name": "Op", "type": "string"}))
    assert "allowed_values" in _bad(lambda d: d["columns"][2].update(allowed_values=["x"]))
    assert "freshness.max_lag" in _bad(lambda d: d.update(freshness={"max_lag": "soon"}))
    assert "row_count.dms_tolerance" in _bad(lambda d: d.update(row_count={"dms_tolerance": -0.1}))
    assert "severity.row_count_sorce" in _bad(lambda d: d.update(severity={"row_count_sorce": "warning"}))


def test_reconciliation_checks_are_warnings_unless_made_blocking():
    data = yaml.safe_load(ITEMS_YAML)
    data["row_count"] = {"tolerance": 0.0, "source_tolerance": 0.05}
    data["severity"] = {"row_count_source": "blocking"}
    contract = parse_contract(data)
    assert contract.severity_of("row_count_dms") == "warning"
    assert contract.severity_of("row_count_source") == "blocking"
    assert (contract.row_count.dms_tolerance, contract.row_count.source_tolerance) == (None, 0.05)


def test_file_name_must_match_table(tmp_path):
    path = tmp_path / "shop.other.yaml"
    path.write_text(ITEMS_YAML)
    with pytest.raises(ContractError, match="does not match the file name"):
        load_contract(path)
    (tmp_path / "broken.yaml").write_text("table: [unclosed")
    with pytest.raises(ContractError, match="not valid YAML"):
        load_contract(tmp_path / "broken.yaml")
    with pytest.raises(ContractError, match="not found"):
        load_contract(tmp_path / "missing.yaml")


def test_fingerprint_changes_with_content():
    a = parse_contract(yaml.safe_load(ITEMS_YAML))
    b = parse_contract(yaml.safe_load(ITEMS_YAML.replace("max: 1000", "max: 999")))
    assert a.fingerprint() == parse_contract(yaml.safe_load(ITEMS_YAML)).fingerprint()
    assert a.fingerprint() != b.fingerprint()


def test_an_empty_contracts_folder_is_refused(tmp_path):
    from finetune_pipeline.datasets.contracts import load_contracts

    with pytest.raises(ContractError, match="no contracts"):
        load_contracts(tmp_path)
