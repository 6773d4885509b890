"""``COPY ... TO STDOUT`` read in blocks of whole rows, each of which a CSV parser can take on its own.

psycopg's ``Copy`` hands over one row per call, through a Python generator and its wait loop: about 1 µs a
row with the GIL held, as long as the server takes to produce the row, and every export session queues for
that same GIL. Here the rows libpq has already received are taken in a tight loop (``PQgetCopyData``
without blocking, half that cost), and the thread waits for the socket, with the GIL released, only when
libpq has none left.

PostgreSQL sends each row as one CopyData message, even a row whose values hold newlines, so a block of
messages is a block of whole rows. Each block is one buffer of ``block_bytes``, allocated at once and filled,
not a bytearray grown row by row through every size up to the block's: that left the allocator holes of
each size, and the peak RSS at 4M rows was 20-40 MiB higher.
"""

from __future__ import annotations

import selectors
from collections.abc import Iterator

import psycopg
from psycopg import pq

# libpq's answers from PQgetCopyData: a row's length (> 0), or one of these.
_WOULD_BLOCK = 0
_COPY_DONE = -1


def copy_blocks(cursor: psycopg.Cursor, statement, block_bytes: int) -> Iterator[memoryview]:
    """The output of ``statement`` (a ``COPY ... TO STDOUT``) in blocks of whole rows.

    A block holds at most ``block_bytes``, or a single row longer than that. It is never reused after it is
    yielded: the caller may hand it to Arrow without a copy. A failed COPY raises its psycopg error after
    the last block it sent.
    """
    with cursor.copy(statement):
        pgconn = cursor.connection.pgconn
        with selectors.DefaultSelector() as socket:
            socket.register(pgconn.socket, selectors.EVENT_READ)
            yield from _read_rows(pgconn, socket, block_bytes)
            _finish(pgconn, socket, cursor.connection.info.encoding)


def _read_rows(pgconn: pq.abc.PGconn, socket: selectors.BaseSelector, block_bytes: int) -> Iterator[memoryview]:
    get_copy_data = pgconn.get_copy_data
    view = memoryview(bytearray(block_bytes))
    end = 0
    while True:
        size, row = get_copy_data(1)  # 1: never block; libpq raises on a broken connection
        if size > 0:
            if end + size > block_bytes:  # the row does not fit: a fresh block (one row's size, if larger)
                if end:
                    yield view[:end]
                view = memoryview(bytearray(max(block_bytes, size)))
                end = 0
            view[end:end + size] = row
            end += size
        elif size == _WOULD_BLOCK:
            socket.select()
            pgconn.consume_input()
        else:  # _COPY_DONE
            if end:
                yield view[:end]
            return


def _finish(pgconn: pq.abc.PGconn, socket: selectors.BaseSelector, encoding: str) -> None:
    """Collect the COPY's closing results, as psycopg's own ``Copy`` does, and raise the error one carries.

    All of them first: libpq takes the next command only once the last result (None) has been read.
    """
    error = None
    while True:
        while pgconn.is_busy():
            socket.select()
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            break
        if result.status != pq.ExecStatus.COMMAND_OK and error is None:
            error = psycopg.errors.error_from_result(result, encoding=encoding)
    if error is not None:
        raise error
