"""Which conversations become dead letters, and what each one holds (issue 12, items 6 and 7):
the envelope that started it, the chain of listeners down to the failure, the attempts."""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import pytest

from xml_pipeline import (
    DeadLetter,
    DeliveryError,
    Envelope,
    ErrorReport,
    HandlerMetadata,
    HandlerResponse,
    Listener,
    Organism,
    ParseLimits,
    from_element,
    payload,
)
from xml_pipeline._runtime.pump import StreamPump
from xml_pipeline._runtime.registry import ThreadRegistry
from xml_pipeline._runtime.retry import RetryPolicy
from xml_pipeline.backends import MemoryBackend
from xml_pipeline.testing import drain

pytestmark = pytest.mark.anyio


@payload
@dataclass
class Ask:
    text: str


@payload
@dataclass
class Deep:
    text: str


async def front(msg: Ask, meta: HandlerMetadata) -> HandlerResponse:
    if msg.text.startswith("deep"):
        return HandlerResponse(Deep(text=msg.text), to="back")
    if msg.text == "fail":
        raise RuntimeError("front refuses")
    return HandlerResponse.respond(msg)


async def back(msg: Deep, meta: HandlerMetadata) -> HandlerResponse:
    if msg.text.startswith("deep-fail"):
        raise RuntimeError("back refuses")
    return HandlerResponse.respond(Ask(text=msg.text.upper()))


def two_listeners(**settings: object) -> Organism:
    return Organism(
        [Listener("front", Ask, front, peers=("back",)), Listener("back", Deep, back)],
        **settings,  # type: ignore[arg-type]
    )


def opened_by(letter: DeadLetter) -> Envelope:
    """The envelope a dead letter keeps, read back as the organism would read it."""
    env = Envelope.from_bytes(letter.envelope)
    return Envelope(env.sender, env.to, env.thread, from_element(Ask, env.payload))


async def test_a_send_that_fails_deep_down_keeps_its_opening_envelope_and_chain() -> None:
    async with two_listeners() as org:
        sent = await org.send("front", Ask(text="deep-fail ✓ <&>"))
        await drain(org)
        [letter] = await org.dead_letters.list()
        assert org.stats.dead_lettered == 1
    assert (letter.conversation, letter.reason, letter.listener) == (sent, "handler_error", "back")
    assert "back refuses" in letter.message
    assert letter.chain == ("front", "back")
    assert letter.attempts == 1
    assert letter.id and letter.time > 0
    # what a replay injects: the opening request, from nobody in particular, on no thread
    assert opened_by(letter) == Envelope("", "front", "", Ask(text="deep-fail ✓ <&>"))


async def test_an_injected_envelope_keeps_its_sender() -> None:
    data = Envelope("gateway", "front", "their-thread", Ask(text="fail")).to_bytes()
    async with two_listeners() as org:
        await org.inject(data)
        await drain(org)
        [letter] = await org.dead_letters.list()
    assert letter.chain == ("front",)
    assert opened_by(letter) == Envelope("gateway", "front", "", Ask(text="fail"))


async def test_a_failed_request_is_not_a_dead_letter_its_caller_has_the_error() -> None:
    async with two_listeners() as org:
        with pytest.raises(DeliveryError):
            await org.request("front", Ask(text="deep-fail"), timeout=5)
        assert await org.dead_letters.list() == []
        assert org.stats.dead_lettered == 0


async def test_an_answered_send_is_not_a_dead_letter() -> None:
    async with two_listeners() as org:
        await org.send("front", Ask(text="deep"))
        await drain(org)
        assert await org.dead_letters.list() == []


async def test_a_failure_a_caller_handled_is_not_the_chain_that_ended_it() -> None:
    """front handles back's error and then answers nothing: the conversation ends with
    no_answer at front, and that is the chain kept."""

    async def tolerant(msg: Ask | ErrorReport, meta: HandlerMetadata) -> HandlerResponse | None:
        if isinstance(msg, Ask):
            return HandlerResponse(Deep(text=msg.text), to="back")
        return None  # the ErrorReport: swallowed

    listeners = [
        Listener("front", Ask, tolerant, peers=("back",), handles_errors=True),
        Listener("back", Deep, back),
    ]
    async with Organism(listeners) as org:
        await org.send("front", Ask(text="deep-fail"))
        await drain(org)
        [letter] = await org.dead_letters.list()
    assert (letter.reason, letter.listener, letter.chain) == ("no_answer", "front", ("front",))


class RetryTwice:
    def next_delay(self, attempt: int, reason: str) -> float | None:
        return 0.0 if attempt < 3 else None


async def test_the_attempts_of_the_failing_hop_are_kept() -> None:
    """Through the pump's retry seam (policies from organism.yaml come with the recovery
    work): the hop ran three times, and the dead letter says so."""

    async def broken(msg: Ask, meta: HandlerMetadata) -> None:
        raise RuntimeError("always")

    backend = MemoryBackend()
    registry = ThreadRegistry(backend, "retrying")
    await registry.initialize_root()
    policy: RetryPolicy = RetryTwice()
    pump = StreamPump(
        [Listener("front", Ask, broken)],
        registry,
        limits=ParseLimits(),
        ingress_limit=8,
        ingress_wait_seconds=1,
        max_hops=100,
        retry=policy,
    )
    pump.start()
    try:
        await pump.send("front", Ask(text="x"))
        await pump.wait_idle()
    finally:
        await pump.aclose(1.0)
    [letter] = await backend.dead_letters()
    assert (letter.reason, letter.attempts, letter.chain) == ("handler_error", 3, ("front",))


async def test_shutdown_dead_letters_every_open_conversation_with_its_envelope() -> None:
    """Past the drain timeout, what is left ends with shutdown: sends and requests alike are
    kept (the requester also gets the error), each with the handler that was running."""
    started = anyio.Event()

    async def stuck(msg: Deep, meta: HandlerMetadata) -> None:
        started.set()
        await anyio.sleep(60)

    listeners = [Listener("front", Ask, front, peers=("back",)), Listener("back", Deep, stuck)]
    org = Organism(listeners, drain_timeout_seconds=0.2)
    errors: list[str] = []

    async def ask() -> None:
        with pytest.raises(DeliveryError) as info:
            await org.request("front", Ask(text="deep-request"), timeout=30)
        errors.append(info.value.reason)

    with anyio.fail_after(10):
        async with org, anyio.create_task_group() as tg:
            sent = [await org.send("front", Ask(text=f"deep-{n}")) for n in range(3)]
            tg.start_soon(ask)
            await started.wait()
            await org.aclose()
    assert errors == ["shutdown"]
    letters = await org.dead_letters.list()
    assert {d.reason for d in letters} == {"shutdown"}
    assert set(sent) <= {d.conversation for d in letters} and len(letters) == 4
    assert {d.chain for d in letters} == {("front", "back")}
    assert sorted(opened_by(d).payload.text for d in letters) == [  # type: ignore[attr-defined]
        "deep-0", "deep-1", "deep-2", "deep-request",
    ]  # fmt: skip
    assert org.stats.dead_lettered == 4 and org.stats.dead_letters_lost == 0


async def test_a_conversation_that_waited_in_a_backlog_at_shutdown_is_kept_too() -> None:
    """One slot, three sends: two never ran (backlogged); all three are kept."""
    gate = anyio.Event()

    async def slow(msg: Ask, meta: HandlerMetadata) -> None:
        gate.set()
        await anyio.sleep(60)

    org = Organism([Listener("s", Ask, slow, max_concurrency=1)], drain_timeout_seconds=0.1)
    with anyio.fail_after(10):
        async with org:
            for n in range(3):
                await org.send("s", Ask(text=str(n)))
            await gate.wait()
    letters = await org.dead_letters.list()
    assert [d.reason for d in letters] == ["shutdown"] * 3
    assert sorted(opened_by(d).payload.text for d in letters) == ["0", "1", "2"]  # type: ignore[attr-defined]
    assert {d.chain for d in letters} == {("s",)}
