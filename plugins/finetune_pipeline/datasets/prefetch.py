"""Run an iterator one step ahead on a background thread, so reading overlaps with processing.

Arrow releases the GIL while it decodes Parquet/CSV and computes, so on two cores the next file's batches
are read while the current ones are hashed and spilled. Items arrive in their original order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


def read_ahead(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield items produced by a background thread, at most ``depth`` ahead; its exceptions re-raise here."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(entry) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    return
            offer((_DONE, None))
        except BaseException as err:  # handed to the consumer, which re-raises it in its own thread
            offer((_DONE, err))

    worker = threading.Thread(target=produce, name="read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item, err = slots.get()
            if item is _DONE:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        worker.join()
