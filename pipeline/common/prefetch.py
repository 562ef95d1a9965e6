"""Producing the next items in a background thread while the caller works on the current one.

Used where the producer releases the interpreter lock for most of its work: video decoding ahead of face detection
(PyAV releases it while FFmpeg works) and training batches gathered from host memory ahead of the training step.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def read_ahead(items: Iterable[T], depth: int = 8) -> Iterator[T]:
    """``items`` in order, produced up to ``depth`` ahead by a thread. An exception in the producer is raised here,
    in order; a consumer that stops early (``break``, an exception, ``close()``) stops the producer and waits for it,
    so no thread is left blocked on a full queue."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(entry: tuple[object, BaseException | None]) -> bool:
        """Queue ``entry`` unless the consumer has stopped (then False): a full queue never blocks the thread."""
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as e:  # handed to the consumer
            put((done, e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator's own clean-up (the video file is closed) runs in this thread
                close()

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item, error = q.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join()
