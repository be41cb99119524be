"""The deadline wheel behind request timeouts: fires each item once, never early, and never
an item taken out; an earlier deadline re-arms its one timer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from xml_pipeline._runtime.deadlines import TICKS_PER_SECOND, DeadlineWheel

EARLY = 0.001  # a loop timer may run this early (documented in deadlines.py)


async def _fire_all(deadlines: list[float], discard: set[int]) -> dict[int, float]:
    """Add items 0..n-1 with ``deadlines`` (seconds from now), take out ``discard``; returns
    the loop time each item fired at."""
    loop = asyncio.get_running_loop()
    fired: dict[int, float] = {}
    done = asyncio.Event()
    expected = len(deadlines) - len(discard)

    def fire(item: int) -> None:
        assert item not in fired, f"item {item} fired twice"
        fired[item] = loop.time()
        if len(fired) == expected:
            done.set()

    wheel: DeadlineWheel[int] = DeadlineWheel(loop, fire)
    start = loop.time()
    sets = [wheel.add(i, start + d) for i, d in enumerate(deadlines)]
    for i in discard:
        sets[i].discard(i)
    assert len(wheel) == expected
    if expected:
        await asyncio.wait_for(done.wait(), timeout=10)
    await asyncio.sleep(max(deadlines, default=0) + 2 / TICKS_PER_SECOND)  # nothing more fires
    assert set(fired) == set(range(len(deadlines))) - discard
    for item, at in fired.items():
        assert at >= start + deadlines[item] - EARLY, f"item {item} fired early"
    assert len(wheel) == 0
    wheel.close()
    return fired


LOOPS = [
    pytest.param(asyncio.new_event_loop, id="asyncio"),
    pytest.param(uvloop.new_event_loop, id="uvloop"),
]


@pytest.mark.parametrize("loop_factory", LOOPS)
@settings(max_examples=20, deadline=None)
@given(
    st.lists(st.floats(min_value=0.0, max_value=0.08), min_size=1, max_size=40),
    st.data(),
)
def test_every_item_fires_once_never_early_unless_taken_out(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
    deadlines: list[float],
    data: st.DataObject,
) -> None:
    discard = data.draw(st.sets(st.integers(min_value=0, max_value=len(deadlines) - 1)))
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_fire_all(deadlines, discard))


async def test_an_earlier_deadline_added_later_fires_first() -> None:
    loop = asyncio.get_running_loop()
    order: list[str] = []
    both = asyncio.Event()

    def fire(item: str) -> None:
        order.append(item)
        if len(order) == 2:
            both.set()

    wheel: DeadlineWheel[str] = DeadlineWheel(loop, fire)
    wheel.add("late", loop.time() + 0.3)
    wheel.add("early", loop.time() + 0.05)  # the timer armed for "late" must move
    await asyncio.wait_for(both.wait(), timeout=5)
    assert order == ["early", "late"]


async def test_items_in_the_past_fire_at_once_and_close_stops_the_rest() -> None:
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    wheel: DeadlineWheel[str] = DeadlineWheel(loop, fired.append)
    wheel.add("past", loop.time() - 5)
    wheel.add("later", loop.time() + 0.05)
    await asyncio.sleep(0.02)
    assert fired == ["past"]
    wheel.close()
    await asyncio.sleep(0.1)
    assert fired == ["past"]
    wheel.add("after close", loop.time())  # refused silently: the pump has stopped
    await asyncio.sleep(0.02)
    assert fired == ["past"]
