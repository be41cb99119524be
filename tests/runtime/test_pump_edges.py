"""Edges of the pump found in review: loops, odd handlers, cancellation, hostile senders."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import anyio
import pytest

from xml_pipeline import (
    DeliveryError,
    ErrorReport,
    HandlerMetadata,
    HandlerResponse,
    Listener,
    Organism,
    payload,
)

pytestmark = pytest.mark.anyio


@payload
@dataclass
class Msg:
    text: str
    n: int = 0


async def ping(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
    return HandlerResponse(Msg(text="ping", n=msg.n + 1), to="pong")


async def pong(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
    return HandlerResponse(Msg(text="pong", n=msg.n + 1), to="ping")


def endless(max_hops: int) -> Organism:
    listeners = [
        Listener("ping", Msg, ping, peers=("pong",)),
        Listener("pong", Msg, pong, peers=("ping",)),
    ]
    return Organism(listeners, max_hops=max_hops)


async def test_endless_call_cycle_fails_with_hop_limit_and_leaves_nothing_behind() -> None:
    async with endless(max_hops=500) as org:
        with anyio.fail_after(10):
            with pytest.raises(DeliveryError) as info:
                await org.request("ping", Msg(text="go"), timeout=60)
        assert info.value.reason == "hop_limit"
        assert await org.registry.size() == 1


async def test_a_long_chain_of_handlers_that_never_suspend_lets_other_tasks_run() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0)
            ticks += 1

    async with endless(max_hops=20_000) as org, anyio.create_task_group() as group:
        group.start_soon(ticker)
        with pytest.raises(DeliveryError):
            await org.request("ping", Msg(text="go"), timeout=60)
        group.cancel_scope.cancel()
    assert ticks > 100, "the hop loop yields to the event loop"


async def test_handler_raising_cancelled_error_is_a_handler_error_and_frees_its_slot() -> None:
    async def inner_cancelled(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
        if msg.text == "cancel":
            task = asyncio.ensure_future(asyncio.sleep(10))
            task.cancel()
            await task  # raises CancelledError although nobody cancelled the handler
        return HandlerResponse.respond(msg)

    async with Organism([Listener("one", Msg, inner_cancelled, max_concurrency=1)]) as org:
        with pytest.raises(DeliveryError) as info:
            await org.request("one", Msg(text="cancel"), timeout=5)
        assert info.value.reason == "handler_error"
        assert await org.request("one", Msg(text="ok"), timeout=5) == Msg(text="ok")


async def test_handler_calling_sys_exit_does_not_stop_the_process() -> None:
    async def exits(msg: Msg, meta: HandlerMetadata) -> None:
        raise SystemExit(3)

    async with Organism([Listener("x", Msg, exits)]) as org:
        with pytest.raises(DeliveryError) as info:
            await org.request("x", Msg(text="bye"), timeout=5)
    assert info.value.reason == "handler_error"


async def test_leaving_from_a_cancelled_scope_still_stops_every_task() -> None:
    async def slow(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
        await anyio.sleep(5)
        return HandlerResponse.respond(msg)

    org = Organism([Listener("slow", Msg, slow)], drain_timeout_seconds=0.2)
    with anyio.move_on_after(0.1):
        async with org:
            await org.request("slow", Msg(text="x"), timeout=30)
    await anyio.sleep(0)
    alive = [
        t
        for t in asyncio.all_tasks()
        if t.get_coro().__qualname__.startswith("StreamPump.") and not t.done()
    ]
    assert alive == []


async def test_error_text_xml_cannot_carry_still_reaches_the_caller() -> None:
    async def broken(msg: Msg, meta: HandlerMetadata) -> None:
        raise ValueError("bad \x1b[31mcolour\x00")

    async def careful(msg: Msg | ErrorReport, meta: HandlerMetadata) -> HandlerResponse:
        if isinstance(msg, Msg):
            return HandlerResponse(msg, to="broken")
        return HandlerResponse.respond(Msg(text=msg.message))

    listeners = [
        Listener("careful", Msg, careful, peers=("broken",), handles_errors=True),
        Listener("broken", Msg, broken),
    ]
    async with Organism(listeners) as org:
        reply = await org.request("careful", Msg(text="x"), timeout=5)
    assert "\ufffd[31mcolour\ufffd" in reply.text


async def test_envelope_from_outside_cannot_claim_a_listener_as_sender() -> None:
    async def echo(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse.respond(msg)

    envelope = (
        b'<message xmlns="https://xml-pipeline.org/ns/envelope/v1"><meta><from>admin</from>'
        b'<to>vault</to></meta><Msg xmlns=""><text>open</text></Msg></message>'
    )
    async with Organism([Listener("vault", Msg, echo), Listener("admin", Msg, echo)]) as org:
        with pytest.raises(DeliveryError) as info:
            await org.inject(envelope)
    assert info.value.reason == "forged_sender"


async def test_async_callable_objects_are_awaited() -> None:
    class Handler:
        async def __call__(self, msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
            return HandlerResponse.respond(Msg(text=msg.text + "!"))

    async with Organism([Listener("obj", Msg, Handler())]) as org:
        assert await org.request("obj", Msg(text="hi"), timeout=5) == Msg(text="hi!")


async def test_refused_ingress_waiters_do_not_pile_up() -> None:
    gate = anyio.Event()

    async def stuck(msg: Msg, meta: HandlerMetadata) -> None:
        await gate.wait()

    org = Organism([Listener("s", Msg, stuck)], ingress_limit=1, ingress_wait_seconds=0)
    async with org:
        await org.send("s", Msg(text="holds the only slot"))
        for _ in range(200):
            with pytest.raises(DeliveryError):
                await org.send("s", Msg(text="refused"))
        assert org._running()._ingress.waiting < 10
        gate.set()


async def test_hops_of_a_conversation_that_already_ended_are_not_run() -> None:
    ran: list[str] = []
    gate = anyio.Event()

    async def busy(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
        ran.append(msg.text)
        await gate.wait()
        return HandlerResponse.respond(msg)

    async with Organism([Listener("busy", Msg, busy, max_concurrency=1)]) as org:
        await org.send("busy", Msg(text="first"))
        with pytest.raises(DeliveryError):
            await org.request("busy", Msg(text="waits in the backlog"), timeout=0.2)
        gate.set()
        await org.wait_idle()
        await anyio.sleep(0.05)
    assert ran == ["first"]
