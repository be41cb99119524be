"""Answers of ``send``/``inject`` (``Organism.outcomes``) and raw-envelope requests for
gateways (``Organism.request_envelope``): issue 11, item 5."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import anyio
import pytest

from xml_pipeline import (
    DeliveryError,
    Envelope,
    HandlerMetadata,
    HandlerResponse,
    HopEvent,
    Listener,
    Organism,
    Outcome,
    SchemaViolation,
    UsageError,
    XmlInputError,
    from_element,
    payload,
)
from xml_pipeline._runtime.outbox import Outbox

pytestmark = pytest.mark.anyio


@payload
@dataclass
class Ask:
    text: str


@payload
@dataclass
class Told:
    text: str


@payload
@dataclass
class Shout:
    text: str


async def front(msg: Ask, meta: HandlerMetadata) -> HandlerResponse | None:
    if msg.text == "fail":
        raise ValueError("front refuses 'fail'")
    if msg.text == "slow":
        await anyio.sleep(30)
    if msg.text == "silent":
        return None
    if msg.text == "relay":  # answered by the peer, not by front
        return HandlerResponse(Shout(text="relayed"), to="back")
    return HandlerResponse.respond(Told(text=msg.text.upper()))


async def back(msg: Shout, meta: HandlerMetadata) -> HandlerResponse:
    return HandlerResponse.respond(Told(text=msg.text + "!"))


def organism(**settings: object) -> Organism:
    return Organism(
        [
            Listener("front", Ask, front, peers=("back",), timeout_seconds=5),
            Listener("back", Shout, back),
        ],
        **settings,  # type: ignore[arg-type]
    )


def envelope(text: str, sender: str = "gateway", thread: str = "t-outside") -> bytes:
    return Envelope(sender, "front", thread, Ask(text=text)).to_bytes()


# -- outcomes ----------------------------------------------------------------------------------


async def test_send_and_inject_answers_reach_the_outbox_with_their_conversation_id() -> None:
    async with organism() as org:
        sent = await org.send("front", Ask(text="hi"))
        injected = await org.inject(envelope("yo"))
        got: dict[str, Outcome] = {}
        with anyio.fail_after(5):
            async for outcome in org.outcomes():
                got[outcome.conversation] = outcome
                if len(got) == 2:
                    break
    assert set(got) == {sent, injected}
    assert got[sent].ok and got[sent].answer == Told(text="HI")
    assert got[sent].listener == "front" and got[sent].answered_by == "front"
    assert got[injected].answer == Told(text="YO") and got[injected].error is None


async def test_a_failure_reaches_the_outbox_with_its_reason_and_stays_a_dead_letter() -> None:
    async with organism() as org:
        sent = await org.send("front", Ask(text="fail"))
        with anyio.fail_after(5):
            outcome = await anext(aiter(org.outcomes()))
        assert outcome.conversation == sent and not outcome.ok and outcome.answer is None
        assert outcome.error is not None and outcome.error.reason == "handler_error"
        assert "front refuses 'fail'" in str(outcome.error)
        assert [d.conversation for d in await org.dead_letters.list()] == [sent]


async def test_a_conversation_that_calls_a_peer_delivers_its_final_answer() -> None:
    async with organism() as org:
        sent = await org.send("front", Ask(text="relay"))
        with anyio.fail_after(5):
            outcome = await anext(aiter(org.outcomes()))
    assert (outcome.conversation, outcome.answered_by) == (sent, "front")
    assert outcome.answer == Told(text="RELAYED!")  # back's answer, re-handled by front


async def test_requests_do_not_go_to_the_outbox() -> None:
    async with organism() as org:
        await org.request("front", Ask(text="a"))
        sent = await org.send("front", Ask(text="b"))
        with anyio.fail_after(5):
            outcome = await anext(aiter(org.outcomes()))
    assert outcome.conversation == sent


async def test_unread_outcomes_beyond_outbox_size_drop_the_oldest_and_are_counted() -> None:
    async with organism(outbox_size=3) as org:
        ids = [await org.send("front", Ask(text=str(i))) for i in range(10)]
        await org.wait_idle()
        assert org.stats.outcomes_dropped == 7
    kept = [o.conversation async for o in org.outcomes()]  # ends: the organism stopped
    assert kept == ids[-3:]


async def test_iteration_ends_when_the_organism_stops_after_the_outcomes_left() -> None:
    org = organism()
    seen: list[str] = []

    async def read() -> None:
        async for outcome in org.outcomes():
            seen.append(outcome.conversation)

    async with org, anyio.create_task_group() as tg:
        tg.start_soon(read)
        ids = [await org.send("front", Ask(text=str(i))) for i in range(5)]
        await org.wait_idle()
        await org.aclose()
    assert sorted(seen) == sorted(ids)


async def test_each_outcome_goes_to_one_of_several_readers() -> None:
    seen: list[list[str]] = [[], [], []]

    async def read(into: list[str], org: Organism) -> None:
        async for outcome in org.outcomes():
            into.append(outcome.conversation)
            await anyio.sleep(0)

    async with organism() as org, anyio.create_task_group() as tg:
        for into in seen:
            tg.start_soon(read, into, org)
        ids = [await org.send("front", Ask(text=str(i))) for i in range(60)]
        await org.wait_idle()
        await org.aclose()
    everything = [c for into in seen for c in into]
    assert sorted(everything) == sorted(ids)  # each once, none lost


async def test_a_send_cut_short_by_shutdown_reaches_the_outbox_as_shutdown() -> None:
    async with organism(drain_timeout_seconds=0.1) as org:
        sent = await org.send("front", Ask(text="slow"))
    outcomes = [o async for o in org.outcomes()]
    assert [(o.conversation, o.error and o.error.reason) for o in outcomes] == [(sent, "shutdown")]


async def test_outcomes_before_the_first_start_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="has not started"):
        organism().outcomes()


async def test_a_reader_cancelled_as_it_is_woken_passes_the_outcome_on() -> None:
    box = Outbox(10)
    first = asyncio.ensure_future(box.get())
    second = asyncio.ensure_future(box.get())
    await asyncio.sleep(0)
    box.put(Outcome("c1", "front"))  # wakes the first reader...
    first.cancel()  # ...which is cancelled before it runs
    with anyio.fail_after(2):
        got = await second
    assert got is not None and got.conversation == "c1"
    box.close()


# -- request_envelope -------------------------------------------------------------------------


async def test_request_envelope_answers_with_a_raw_envelope_back_to_the_sender() -> None:
    conversations: list[str] = []
    async with organism() as org:
        org.hooks.subscribe(
            lambda e: conversations.append(e.conversation) if isinstance(e, HopEvent) else None
        )
        raw = await org.request_envelope(envelope("hello", sender="gateway"), timeout=5)
    answer = Envelope.from_bytes(raw)
    assert (answer.sender, answer.to) == ("front", "gateway")
    assert answer.thread != "t-outside"  # a new conversation, its own id
    assert set(conversations) == {answer.thread}, "the answer carries the conversation id"
    assert from_element(Told, answer.payload) == Told(text="HELLO")


async def test_an_anonymous_request_envelope_is_answered_to_the_outside() -> None:
    async with organism() as org:
        raw = await org.request_envelope(envelope("hi", sender=""), timeout=5)
    answer = Envelope.from_bytes(raw)  # our own parser reads what we write
    assert (answer.sender, answer.to) == ("front", "_external")


async def test_request_envelope_of_a_conversation_that_calls_a_peer() -> None:
    async with organism() as org:
        raw = await org.request_envelope(envelope("relay"), timeout=5)
    answer = Envelope.from_bytes(raw)
    assert (answer.sender, from_element(Told, answer.payload)) == ("front", Told("RELAYED!"))


async def test_request_envelope_failures_raise_with_their_reason() -> None:
    async with organism() as org:
        with pytest.raises(DeliveryError) as failed:
            await org.request_envelope(envelope("fail"), timeout=5)
        assert failed.value.reason == "handler_error"
        with pytest.raises(DeliveryError) as silent:
            await org.request_envelope(envelope("silent"), timeout=5)
        assert silent.value.reason == "no_answer"
        with pytest.raises(DeliveryError) as late:
            await org.request_envelope(envelope("slow"), timeout=0.2)
        assert late.value.reason == "timeout"
        await org.wait_idle()  # the timed-out conversation ended, its handler stopped
        assert org.stats.failed == 3
        async with anyio.create_task_group() as tg:  # none of them went to the outbox
            tg.cancel_scope.deadline = anyio.current_time() + 0.2
            async for _ in org.outcomes():
                pytest.fail("a request_envelope outcome reached the outbox")


@pytest.mark.parametrize(
    ("data", "error", "reason"),
    [
        (b"<message", XmlInputError, "malformed"),
        (b'<!DOCTYPE x [<!ENTITY a "b">]><x/>', XmlInputError, "doctype"),
        (b"<a>" * 500 + b"</a>" * 500, XmlInputError, "too_deep"),
        (b"<x/>" + b" " * 300_000, XmlInputError, "too_large"),
        (b"<notanenvelope/>", XmlInputError, "not_an_envelope"),
        (envelope("x", sender="front"), DeliveryError, "forged_sender"),
        (envelope("x", sender="_system"), DeliveryError, "forged_sender"),
        (Envelope("gw", "nobody", "", Ask(text="x")).to_bytes(), DeliveryError, "no_route"),
        (Envelope("gw", "front", "", Shout(text="x")).to_bytes(), DeliveryError, "no_route"),
        (
            envelope("x").replace(b"<text>x</text>", b"<txt>x</txt>"),
            SchemaViolation,
            "schema_violation",
        ),
    ],
)
async def test_request_envelope_refuses_bad_input_as_inject_does(
    data: bytes, error: type[Exception], reason: str
) -> None:
    async with organism() as org:
        for call in (org.inject, lambda d: org.request_envelope(d, timeout=5)):
            with pytest.raises(error) as refused:
                await call(data)
            assert refused.value.reason == reason  # type: ignore[attr-defined]
        assert org.stats.rejected == 2 and org.stats.conversations == 0


async def test_request_envelope_checks_its_arguments() -> None:
    async with organism() as org:
        with pytest.raises(UsageError, match="bytes or str"):
            await org.request_envelope(42, timeout=5)  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="timeout"):
            await org.request_envelope(envelope("x"), timeout=0)


async def test_a_cancelled_request_envelope_ends_its_conversation() -> None:
    async with organism() as org:
        with anyio.move_on_after(0.1):
            await org.request_envelope(envelope("slow"), timeout=10)
        with anyio.fail_after(5):
            await org.wait_idle()
        assert org.stats.cancelled == 1
