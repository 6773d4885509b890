"""COPY output in blocks of whole rows: the same bytes as psycopg's own Copy, bounded blocks, errors raised."""

from __future__ import annotations

import psycopg
import pytest

from finetune_pipeline.export.copy_blocks import copy_blocks

ROWS = "SELECT g, repeat('x', g % 50) || E'\\n\"q\"', NULL FROM generate_series(1, 3000) g"
COPY = f"COPY ({ROWS}) TO STDOUT (FORMAT csv)"


def plain_copy(url: str) -> list[bytes]:
    with psycopg.connect(url) as conn, conn.cursor().copy(COPY) as copy:
        return [bytes(row) for row in copy]


def test_blocks_are_whole_rows_bounded_and_the_same_bytes_as_psycopgs_copy(source):
    rows = plain_copy(source.url)
    with psycopg.connect(source.url) as conn, conn.cursor() as cursor:
        blocks = [bytes(block) for block in copy_blocks(cursor, COPY, block_bytes=4096)]
        # The connection is usable afterwards: the COPY's closing result was collected.
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert b"".join(blocks) == b"".join(rows)
    assert len(blocks) > 10 and all(len(block) <= 4096 for block in blocks)
    # Every block ends where a row ends, so each one parses on its own.
    ends = set()
    position = 0
    for row in rows:
        position += len(row)
        ends.add(position)
    position = 0
    for block in blocks:
        position += len(block)
        assert position in ends


def test_a_copy_that_fails_midway_raises_its_error(source):
    failing = "COPY (SELECT 1 / (g - 2000) FROM generate_series(1, 3000) g) TO STDOUT (FORMAT csv)"
    with psycopg.connect(source.url) as conn, conn.cursor() as cursor:
        with pytest.raises(psycopg.errors.DivisionByZero):
            for _ in copy_blocks(cursor, failing, block_bytes=1024):
                pass
        conn.rollback()
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_a_row_longer_than_a_block_is_a_block_of_its_own(source):
    statement = ("COPY (SELECT g, repeat('y', CASE WHEN g = 50 THEN 10000 ELSE 10 END) "
                 "FROM generate_series(1, 100) g) TO STDOUT (FORMAT csv)")
    with psycopg.connect(source.url) as conn, conn.cursor() as cursor:
        blocks = [bytes(block) for block in copy_blocks(cursor, statement, block_bytes=1000)]
    long_row = b"50," + b"y" * 10000 + b"\n"
    assert long_row in blocks
    assert all(len(block) <= 1000 for block in blocks if block != long_row)
    assert b"".join(blocks).count(b"\n") == 100
