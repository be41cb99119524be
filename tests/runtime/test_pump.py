"""The pump's invariants: opaque chains, routing, errors travelling up, concurrency, lifecycle."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import anyio
import pytest

from xml_pipeline import (
    DeliveryError,
    Envelope,
    ErrorReport,
    HandlerMetadata,
    HandlerResponse,
    Listener,
    Organism,
    SchemaViolation,
    UsageError,
    XmlInputError,
    payload,
)
from xml_pipeline._runtime.pump import StreamPump
from xml_pipeline._runtime.registry import ThreadRegistry
from xml_pipeline._wire.parsing import ParseLimits
from xml_pipeline.backends.memory import MemoryBackend
from xml_pipeline.testing import capture, drain

pytestmark = pytest.mark.anyio


@payload
@dataclass
class Ask:
    text: str


@payload
@dataclass
class Echo:
    text: str


@payload
@dataclass
class Count:
    n: int


async def front(msg: Ask | Echo, meta: HandlerMetadata) -> HandlerResponse:
    """Calls back on the first hop, answers with what the back answered."""
    if isinstance(msg, Ask):
        return HandlerResponse(Echo(text=msg.text), to="back.end")
    return HandlerResponse.respond(msg)


async def back(msg: Echo, meta: HandlerMetadata) -> HandlerResponse:
    return HandlerResponse.respond(Echo(text=msg.text.upper()))


def two_hop(**front_options: object) -> list[Listener]:
    return [
        Listener("front", Ask, front, peers=("back.end",), **front_options),  # type: ignore[arg-type]
        Listener("back.end", Echo, back),
    ]


async def test_answer_of_another_type_reaches_the_caller_and_the_requester() -> None:
    async with Organism(two_hop()) as org:
        with capture(org) as seen:
            reply = await org.request("front", Ask(text="hi"), timeout=5)
    assert reply == Echo(text="HI")
    assert seen.route() == [("_external", "front"), ("front", "back.end"), ("back.end", "front")]


async def test_thousand_concurrent_conversations_on_one_path_never_cross() -> None:
    threads: list[str] = []

    async def record(msg: Echo, meta: HandlerMetadata) -> HandlerResponse:
        threads.append(meta.thread_id)
        await anyio.sleep(0)
        return HandlerResponse.respond(Echo(text=msg.text.upper()))

    listeners = [
        Listener("front", Ask, front, peers=("back.end",)),
        Listener("back.end", Echo, record),
    ]
    backend = MemoryBackend()
    async with Organism(listeners, backend=backend) as org:
        texts = [f"m{i}" for i in range(1000)]
        replies = await asyncio.gather(*(org.request("front", Ask(text=t)) for t in texts))
        assert replies == [Echo(text=t.upper()) for t in texts]
        assert len(set(threads)) == 1000, "every call gets its own thread id"
        assert await org.registry.size() == 1, "only the root is left"


async def test_chain_lookup_keeps_dotted_listener_names() -> None:
    chains: list[list[str] | None] = []

    async def look(msg: Echo, meta: HandlerMetadata) -> HandlerResponse:
        chains.append(await registry.lookup(meta.thread_id))
        return HandlerResponse.respond(msg)

    org = Organism(
        [Listener("front", Ask, front, peers=("back.end",)), Listener("back.end", Echo, look)],
        name="org.x",
    )
    async with org:
        registry = org.registry
        await org.request("front", Ask(text="a"))
    assert chains == [["org.x", "front", "back.end"]]


async def test_fan_out_answers_come_back_on_the_callers_thread_one_by_one() -> None:
    got: dict[str, list[int]] = {}

    async def planner(msg: Count | Echo, meta: HandlerMetadata) -> object:
        if isinstance(msg, Count):
            got[meta.thread_id] = []
            return [HandlerResponse(Count(n=i), to="adder") for i in range(msg.n)]
        parts = got[meta.thread_id]
        parts.append(int(msg.text))
        if len(parts) == 3:
            return HandlerResponse.respond(Count(n=sum(parts)))
        return None

    async def adder(msg: Count, meta: HandlerMetadata) -> HandlerResponse:
        await anyio.sleep(0.01 * (3 - msg.n))  # answers arrive in reverse order
        return HandlerResponse.respond(Echo(text=str(msg.n + 10)))

    listeners = [
        Listener("planner", Count, planner, peers=("adder",)),
        Listener("adder", Count, adder),
    ]
    async with Organism(listeners) as org:
        reply = await org.request("planner", Count(n=3), timeout=5)
        assert reply == Count(n=10 + 11 + 12)
        assert await org.registry.size() == 1


async def test_handler_error_reaches_the_requester_at_once_not_at_the_timeout() -> None:
    async def broken(msg: Echo, meta: HandlerMetadata) -> None:
        raise RuntimeError("disk on fire")

    listeners = [
        Listener("front", Ask, front, peers=("back.end",)),
        Listener("back.end", Echo, broken),
    ]
    async with Organism(listeners) as org:
        with anyio.fail_after(5):
            with pytest.raises(DeliveryError) as info:
                await org.request("front", Ask(text="x"), timeout=60)
    assert info.value.reason == "handler_error"
    assert info.value.listener == "back.end"
    assert "disk on fire" in info.value.message


async def test_listener_that_handles_errors_receives_the_report_and_can_recover() -> None:
    async def broken(msg: Echo, meta: HandlerMetadata) -> None:
        raise ValueError("nope")

    async def careful(msg: Ask | ErrorReport, meta: HandlerMetadata) -> HandlerResponse:
        if isinstance(msg, Ask):
            return HandlerResponse(Echo(text=msg.text), to="back.end")
        return HandlerResponse.respond(Echo(text=f"fallback after {msg.reason}"))

    listeners = [
        Listener("front", Ask, careful, peers=("back.end",), handles_errors=True),
        Listener("back.end", Echo, broken),
    ]
    async with Organism(listeners) as org:
        assert await org.request("front", Ask(text="x")) == Echo(
            text="fallback after handler_error"
        )


async def test_error_travels_up_through_listeners_that_do_not_handle_errors() -> None:
    async def middle(msg: Echo, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse(Count(n=1), to="bottom")

    async def bottom(msg: Count, meta: HandlerMetadata) -> None:
        raise KeyError("deep")

    listeners = [
        Listener("front", Ask, front, peers=("back.end",)),
        Listener("back.end", Echo, middle, peers=("bottom",)),
        Listener("bottom", Count, bottom),
    ]
    async with Organism(listeners, backend=MemoryBackend()) as org:
        with pytest.raises(DeliveryError) as info:
            await org.request("front", Ask(text="x"))
        assert (info.value.reason, info.value.listener) == ("handler_error", "bottom")
        assert await org.registry.size() == 1


async def test_calling_a_listener_outside_peers_is_denied() -> None:
    async def sneaky(msg: Ask, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse(Echo(text="x"), to="back.end")

    listeners = [Listener("front", Ask, sneaky), Listener("back.end", Echo, back)]
    async with Organism(listeners) as org:
        with pytest.raises(DeliveryError) as info:
            await org.request("front", Ask(text="x"))
    assert info.value.reason == "peer_denied"
    assert "back.end" in info.value.message


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        (42, "invalid_response"),
        ("<Echo><text>raw</text></Echo>", "invalid_response"),
        (Envelope("front", "_external", "t", Echo(text="forged")), "invalid_response"),
        (HandlerResponse.respond(Echo(text=1)), "schema_violation"),  # type: ignore[arg-type]
        (HandlerResponse.respond({"text": "dict"}), "invalid_response"),
        (HandlerResponse(Echo(text="x"), to="nobody"), "no_route"),
        (HandlerResponse(Count(n=1), to="back.end"), "no_route"),
    ],
    ids=["int", "string", "envelope", "bad-field", "dict", "unknown-peer", "wrong-class"],
)
async def test_invalid_handler_results_fail_to_the_caller(result: object, reason: str) -> None:
    async def bad(msg: Ask, meta: HandlerMetadata) -> object:
        return result

    listeners = [
        Listener("front", Ask, bad, peers=("back.end",)),
        Listener("back.end", Echo, back),
    ]
    async with Organism(listeners) as org:
        with pytest.raises(DeliveryError) as info:
            await org.request("front", Ask(text="x"))
    assert info.value.reason == reason


def test_handler_response_needs_a_target_or_respond() -> None:
    with pytest.raises(UsageError, match="respond"):
        HandlerResponse(Echo(text="x"))


async def test_returning_nothing_ends_the_wait_with_no_answer() -> None:
    async def silent(msg: Ask, meta: HandlerMetadata) -> None:
        return None

    async with Organism([Listener("front", Ask, silent)]) as org:
        with anyio.fail_after(5):
            with pytest.raises(DeliveryError) as info:
                await org.request("front", Ask(text="x"), timeout=60)
    assert info.value.reason == "no_answer"


async def test_slow_handler_times_out_and_the_pump_keeps_serving() -> None:
    async def slow(msg: Echo, meta: HandlerMetadata) -> HandlerResponse:
        if msg.text == "slow":
            await anyio.sleep(30)
        return HandlerResponse.respond(msg)

    listeners = [
        Listener("front", Ask, front, peers=("back.end",)),
        Listener("back.end", Echo, slow, timeout_seconds=0.2),
    ]
    async with Organism(listeners) as org:
        with pytest.raises(DeliveryError) as info:
            await org.request("front", Ask(text="slow"), timeout=20)
        assert (info.value.reason, info.value.listener) == ("timeout", "back.end")
        assert await org.request("front", Ask(text="fast")) == Echo(text="fast")
        assert org.stats.timeouts == 1


async def test_request_timeout_retires_the_conversation_and_cancels_its_handler() -> None:
    cancelled: list[str] = []

    async def waits(msg: Echo, meta: HandlerMetadata) -> HandlerResponse:
        try:
            await anyio.sleep(30)
        except BaseException:
            cancelled.append(msg.text)
            raise
        return HandlerResponse.respond(msg)

    listeners = [
        Listener("front", Ask, front, peers=("back.end",)),
        Listener("back.end", Echo, waits),
    ]
    async with Organism(listeners) as org:
        with pytest.raises(DeliveryError) as info:
            await org.request("front", Ask(text="x"), timeout=0.2)
        assert info.value.reason == "timeout"
        assert await org.registry.size() == 1
        await drain(org)
        with anyio.fail_after(5):
            while not cancelled:
                await anyio.sleep(0.01)
        assert cancelled == ["x"]
        assert org.stats.timeouts == 1


async def test_a_second_answer_on_one_thread_is_a_late_reply_and_dropped() -> None:
    async def twice(msg: Ask, meta: HandlerMetadata) -> list[HandlerResponse]:
        return [HandlerResponse.respond(Echo(text="a")), HandlerResponse.respond(Echo(text="b"))]

    async with Organism([Listener("twice", Ask, twice)]) as org:
        assert await org.request("twice", Ask(text="x"), timeout=5) == Echo(text="a")
        assert org.stats.late_replies == 1


async def test_request_to_unknown_listener_or_with_wrong_payload_fails_at_once() -> None:
    async with Organism(two_hop()) as org:
        with pytest.raises(DeliveryError, match="did you mean 'front'") as info:
            await org.request("fron", Ask(text="x"))
        assert info.value.reason == "no_route"
        with pytest.raises(DeliveryError) as info:
            await org.request("front", Echo(text="x"))
        assert info.value.reason == "no_route"
        with pytest.raises(SchemaViolation):
            await org.request("front", Ask(text=5))  # type: ignore[arg-type]


async def test_busy_listener_does_not_starve_others() -> None:
    gate = anyio.Event()

    async def stuck(msg: Echo, meta: HandlerMetadata) -> HandlerResponse:
        await gate.wait()
        return HandlerResponse.respond(msg)

    async def quick(msg: Ask, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse.respond(Echo(text="quick"))

    listeners = [Listener("stuck", Echo, stuck, max_concurrency=1), Listener("quick", Ask, quick)]
    async with Organism(listeners) as org:
        blocked = [await org.send("stuck", Echo(text=str(i))) for i in range(5)]
        assert len(set(blocked)) == 5
        with anyio.fail_after(5):
            for _ in range(20):
                assert await org.request("quick", Ask(text="x")) == Echo(text="quick")
        gate.set()
        await drain(org)


async def test_call_cycle_between_single_slot_listeners_does_not_deadlock() -> None:
    async def ping(msg: Count | Echo, meta: HandlerMetadata) -> HandlerResponse:
        if isinstance(msg, Echo):  # an answer from pong: pass it up
            return HandlerResponse.respond(msg)
        if msg.n == 0:
            return HandlerResponse.respond(Echo(text="done"))
        return HandlerResponse(Count(n=msg.n - 1), to="pong")

    async def pong(msg: Count | Echo, meta: HandlerMetadata) -> HandlerResponse:
        if isinstance(msg, Echo):
            return HandlerResponse.respond(msg)
        return HandlerResponse(Count(n=msg.n), to="ping")

    listeners = [
        Listener("ping", Count, ping, peers=("pong",), max_concurrency=1),
        Listener("pong", Count, pong, peers=("ping",), max_concurrency=1),
    ]
    async with Organism(listeners, backend=MemoryBackend()) as org:
        with anyio.fail_after(20):
            replies = await asyncio.gather(*(org.request("ping", Count(n=6)) for _ in range(50)))
        assert replies == [Echo(text="done")] * 50
        assert await org.registry.size() == 1


async def test_full_organism_makes_ingress_fail_with_overloaded() -> None:
    gate = anyio.Event()

    async def stuck(msg: Echo, meta: HandlerMetadata) -> HandlerResponse:
        await gate.wait()
        return HandlerResponse.respond(msg)

    org = Organism([Listener("stuck", Echo, stuck)], ingress_limit=2, ingress_wait_seconds=0.1)
    async with org:
        await org.send("stuck", Echo(text="1"))
        await org.send("stuck", Echo(text="2"))
        with pytest.raises(DeliveryError) as info:
            await org.send("stuck", Echo(text="3"))
        assert info.value.reason == "overloaded"
        gate.set()
        await drain(org)
        assert await org.request("stuck", Echo(text="4")) == Echo(text="4")


def _envelope(to: str, body: bytes, thread: str = "") -> bytes:
    return (
        b'<message xmlns="https://xml-pipeline.org/ns/envelope/v1"><meta><from>cli</from>'
        b"<to>"
        + to.encode()
        + b"</to><thread>"
        + thread.encode()
        + b"</thread></meta>"
        + body
        + b"</message>"
    )


async def test_inject_runs_a_conversation_and_never_joins_an_outside_thread_id() -> None:
    async with Organism(two_hop()) as org:
        with capture(org) as seen:
            first = await org.inject(_envelope("front", b'<Ask xmlns=""><text>a</text></Ask>'))
            await drain(org)
            second = await org.inject(
                _envelope("front", b'<Ask xmlns=""><text>b</text></Ask>', thread=first)
            )
            await drain(org)
        assert first != second
        assert seen.envelopes[0].sender == "cli"
        assert [e.thread for e in seen if e.to == "front"].count(first) == 2
        assert second not in (first,)


@pytest.mark.parametrize(
    ("data", "error", "reason"),
    [
        (_envelope("nobody", b'<Ask xmlns=""><text>a</text></Ask>'), DeliveryError, "no_route"),
        (_envelope("front", b'<Echo xmlns=""><text>a</text></Echo>'), DeliveryError, "no_route"),
        (
            _envelope("front", b'<Ask xmlns=""><txt>a</txt></Ask>'),
            SchemaViolation,
            "schema_violation",
        ),
        (b"<message", XmlInputError, "malformed"),
        (b"<other/>", XmlInputError, "not_an_envelope"),
        (b"<x>" + b"a" * 300_000 + b"</x>", XmlInputError, "too_large"),
    ],
    ids=["unknown-target", "wrong-payload", "schema", "malformed", "not-envelope", "too-large"],
)
async def test_inject_raises_what_it_knows_at_once(
    data: bytes, error: type[Exception], reason: str
) -> None:
    async with Organism(two_hop()) as org:
        with pytest.raises(error) as info:
            await org.inject(data)
        assert info.value.reason == reason  # type: ignore[attr-defined]
        assert await org.request("front", Ask(text="still")) == Echo(text="STILL")


async def test_failure_with_nobody_waiting_becomes_a_dead_letter() -> None:
    async def broken(msg: Echo, meta: HandlerMetadata) -> None:
        raise RuntimeError("boom")

    async with Organism([Listener("b", Echo, broken)]) as org:
        thread = await org.send("b", Echo(text="x"))
        await drain(org)
        letters = await org.dead_letters.list()
    assert [(d.conversation, d.reason, d.listener) for d in letters] == [
        (thread, "handler_error", "b")
    ]


async def test_leaving_drains_in_flight_work() -> None:
    done: list[str] = []

    async def slowish(msg: Echo, meta: HandlerMetadata) -> None:
        await anyio.sleep(0.1)
        done.append(msg.text)

    backend = MemoryBackend()
    async with Organism([Listener("s", Echo, slowish)], backend=backend) as org:
        for i in range(5):
            await org.send("s", Echo(text=str(i)))
    assert sorted(done) == ["0", "1", "2", "3", "4"]
    assert await backend.count() == 1


async def test_leaving_cancels_what_does_not_drain_in_time_and_fails_its_requester() -> None:
    async def forever(msg: Echo, meta: HandlerMetadata) -> None:
        await anyio.sleep(60)

    backend = MemoryBackend()
    org = Organism([Listener("f", Echo, forever)], backend=backend, drain_timeout_seconds=0.2)
    outcome: list[BaseException] = []

    async def ask() -> None:
        try:
            await org.request("f", Echo(text="x"), timeout=60)
        except DeliveryError as exc:
            outcome.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group, org:
            group.start_soon(ask)
            await anyio.sleep(0.05)
    assert [e.reason for e in outcome] == ["shutdown"]  # type: ignore[attr-defined]
    assert await backend.count() == 1
    assert not org_tasks(org)


def org_tasks(org: Organism) -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t.get_coro().__qualname__.startswith("StreamPump.")}


async def test_two_organisms_in_one_process_do_not_see_each_other() -> None:
    async with Organism(two_hop(), name="a") as a, Organism(two_hop(), name="b") as b:
        with capture(a) as seen_a, capture(b) as seen_b:
            await a.request("front", Ask(text="1"))
        assert len(seen_a) == 3 and len(seen_b) == 0
        assert a.stats.conversations == 1 and b.stats.conversations == 0
        assert a.registry is not b.registry


async def test_using_a_stopped_organism_says_how_to_start_it() -> None:
    org = Organism(two_hop())
    with pytest.raises(UsageError, match="async with"):
        await org.request("front", Ask(text="x"))


async def test_request_expect_types_the_answer_and_refuses_another_class() -> None:
    async with Organism(two_hop()) as org:
        reply: Echo = await org.request("front", Ask(text="hi"), timeout=5, expect=Echo)
        assert reply == Echo(text="HI")
        with pytest.raises(DeliveryError) as info:
            await org.request("front", Ask(text="hi"), timeout=5, expect=Ask)
    assert info.value.reason == "invalid_response"
    assert "answered a Echo, not the Ask" in info.value.message


@pytest.mark.parametrize("expect", ["Echo", Echo(text="x"), dict], ids=["name", "object", "class"])
async def test_request_refuses_an_expect_that_is_not_a_payload_class_before_sending(
    expect: object,
) -> None:
    """An answer can never be of it: refused before the conversation starts (it once raised
    AttributeError after the conversation had run)."""
    async with Organism(two_hop()) as org:
        with pytest.raises(UsageError, match=r"request\('front'\): expect= takes a @payload"):
            await org.request("front", Ask(text="hi"), timeout=5, expect=expect)  # type: ignore[call-overload]
        assert org.stats.conversations == 0


async def test_a_cpu_bound_listener_without_a_pool_invoker_is_refused_not_run_inline() -> None:
    """Issue 10, item 6: a pump given a cpu_bound listener and no invoker refuses to be built,
    naming the listener, rather than run the handler in the event loop's thread."""
    listeners = [
        Listener("front", Ask, front, peers=("back.end",)),
        Listener("back.end", Echo, back, cpu_bound=True),
    ]
    with pytest.raises(UsageError, match=r"cpu_bound listeners \['back\.end'\] need a process"):
        StreamPump(
            listeners,
            ThreadRegistry(MemoryBackend(), "org"),
            limits=ParseLimits(),
            ingress_limit=8,
            ingress_wait_seconds=1,
            max_hops=100,
        )
