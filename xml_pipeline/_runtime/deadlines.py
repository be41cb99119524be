"""Request deadlines on one loop timer: a timing wheel of 1/128 s ticks.

A loop timer per request (``loop.call_at`` and its ``cancel``) costs 2-3 us of CPU under uvloop
and leaves three objects the cyclic GC walks for as long as the request waits (the handle, the
libuv timer, the bound callback); with 30k requests in flight every full collection walked 90k
of them. Here a deadline is an entry in the set of its tick (``ceil(deadline * 128)``), and one
loop timer is armed at the earliest tick that has entries: adding and removing a deadline is a
set operation. Deadlines fire at the end of their tick, as a ``call_at`` for it would: at most
one tick (7.8 ms) late, and early by no more than the 1 ms a loop timer may be (uvloop's clock
counts milliseconds). A tick's set stays until its tick passes,
emptied or not (one set per tick that had a deadline, not one per request); its heap entry is
an int.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["TICKS_PER_SECOND", "DeadlineWheel"]

TICKS_PER_SECOND = 128

T = TypeVar("T")

_EARLY = 0.001  # seconds: how early a loop timer may run (uvloop rounds to milliseconds)


class DeadlineWheel(Generic[T]):
    """Items with deadlines (loop time, seconds); ``fire(item)`` is called for each item whose
    deadline passed and that was not discarded first.

    ``add`` returns the set the item went into; ``set.discard(item)`` takes it out again (the
    caller keeps the set, so removing needs no lookup). Not thread-safe: the loop's thread only.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[T], None]) -> None:
        self._loop = loop
        self._fire = fire
        self._ticks: dict[int, set[T]] = {}
        self._heap: list[int] = []  # the ticks of _ticks, earliest first
        self._timer: asyncio.TimerHandle | None = None
        self._armed = math.inf  # the tick the timer is armed for

    def __len__(self) -> int:
        """Items waiting for their deadline (discarded ones are not counted)."""
        return sum(len(items) for items in self._ticks.values())

    def add(self, item: T, deadline: float) -> set[T]:
        """Fire ``item`` once ``deadline`` (loop time) has passed; returns the set it is in."""
        tick = math.ceil(deadline * TICKS_PER_SECOND)
        items = self._ticks.get(tick)
        if items is None:
            items = self._ticks[tick] = set()
            heapq.heappush(self._heap, tick)
            if tick < self._armed:
                self._arm(tick)
        items.add(item)
        return items

    def close(self) -> None:
        """Cancel the timer; nothing fires any more."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed = -math.inf  # add() arms nothing after close
        self._ticks.clear()
        self._heap.clear()

    def _arm(self, tick: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = tick
        self._timer = self._loop.call_at(tick / TICKS_PER_SECOND, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._armed = math.inf
        now = self._loop.time() + _EARLY  # a loop timer may run that early
        heap, ticks = self._heap, self._ticks
        while heap and heap[0] / TICKS_PER_SECOND <= now:
            for item in ticks.pop(heapq.heappop(heap)):
                self._fire(item)
        if heap:
            self._arm(heap[0])
