"""`read_ahead`: the thread that produces items ahead (video frames before face detection, training batches before
the training step) keeps order, hands over errors, and stops when the consumer stops."""

import threading
import time

import pytest

from pipeline.common.prefetch import read_ahead


def test_items_arrive_in_order_and_all_of_them():
    assert list(read_ahead(iter(range(1000)), depth=3)) == list(range(1000))
    assert list(read_ahead(iter([]))) == []


def test_a_producer_error_is_raised_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise ValueError("damaged frame")

    got = []
    with pytest.raises(ValueError, match="damaged frame"):
        for x in read_ahead(items()):
            got.append(x)
    assert got == [1, 2]


def test_stopping_early_stops_the_producer():
    made = []

    def items():
        for i in range(10_000):
            made.append(i)
            yield i

    before = threading.active_count()
    for x in read_ahead(items(), depth=4):
        if x == 5:
            break
    time.sleep(0.3)
    assert len(made) < 20  # at most a queue's worth past the last one taken
    assert threading.active_count() == before  # the thread has ended


def test_the_source_generator_is_closed_when_the_consumer_stops():
    closed = []

    def items():
        try:
            yield from range(100)
        finally:
            closed.append(True)

    for x in read_ahead(items(), depth=2):
        if x == 1:
            break
    assert closed == [True]


def test_a_consumer_that_stops_while_the_queue_is_full_at_the_end_does_not_hang():
    # the producer reaches the end of its items with the queue full just as the consumer gives up
    gen = read_ahead(iter(range(3)), depth=2)
    assert next(gen) == 0
    time.sleep(0.3)  # the producer has queued 1 and 2 and now waits to queue its end marker
    closer = threading.Thread(target=gen.close, daemon=True)
    closer.start()
    closer.join(timeout=2.0)
    assert not closer.is_alive(), "closing the consumer hangs on the producer's last put"
