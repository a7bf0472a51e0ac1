"""Bounded queues between stages: backpressure by default, shedding for live sources."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from stages.types import Frame

T = TypeVar("T")
ROOM_POLL_S = 0.05


class Closed(Exception):
    """The queue is closed and empty: the producer side is done."""


def _wait_for_items(
    cond: threading.Condition, has_items: Callable[[], object], closed: Callable[[], bool], timeout: float | None,
    name: str,
) -> bool:
    """With `cond` held: wait until there is an item (True), `timeout` passes (False), or the
    queue is closed and empty (Closed)."""
    end = None if timeout is None else time.monotonic() + timeout
    while not has_items():
        if closed():
            raise Closed(name)
        remaining = None if end is None else end - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        cond.wait(remaining)
    return True


class FrameQueue:
    """A bounded queue of frames with a lane per source, served earliest deadline first.

    Each source has its own `capacity`, so one source that floods the pipeline never takes
    the room of another. `put` blocks while the source's lane is full, unless `shed` is
    set: then the lane's oldest frame makes room, and is returned so the caller turns it
    into a `failed/shed` result.
    """

    def __init__(self, capacity: int, name: str) -> None:
        self.capacity = capacity
        self.name = name
        self._lanes: dict[str, deque[Frame]] = {}
        self._size = 0
        self._cond = threading.Condition()
        self._closed = False
        self.downstream: FrameQueue | None = None
        self.upstream: FrameQueue | None = None

    def put(self, frame: Frame, shed: bool = False) -> list[Frame]:
        with self._cond:
            lane = self._lanes.setdefault(frame.source, deque())
            while len(lane) >= self.capacity and not self._closed:
                if shed:
                    victim = lane.popleft()
                    lane.append(frame)
                    self._cond.notify_all()
                    return [victim]
                self._cond.wait()
            if self._closed:
                raise Closed(self.name)
            lane.append(frame)
            self._size += 1
            self._cond.notify_all()
            return []

    def get(self, timeout: float | None = None) -> Frame | None:
        """The frame whose deadline is earliest among the lanes' heads (the oldest first among
        equal deadlines); None after `timeout`; Closed once closed and empty.

        With a `downstream` queue, only lanes whose source has room there are served: a worker
        that feeds one source's full lane downstream would block every other source behind it.
        """
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                lanes = [q for s, q in self._lanes.items() if q and self._ready(s)]
                if lanes:
                    lane = min(lanes, key=lambda q: (q[0].deadline, q[0].decoded_at))
                    frame = lane.popleft()
                    self._size -= 1
                    self._cond.notify_all()
                    break
                if self._closed and not self._size:
                    raise Closed(self.name)
                remaining = None if end is None else end - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                # Room downstream is announced by `room`; the short wait is a safety net.
                self._cond.wait(ROOM_POLL_S if remaining is None else min(remaining, ROOM_POLL_S))
        if self.upstream is not None:
            self.upstream.room()
        return frame

    def _ready(self, source: str) -> bool:
        return self.downstream is None or self.downstream.has_room(source)

    def has_room(self, source: str) -> bool:
        lane = self._lanes.get(source)
        return lane is None or len(lane) < self.capacity

    def room(self) -> None:
        """Wake workers waiting for room downstream (called by the downstream queue)."""
        with self._cond:
            self._cond.notify_all()

    def feeds(self, downstream: FrameQueue) -> None:
        """Link this queue to the one its workers put into (see `get`)."""
        self.downstream, downstream.upstream = downstream, self

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def drain(self) -> list[Frame]:
        """Remove and return everything queued (on abort)."""
        with self._cond:
            frames = [f for lane in self._lanes.values() for f in lane]
            for lane in self._lanes.values():
                lane.clear()
            self._size = 0
            self._cond.notify_all()
            return frames

    def __len__(self) -> int:
        with self._cond:
            return self._size


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
        with self._cond:
            if not _wait_for_items(self._cond, lambda: self._items, lambda: self._closed, timeout, self.name):
                return None
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
