"""Hops made visible: the caller's thread on hop events, the DEBUG hop log, the live hop tree."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import pytest

from xml_pipeline import (
    DeliveryError,
    HandlerMetadata,
    HandlerResponse,
    HopEvent,
    Listener,
    Organism,
    payload,
)
from xml_pipeline.metrics.trace import LiveTraces

pytestmark = pytest.mark.anyio


@payload
@dataclass
class Job:
    text: str = ""


async def front(msg: Job, meta: HandlerMetadata) -> HandlerResponse:
    """Calls ``middle`` the returned way; answers with what comes back."""
    if meta.from_id == "_external":
        return HandlerResponse(msg, to="middle")
    return HandlerResponse.respond(msg)


async def middle(msg: Job, meta: HandlerMetadata) -> HandlerResponse:
    """Awaits two calls to ``back`` (meta.call), then answers."""
    first = await meta.call("back", Job(text=msg.text + "1"))
    second = await meta.call("back", Job(text=msg.text + "2"))
    return HandlerResponse.respond(Job(text=f"{first.text}+{second.text}"))


async def back(msg: Job, meta: HandlerMetadata) -> HandlerResponse:
    if msg.text.startswith("fail"):
        raise ValueError("no")
    return HandlerResponse.respond(Job(text=msg.text.upper()))


def organism() -> Organism:
    return Organism(
        [
            Listener("front", Job, front, peers=("middle",)),
            Listener("middle", Job, middle, peers=("back",)),
            Listener("back", Job, back),
        ]
    )


async def test_hop_events_carry_the_callers_thread() -> None:
    seen: list[HopEvent] = []
    async with organism() as org:
        org.hooks.subscribe(lambda e: seen.append(e) if isinstance(e, HopEvent) else None)
        await org.request("front", Job(text="a"), timeout=5)
    started = [e for e in seen if e.kind == "started"]
    assert [e.listener for e in started] == ["front", "middle", "back", "back", "front"]
    front_thread = started[0].thread
    assert started[0].caller_thread is None, "the first call comes from outside"
    assert started[1].caller_thread == front_thread
    assert started[2].caller_thread == started[3].caller_thread == started[1].thread
    assert started[4].thread == front_thread and started[4].caller_thread is None
    finished = [e for e in seen if e.kind == "finished"]
    assert {e.caller_thread for e in finished} == {e.caller_thread for e in started}
    answered = [e for e in seen if e.kind == "answered"]
    on_middle = (started[1].thread, front_thread)  # handed to middle, which front called
    assert [(e.thread, e.caller_thread) for e in answered] == [on_middle, on_middle]


async def test_the_live_trace_nests_each_hop_under_the_hop_that_sent_its_payload() -> None:
    """``organism run --trace``'s recorder draws with build_tree, as org.trace does."""
    traces = LiveTraces()
    async with organism() as org:
        org.hooks.subscribe(traces.record)
        await org.request("front", Job(text="a"), timeout=5)
        (conversation,) = traces.conversations()
        assert await traces.settled(conversation)
        found = traces.trace(conversation)
    assert found is not None and found.outcome == "answered"
    lines = found.render().splitlines()
    assert re.fullmatch(
        rf"conversation {conversation} at front: answered in [\d.]+ ms \(5 hops\)", lines[0]
    ), lines[0]
    shape = [re.sub(r" \+[\d.]+ ms [\d.]+ ms ", " T ", line) for line in lines[1:]]
    assert shape == [
        "front <Job> T ok",
        "└── middle <Job> T ok",
        "    ├── back <Job> T ok",  # the two meta.calls it awaited
        "    ├── back <Job> T ok",
        "    └── front <Job> T ok",  # its answer, run by front again
    ]
    traces.forget(conversation)
    assert traces.conversations() == []
    assert traces.conversation_of(conversation) is None


async def test_a_failed_conversation_shows_where_it_failed() -> None:
    traces = LiveTraces()
    async with organism() as org:
        org.hooks.subscribe(traces.record)
        with pytest.raises(DeliveryError) as caught:
            await org.request("front", Job(text="fail"), timeout=5)
        conversation = traces.conversation_of(caught.value.thread)
        assert conversation is not None
        assert await traces.settled(conversation)
        found = traces.trace(conversation)
    assert found is not None and found.outcome == "handler_error"
    assert [(depth, hop.listener, hop.outcome) for depth, hop in found.walk()] == [
        (0, "front", "ok"),
        (1, "middle", "handler_error"),  # it did not catch its callee's failure
        (2, "back", "handler_error"),
    ]


async def test_the_live_trace_keeps_at_most_its_limit_of_conversations() -> None:
    traces = LiveTraces(keep=2)
    async with organism() as org:
        org.hooks.subscribe(traces.record)
        for text in "abc":
            await org.request("front", Job(text=text), timeout=5)
    assert len(traces.conversations()) == 2


async def test_debug_on_the_hops_logger_at_start_logs_one_line_per_hop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="xml_pipeline.hops"):
        async with organism() as org:
            assert org.hooks.active, "the hop log subscribed"
            await org.request("front", Job(text="a"), timeout=5)
        assert not org.hooks.active, "and unsubscribed when the organism stopped"
    lines = [r.getMessage() for r in caplog.records if r.name == "xml_pipeline.hops"]
    assert len(lines) == 7, "5 handler runs, 2 answers awaited with meta.call"
    conversation = r"conv [0-9a-f]{8}"
    assert re.fullmatch(rf"hop _external -> front <Job> {conversation} [\d.]+ m?s ok", lines[0])
    assert re.fullmatch(rf"hop back -> middle <Job> {conversation} - answered", lines[1])
    assert re.fullmatch(rf"hop middle -> back <Job> {conversation} [\d.]+ m?s ok", lines[2])


async def test_no_hop_log_and_no_events_below_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="xml_pipeline"):
        async with organism() as org:
            assert not org.hooks.active, "no subscriber: the pump builds no event"
            await org.request("front", Job(text="a"), timeout=5)
    assert not [r for r in caplog.records if r.name == "xml_pipeline.hops"]


def test_a_conversation_never_seen_has_no_trace() -> None:
    assert LiveTraces().trace("nope") is None
