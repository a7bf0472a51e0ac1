"""The bounded queues between stages (pipeline/runtime/queues.py), driven directly with real threads."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pipeline.runtime.queues import BoundedQueue, Closed, FrameQueue
from stages.types import Frame


def frame(source: str, seq: int, deadline: float = 100.0) -> Frame:
    return Frame(source, seq, seq / 25, decoded_at=float(seq), deadline=deadline, wall_time=0.0,
                 image=np.zeros((3, 2), np.uint8), source_size=(2, 2))


def test_a_full_lane_blocks_its_producer_until_a_frame_is_taken() -> None:
    queue = FrameQueue(2, "pre")
    queue.put(frame("a", 0))
    queue.put(frame("a", 1))
    done = threading.Event()
    producer = threading.Thread(target=lambda: (queue.put(frame("a", 2)), done.set()), daemon=True)
    producer.start()
    assert not done.wait(0.3), "a put into a full lane returned without room"
    assert queue.get(timeout=5).seq == 0
    assert done.wait(10), "the blocked put never went through after a get"
    assert [queue.get(timeout=5).seq for _ in range(2)] == [1, 2]


def test_a_full_lane_sheds_its_oldest_frame_and_hands_it_back() -> None:
    queue = FrameQueue(2, "pre")
    assert queue.put(frame("cam", 0), shed=True) == []
    assert queue.put(frame("cam", 1), shed=True) == []
    shed = queue.put(frame("cam", 2), shed=True)
    assert [f.seq for f in shed] == [0]
    assert len(queue) == 2
    assert [queue.get(timeout=5).seq for _ in range(2)] == [1, 2]


def test_each_source_has_its_own_room() -> None:
    queue = FrameQueue(1, "pre")
    queue.put(frame("a", 0))
    assert not queue.has_room("a") and queue.has_room("b")
    queue.put(frame("b", 0))  # a's full lane does not block b
    assert len(queue) == 2


def test_the_earliest_deadline_is_served_first_across_sources() -> None:
    queue = FrameQueue(4, "infer")
    queue.put(frame("late", 0, deadline=30.0))
    queue.put(frame("soon", 0, deadline=10.0))
    queue.put(frame("mid", 0, deadline=20.0))
    assert [queue.get(timeout=5).source for _ in range(3)] == ["soon", "mid", "late"]


def test_a_lane_with_no_room_downstream_waits_while_others_are_served() -> None:
    upstream, downstream = FrameQueue(4, "pre"), FrameQueue(1, "infer")
    upstream.feeds(downstream)
    downstream.put(frame("a", 0))  # a's lane downstream is full
    upstream.put(frame("a", 1, deadline=1.0))
    upstream.put(frame("b", 0, deadline=50.0))
    assert upstream.get(timeout=5).source == "b"  # a has the earlier deadline, but nowhere to go
    assert upstream.get(timeout=0.2) is None
    downstream.get(timeout=5)
    assert upstream.get(timeout=5).seq == 1


def test_a_closed_queue_gives_what_it_holds_then_raises_closed() -> None:
    queue = FrameQueue(2, "post")
    queue.put(frame("a", 0))
    queue.close()
    assert queue.get(timeout=5).seq == 0
    with pytest.raises(Closed):
        queue.get(timeout=5)
    with pytest.raises(Closed):
        queue.put(frame("a", 1))


def test_drain_empties_every_lane() -> None:
    queue = FrameQueue(2, "pre")
    for source in ("a", "b"):
        queue.put(frame(source, 0))
    assert sorted(f.source for f in queue.drain()) == ["a", "b"]
    assert len(queue) == 0 and queue.get(timeout=0.1) is None


def test_the_results_queue_blocks_when_full_and_never_drops_after_close() -> None:
    queue: BoundedQueue[int] = BoundedQueue(1, "results")
    queue.put(1)
    started = time.monotonic()
    threading.Timer(0.3, queue.get).start()
    queue.put(2)  # waits for the timer's get
    assert time.monotonic() - started >= 0.25
    queue.close()
    queue.put(3)  # accepted after close: a result is never dropped
    assert [queue.get(timeout=5), queue.get(timeout=5)] == [2, 3]
    with pytest.raises(Closed):
        queue.get(timeout=5)
