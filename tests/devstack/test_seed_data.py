"""Demo seed data: deterministic, labelled (priority follows the ticket's category), and DMS-shaped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from devstack.seed_data import _PRODUCTS, CATEGORIES, seed_changes, seed_tables

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def test_seed_is_deterministic_and_labelled():
    a, b = seed_tables(20, 100, seed=7), seed_tables(20, 100, seed=7)
    assert a["public.tickets"].equals(b["public.tickets"]) and a["public.customers"].equals(
        b["public.customers"]
    )
    assert not a["public.tickets"].equals(seed_tables(20, 100, seed=8)["public.tickets"])
    customers = set(a["public.customers"].column("customer_id").to_pylist())
    for row in a["public.tickets"].to_pylist():
        _, subjects, _ = CATEGORIES[row["priority"]]
        # The label is recoverable from the text: the subject comes from its category's templates.
        assert any(row["subject"] == s.format(product=p) for s in subjects for p in _PRODUCTS)
        assert row["customer_id"] in customers


def test_changes_come_after_the_snapshot_in_commit_order():
    tables = seed_tables(10, 30, seed=1)
    changes = seed_changes(tables, T0, n_files=3, changes_per_file=15, seed=1)
    stamps, seqs = [], []
    for files in changes.values():
        for file_time, cdc in files:
            assert cdc.column_names[:3] == ["Op", "_dms_ts", "_dms_seq"]
            assert set(cdc.column("Op").to_pylist()) <= {"I", "U", "D"}
            assert max(cdc.column("_dms_ts").to_pylist()) < file_time
            stamps += cdc.column("_dms_ts").to_pylist()
            seqs += cdc.column("_dms_seq").to_pylist()
    assert min(stamps) > T0 and max(stamps) < T0 + timedelta(hours=1)
    assert all(len(s) == 35 and s.isdigit() for s in seqs)
    assert len(set(seqs)) == len(seqs)
