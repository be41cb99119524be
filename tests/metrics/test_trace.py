"""Traces: a conversation's hops as a tree, from recorded events, history or stored records."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from tests.metrics.organisms import Part, Plan, organism
from xml_pipeline import (
    HandlerMetadata,
    HandlerResponse,
    HopEvent,
    Listener,
    NotFoundError,
    Organism,
    Trace,
    payload,
)
from xml_pipeline.metrics import build_tree

pytestmark = pytest.mark.anyio


def shape(trace: Trace) -> list[tuple[int, str, str, str]]:
    return [(depth, hop.listener, hop.payload_tag, hop.outcome) for depth, hop in trace.walk()]


async def test_a_fan_out_shows_both_branches_under_the_hop_that_made_them() -> None:
    org = organism(tracing=True)
    async with org:
        conversation = await org.send("plan", Plan(text="x"))
        await org.wait_idle()
        trace = await org.trace(conversation)
    assert trace.outcome == "answered" and trace.listener == "plan" and trace.source == "trace"
    (root,) = trace.hops
    assert (root.listener, root.payload_tag, root.sender) == ("plan", "Plan", "_external")
    assert sorted((c.listener, c.payload_tag) for c in root.children) == [
        ("left", "Part"),
        ("right", "Part"),
    ]
    for branch in root.children:  # each answer came back to plan, under the hop that sent it
        assert [(c.listener, c.sender) for c in branch.children] == [("plan", branch.listener)]
        assert branch.start is not None and root.start is not None and branch.start >= root.start
        assert branch.duration is not None and branch.outcome == "ok"
    assert all(hop.process for _, hop in trace.walk())
    text = trace.render()
    assert text.splitlines()[0].startswith(f"conversation {conversation} at plan: answered in ")
    assert "├── left <Part>" in text or "├── right <Part>" in text
    assert "│   └── plan <Part>" in text


@payload
@dataclass
class Ask:
    text: str


async def gather(msg: Ask, meta: HandlerMetadata) -> HandlerResponse:
    a, b = await asyncio.gather(meta.call("one", Ask(text="1")), meta.call("two", Ask(text="2")))
    return HandlerResponse.respond(Ask(text=a.text + b.text))


async def echo(msg: Ask, meta: HandlerMetadata) -> HandlerResponse:
    if msg.text == "2":
        raise RuntimeError("two is down")
    return HandlerResponse.respond(msg)


async def test_awaited_calls_sit_under_the_hop_that_awaits_them() -> None:
    org = Organism(
        [
            Listener("front", Ask, gather, peers=("one", "two")),
            Listener("one", Ask, echo),
            Listener("two", Ask, echo),
        ],
        tracing=True,
    )
    async with org:
        conversation = await org.send("front", Ask(text="go"))
        await org.wait_idle()
        trace = await org.trace(conversation)
    assert shape(trace) == [
        (0, "front", "Ask", "handler_error"),
        (1, "one", "Ask", "ok"),
        (1, "two", "Ask", "handler_error"),
    ]
    assert trace.outcome == "handler_error"


async def test_a_trace_stays_readable_after_the_organism_stopped() -> None:
    org = organism(tracing=True)
    async with org:
        conversation = await org.send("plan", Plan(text="x"))
        await org.wait_idle()
    trace = await org.trace(conversation)
    assert len(list(trace.walk())) == 5


async def test_an_unknown_conversation_says_what_is_off() -> None:
    async with organism(history=False) as org:
        with pytest.raises(NotFoundError) as info:
            await org.trace("nope")
    message = str(info.value)
    assert "no trace of conversation 'nope'" in message
    assert "tracing is off" in message and "history is off" in message
    async with organism(tracing={"conversations": 1}) as org:
        first = await org.send("plan", Plan(text="x"))
        await org.send("plan", Plan(text="y"))
        await org.wait_idle()
        with pytest.raises(NotFoundError, match="not among the 1 newest conversations"):
            await org.trace(first)


async def test_without_tracing_an_open_conversation_is_traced_from_its_history() -> None:
    release = asyncio.Event()

    async def slow(msg: Part, meta: HandlerMetadata) -> HandlerResponse:
        await release.wait()
        return HandlerResponse.respond(msg)

    async def fast(msg: Part, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse.respond(msg)

    from tests.metrics.organisms import plan

    org = Organism(
        [
            Listener("plan", Plan, plan, peers=("left", "right")),
            Listener("left", Part, slow),
            Listener("right", Part, fast),
        ]
    )
    async with org:
        conversation = await org.send("plan", Plan(text="x"))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(list((await org.trace(conversation)).walk())) == 4:
                break
        trace = await org.trace(conversation)
        release.set()
        await org.wait_idle()
    assert trace.source == "history" and trace.outcome is None
    assert shape(trace) == [
        (0, "plan", "Plan", ""),
        (1, "left", "Part", ""),
        (1, "right", "Part", ""),
        (2, "plan", "Part", ""),
    ]
    assert "from history" in trace.render()


def test_a_long_chain_builds_and_renders_without_recursion() -> None:
    events = []
    for i in range(5000):
        thread, caller = f"t{i}", f"t{i - 1}" if i else "root"
        sender = "_external" if i == 0 else f"l{i - 1}"
        events.append(
            HopEvent(
                "started", "c", thread, sender, f"l{i}", Ask(text=""), 1, i, None, None, caller
            )
        )
    for i in reversed(range(5000)):
        events.append(
            HopEvent(
                "finished",
                "c",
                f"t{i}",
                "",
                f"l{i}",
                Ask(text=""),
                1,
                10_000 - i,
                10_000 - 2 * i,
                None,
                "",
            )
        )
    trace = build_tree(events)
    depths = [depth for depth, _ in trace.walk()]
    assert depths == list(range(5000))
    assert len(trace.render().splitlines()) == 5001


async def test_a_conversation_with_more_hops_than_kept_is_cut() -> None:
    org = organism(tracing={"hops": 2})
    async with org:
        conversation = await org.send("plan", Plan(text="x"))
        await org.wait_idle()
        trace = await org.trace(conversation)
    assert trace.truncated and len(list(trace.walk())) <= 2
    assert "cut at the tracing.hops limit" in trace.render()
