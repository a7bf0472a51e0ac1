"""Bounded queues between stages: backpressure by default, shedding for live sources."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from typing import Generic, TypeVar

from pipeline.types import Frame

T = TypeVar("T")


class Closed(Exception):
    """The queue is closed and empty: the producer side is done."""


class FrameQueue:
    """A bounded queue of frames, earliest deadline first (FIFO for equal deadlines).

    `put` blocks while full, unless `shed` is set: then the oldest queued frame of the
    same source makes room (or the new frame itself, if none of its source is queued).
    Shed frames are returned so the caller turns each into a `failed/shed` result.
    """

    def __init__(self, capacity: int, name: str) -> None:
        self.capacity = capacity
        self.name = name
        self._heap: list[tuple[float, int, Frame]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, frame: Frame, shed: bool = False) -> list[Frame]:
        with self._cond:
            while len(self._heap) >= self.capacity and not self._closed:
                if shed:
                    return [self._evict_oldest(frame)]
                self._cond.wait()
            if self._closed:
                raise Closed(self.name)
            heapq.heappush(self._heap, (frame.deadline, next(self._order), frame))
            self._cond.notify_all()
            return []

    def _evict_oldest(self, incoming: Frame) -> Frame:
        same = [i for i, (_, _, f) in enumerate(self._heap) if f.source == incoming.source]
        if not same:
            return incoming
        index = min(same, key=lambda i: self._heap[i][2].seq)
        victim = self._heap[index][2]
        self._heap[index] = self._heap[-1]
        self._heap.pop()
        heapq.heapify(self._heap)
        heapq.heappush(self._heap, (incoming.deadline, next(self._order), incoming))
        self._cond.notify_all()
        return victim

    def get(self, timeout: float | None = None) -> Frame | None:
        """The earliest-deadline frame; None after `timeout`; Closed once closed and empty."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._heap:
                if self._closed:
                    raise Closed(self.name)
                remaining = None if end is None else end - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            frame = heapq.heappop(self._heap)[2]
            self._cond.notify_all()
            return frame

    def peek_deadline(self) -> float | None:
        with self._cond:
            return self._heap[0][0] if self._heap else None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def drain(self) -> list[Frame]:
        """Remove and return everything queued (on abort)."""
        with self._cond:
            frames = [f for _, _, f in sorted(self._heap)]
            self._heap.clear()
            self._cond.notify_all()
            return frames

    def __len__(self) -> int:
        with self._cond:
            return len(self._heap)


class BoundedQueue(Generic[T]):
    """A plain bounded FIFO with close(), for results on their way to the publisher."""

    def __init__(self, capacity: int, name: str) -> None:
        self.capacity = capacity
        self.name = name
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: T) -> None:
        with self._cond:
            while len(self._items) >= self.capacity and not self._closed:
                self._cond.wait()
            self._items.append(item)  # accepted even after close: a result is never dropped
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> T | None:
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._closed:
                    raise Closed(self.name)
                remaining = None if end is None else end - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
