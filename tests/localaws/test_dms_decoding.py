"""test_decoding's lines as row changes: a table's later changes, split along its known columns, read as a
first change does."""

from __future__ import annotations

import pytest

from localaws.dms_decoding import UNCHANGED, parse_change

LINES = [
    "table public.tickets: INSERT: id[bigint]:1 subject[text]:'it''s broken' body[text]:'two\nlines' n[integer]:7",
    "table public.tickets: INSERT: id[bigint]:2 subject[text]:'a b' body[text]:null n[integer]:-3",
    "table public.tickets: UPDATE: id[bigint]:2 subject[text]:'x' body[text]:unchanged-toast-datum n[integer]:0",
    "table public.tickets: UPDATE: old-key: id[bigint]:2 new-tuple: id[bigint]:3 subject[text]:'' body[text]:'' "
    "n[integer]:1",
    # A column added at the source: the row no longer matches the table's known columns.
    "table public.tickets: INSERT: id[bigint]:4 subject[text]:'s' body[text]:'b' n[integer]:2 tag[text]:'new'",
    "table public.tickets: INSERT: id[bigint]:5 subject[text]:'s' body[text]:'b' n[integer]:2",
    'table public."Odd Table": INSERT: "Key Col"[integer]:1 "say ""hi"""[text]:\'q \'\' q\'',
    'table public."Odd Table": INSERT: "Key Col"[integer]:2 "say ""hi"""[text]:\'r\'',
    "table public.tickets: DELETE: id[bigint]:5",
    "table public.tickets: DELETE: id[bigint]:6",
]


def _fields(change):
    return change.schema, change.table, change.op, change.names, change.types, change.values, change.key_changed


def test_changes_split_along_known_columns_read_as_first_changes_do():
    layouts: dict = {}
    for line in LINES:
        assert _fields(parse_change(line, layouts)) == _fields(parse_change(line)), line
    assert len(layouts) == 4  # tickets' inserts, updates and deletes, and the odd table's inserts


@pytest.mark.parametrize(
    ("line", "values"),
    [
        (LINES[0], ["1", "it's broken", "two\nlines", "7"]),
        (LINES[2], ["2", "x", UNCHANGED, "0"]),
        (LINES[4], ["4", "s", "b", "2", "new"]),
        (LINES[6], ["1", "q ' q"]),
    ],
)
def test_values_after_a_known_layout(line, values):
    layouts: dict = {}
    for earlier in LINES[:6]:
        parse_change(earlier, layouts)
    assert parse_change(line, layouts).values == values
