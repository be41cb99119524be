"""The behaviour every `HookSubscriber` of the library must have; each subclass says how its
subscriber is attached and how to tell that it saw the traffic.

The hooks are the seam the run registry, metrics, traces and the control plane observe the
runtime through (issue 10): a subscriber takes every kind of event, failures included, without
raising (one that raises is unsubscribed, and its observer goes blind without a word), and once
unsubscribed is called no more (nobody subscribed: the pump builds no event).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.runtime.test_hooks import Ask, back
from tests.runtime.test_hooks import front as hooks_front
from xml_pipeline import (
    DeliveryError,
    HandlerMetadata,
    HandlerResponse,
    HookSubscriber,
    Listener,
    Organism,
)
from xml_pipeline._runtime.tracing import HopLog
from xml_pipeline.metrics import JsonlSinkConfig, MetricsConfig
from xml_pipeline.metrics.trace import LiveTraces
from xml_pipeline.testing import capture

pytestmark = pytest.mark.anyio


async def front(msg: Ask, meta: HandlerMetadata) -> HandlerResponse:
    """`test_hooks`' front, and on "await" an answer it awaits (an ``answered`` event)."""
    if msg.text != "await" or meta.from_id != "_external":
        return await hooks_front(msg, meta)
    return HandlerResponse.respond(await meta.call("back", Ask(text="x")))


LISTENERS = [Listener("front", Ask, front, peers=("back",)), Listener("back", Ask, back)]
Unsubscribe = Callable[[], None]


class HookSubscriberContract:
    def organism(self, tmp_path: Path) -> Organism:
        return Organism(LISTENERS)

    def attach(self, org: Organism, stack: ExitStack) -> Unsubscribe | None:
        """Subscribe to the running ``org``; the unsubscribe, or None when the organism
        subscribes it itself (and unsubscribes it when it stops)."""
        raise NotImplementedError

    async def observed(self, org: Organism) -> bool:
        """Whether the subscriber saw the traffic (a contract that a subscriber nobody
        calls would pass is no contract)."""
        raise NotImplementedError

    @pytest.fixture
    async def running(self, tmp_path: Path) -> AsyncIterator[tuple[Organism, Unsubscribe | None]]:
        with ExitStack() as stack:
            async with self.organism(tmp_path) as org:
                yield org, self.attach(org, stack)

    async def traffic(self, org: Organism) -> None:
        """Every kind of event: a call and its answer, an awaited answer, a failure."""
        assert await org.request("front", Ask(text="hi"), timeout=5) == Ask(text="HI")
        assert await org.request("front", Ask(text="await"), timeout=5) == Ask(text="X")
        with pytest.raises(DeliveryError):
            await org.request("front", Ask(text="fail"), timeout=5)

    async def test_takes_every_kind_of_event_and_stays_subscribed(
        self,
        running: tuple[Organism, Unsubscribe | None],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        org, _ = running
        await self.traffic(org)
        assert "a hook subscriber raised" not in caplog.text
        assert org.hooks.active
        assert await self.observed(org)

    async def test_once_unsubscribed_it_is_called_no_more(
        self, running: tuple[Organism, Unsubscribe | None]
    ) -> None:
        org, unsubscribe = running
        if unsubscribe is None:
            await org.aclose()  # the organism unsubscribes what it subscribed
        else:
            unsubscribe()
            unsubscribe()  # twice does nothing
        assert not org.hooks.active, "nobody subscribed: the pump builds no event"


class TestCapture(HookSubscriberContract):
    def attach(self, org: Organism, stack: ExitStack) -> Unsubscribe | None:
        self.captured = stack.enter_context(capture(org))
        return stack.close

    async def observed(self, org: Organism) -> bool:
        return ("front", "back") in self.captured.route()


class TestHopLog(HookSubscriberContract):
    def attach(self, org: Organism, stack: ExitStack) -> Unsubscribe | None:
        self.lines: list[str] = []
        logger = logging.getLogger("xml_pipeline.hops")
        handler = logging.Handler(logging.DEBUG)
        handler.emit = lambda record: self.lines.append(record.getMessage())  # type: ignore[method-assign]
        level = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
        stack.callback(logger.setLevel, level)
        stack.callback(logger.removeHandler, handler)
        log = HopLog()
        assert isinstance(log, HookSubscriber)
        return org.hooks.subscribe(log)

    async def observed(self, org: Organism) -> bool:
        return any(line.startswith("hop front -> back") for line in self.lines)


class TestLiveTraces(HookSubscriberContract):
    def attach(self, org: Organism, stack: ExitStack) -> Unsubscribe | None:
        self.traces = LiveTraces()
        return org.hooks.subscribe(self.traces.record)

    async def observed(self, org: Organism) -> bool:
        return bool(self.traces._events)


class TestMetricsCollector(HookSubscriberContract):
    def organism(self, tmp_path: Path) -> Organism:
        sinks = (JsonlSinkConfig(path=str(tmp_path / "hops.jsonl")),)
        return Organism(LISTENERS, metrics=MetricsConfig(sinks=sinks), tracing=True)

    def attach(self, org: Organism, stack: ExitStack) -> Unsubscribe | None:
        return None  # the organism subscribes its collector when it starts

    async def observed(self, org: Organism) -> bool:
        collector = org.metrics
        assert collector is not None
        await collector.flush()
        return collector.received > 0
