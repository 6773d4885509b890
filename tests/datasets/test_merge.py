"""merge_events: the last event per key by (_dms_ts, _dms_seq), deletes applied, replays harmless."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from change_files import dms_sequence
from ds_helpers import at, item_events, item_load

from finetune_pipeline.datasets.dms_format import OP, SEQ, TS
from finetune_pipeline.datasets.merge import key_codes, merge_events

PK = ["item_id"]


def _live(events: pa.Table) -> dict:
    out = merge_events(events, PK)
    return {r["item_id"]: (r["name"], r["qty"]) for r in out.live.to_pylist()}


def test_last_event_wins_and_deletes_apply():
    events = item_events(
        [
            ("I", 1, 1, 1, "a", 1, "new"),
            ("I", 2, 2, 2, "b", 1, "new"),
            ("U", 3, 3, 1, "a2", 2, "done"),
            ("D", 4, 4, 2, "b", 1, "new"),
        ]
    )
    out = merge_events(events, PK)
    assert {r["item_id"]: r["name"] for r in out.live.to_pylist()} == {1: "a2"}
    assert out.tombstones.column("item_id").to_pylist() == [2]
    assert out.live.column_names == ["item_id", "name", "qty", "status", TS, SEQ]
    assert out.live.column(TS)[0].as_py() == at(3)


def test_equal_timestamps_sequence_breaks_ties():
    # Same commit time; the higher change sequence wins even though it arrives first.
    events = item_events([("U", 5, 9, 1, "second", 2, "new"), ("U", 5, 8, 1, "first", 1, "new")])
    assert _live(events) == {1: ("second", 2)}


def test_delete_for_unknown_key_is_harmless():
    events = item_events([("I", 1, 1, 1, "a", 1, "new"), ("D", 2, 2, 99, "ghost", None, None)])
    out = merge_events(events, PK)
    assert {r["item_id"] for r in out.live.to_pylist()} == {1}
    assert out.tombstones.column("item_id").to_pylist() == [99]


def test_reinsert_after_delete():
    events = item_events(
        [("I", 1, 1, 1, "a", 1, "new"), ("D", 2, 2, 1, "a", 1, "new"), ("I", 3, 3, 1, "again", 7, "new")]
    )
    assert _live(events) == {1: ("again", 7)}


def test_replayed_events_after_a_restart_change_nothing():
    first = item_events(
        [("I", 1, 1, 1, "a", 1, "new"), ("U", 2, 2, 1, "b", 2, "new"), ("D", 3, 3, 2, "x", 0, "new")]
    )
    # DMS restarted from an earlier checkpoint and wrote the same events again in a later file.
    replay = item_events([("I", 1, 1, 1, "a", 1, "new"), ("I", 0.5, 0, 2, "x", 0, "new")])
    once = merge_events(first, PK)
    twice = merge_events(pa.concat_tables([first, replay]), PK)
    assert once.live.to_pylist() == twice.live.to_pylist()
    assert twice.tombstones.column("item_id").to_pylist() == [2]


def test_full_load_rows_lose_to_any_cdc_event():
    # The load's _dms_ts is the transfer time, later than the CDC commit; the CDC event still wins.
    load = item_load([(1, "loaded", 1, "new"), (2, "kept", 2, "new")])
    load = load.set_column(1, TS, pa.array([at(500)] * 2, pa.timestamp("us", tz="UTC")))
    cdc = item_events([("U", 5, 1, 1, "changed", 9, "done")])
    assert _live(pa.concat_tables([load, cdc])) == {1: ("changed", 9), 2: ("kept", 2)}


def test_duplicate_full_load_rows_keep_the_later_file():
    load = pa.concat_tables([item_load([(1, "old", 1, "new")]), item_load([(1, "new", 2, "new")])])
    assert _live(load) == {1: ("new", 2)}


def test_stored_state_is_not_overwritten_by_an_older_event():
    state = item_events([("I", 10, 10, 1, "current", 5, "new")])
    older = item_events([("U", 3, 3, 1, "stale", 1, "new")])
    assert _live(pa.concat_tables([state, older])) == {1: ("current", 5)}


def test_tombstone_blocks_an_older_insert_but_not_a_newer_one():
    tomb = item_events([("D", 10, 10, 1, None, None, None)])
    older = item_events([("I", 3, 3, 1, "stale", 1, "new")])
    newer = item_events([("I", 11, 11, 1, "fresh", 1, "new")])
    assert _live(pa.concat_tables([tomb, older])) == {}
    assert _live(pa.concat_tables([tomb, older, newer])) == {1: ("fresh", 1)}


def test_composite_and_string_keys():
    schema = pa.schema(
        [
            (OP, pa.string()),
            (TS, pa.timestamp("us", tz="UTC")),
            (SEQ, pa.string()),
            ("region", pa.string()),
            ("n", pa.int32()),
            ("v", pa.string()),
        ]
    )
    rows = [
        ("I", 1, "eu", 1, "a"),
        ("I", 2, "us", 1, "b"),
        ("U", 3, "eu", 1, "c"),
        ("I", 4, "eu", 2, "d"),
        ("D", 5, "us", 1, None),
    ]
    table = pa.Table.from_pylist(
        [
            {OP: o, TS: at(s), SEQ: dms_sequence(at(s), s), "region": r, "n": n, "v": v}
            for o, s, r, n, v in rows
        ],
        schema=schema,
    )
    out = merge_events(table, ["region", "n"])
    assert sorted((r["region"], r["n"], r["v"]) for r in out.live.to_pylist()) == [
        ("eu", 1, "c"),
        ("eu", 2, "d"),
    ]
    assert out.tombstones.select(["region", "n"]).to_pylist() == [{"region": "us", "n": 1}]


def test_key_codes_keep_order_and_equality():
    values = pa.array([5, -3, 2**62, 5, -(2**62)], pa.int64())
    codes = key_codes([values], max_bits=20)  # range too wide: falls back to ranked codes
    assert codes[0] == codes[3]
    assert list(np.argsort(codes, kind="stable")) == list(np.argsort(values.to_numpy(), kind="stable"))
    small = key_codes([pa.array([10, 12, 10])], max_bits=20)
    assert small.tolist() == [0, 2, 0]


def test_empty_input():
    out = merge_events(item_events([]), PK)
    assert out.live.num_rows == 0 and out.tombstones.num_rows == 0
    assert OP not in out.live.column_names


def test_key_changes_against_the_previous_rows():
    """Keys live before (the base rows), and those the events made live or removed: replays of the same
    insert, a delete of an absent key and an insert of a present key change no key count."""
    base = item_load([(1, "a", 1, "new"), (2, "b", 2, "new"), (3, "c", 3, "new")])
    events = item_events([
        ("I", 5, 1, 3, "c", 3, "new"), ("I", 6, 2, 4, "d", 4, "new"), ("I", 6, 2, 4, "d", 4, "new"),
        ("D", 7, 3, 9, "never", 1, "new"), ("D", 8, 4, 1, "a", 1, "new"),
    ])  # fmt: skip
    out = merge_events(pa.concat_tables([base, events]), PK, base_rows=base.num_rows)
    assert (out.keys_before, out.keys_added, out.keys_removed) == (3, 1, 1)
    assert out.live.num_rows == out.keys_before + out.keys_added - out.keys_removed == 3
