"""``await meta.call(peer, payload)``: a handler awaits a peer's answer (issue 11, items 1-4)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import pytest

from tests.fault_handlers import Work
from xml_pipeline import (
    DeliveryError,
    HandlerMetadata,
    HandlerResponse,
    HandlerResult,
    Listener,
    Organism,
    PayloadTypeError,
    UsageError,
    payload,
)
from xml_pipeline.testing import capture, drain

pytestmark = pytest.mark.anyio


@payload
@dataclass
class Plan:
    expr: str = "1+1"
    key: str = "oslo"


@payload
@dataclass
class Calculate:
    expression: str


@payload
@dataclass
class Total:
    value: int


@payload
@dataclass
class Lookup:
    key: str


@payload
@dataclass
class City:
    name: str


@payload
@dataclass
class PlanAnswer:
    value: int
    found: str
    seen: list[str] = field(default_factory=list)


async def calculator(msg: Calculate, meta: HandlerMetadata) -> HandlerResponse:
    if msg.expression == "boom":
        raise ZeroDivisionError("the calculator broke")
    if msg.expression == "nothing":
        return None  # type: ignore[return-value]
    if msg.expression == "slow":
        await anyio.sleep(30)
    left, right = msg.expression.split("+")
    return HandlerResponse.respond(Total(value=int(left) + int(right)))


async def lookup(msg: Lookup, meta: HandlerMetadata) -> HandlerResponse:
    await anyio.sleep(0.01)  # answers after the calculator: order must not matter
    return HandlerResponse.respond(City(name=msg.key.upper()))


def planner_organism(planner: object, **options: object) -> Organism:
    return Organism([
        Listener("planner", Plan, planner, peers=("calculator", "lookup"), **options),  # type: ignore[arg-type]
        Listener("calculator", Calculate, calculator),
        Listener("lookup", Lookup, lookup),
    ])  # fmt: skip


async def test_a_planner_fans_out_with_gather_and_combines_the_answers() -> None:
    async def plan(msg: Plan, meta: HandlerMetadata) -> HandlerResponse:
        total, city = await asyncio.gather(
            meta.call("calculator", Calculate(expression=msg.expr)),
            meta.call("lookup", Lookup(key=msg.key), timeout=5),
        )
        seen = [f"{h.sender}>{h.to}:{h.payload_tag}" for h in await meta.history()]
        return HandlerResponse.respond(PlanAnswer(value=total.value, found=city.name, seen=seen))

    async with planner_organism(plan) as org:
        with capture(org) as hops:
            reply = await org.request("planner", Plan(expr="2+3"), timeout=5)
        assert (reply.value, reply.found) == (5, "OSLO")
        assert sorted(reply.seen) == sorted([
            "_external>planner:Plan",
            "planner>calculator:Calculate",
            "planner>lookup:Lookup",
            "calculator>planner:Total",
            "lookup>planner:City",
        ])  # fmt: skip
        threads = [e.thread for e in hops]
        assert len(set(threads)) == 3, "each call has a fresh opaque thread id"
        assert [e.sender for e in hops if e.to != "planner"] == ["planner", "planner"]
        assert await org.registry.size() == 1


async def test_a_task_group_inside_the_handler_can_call_too() -> None:
    async def plan(msg: Plan, meta: HandlerMetadata) -> HandlerResponse:
        answers: dict[str, object] = {}

        async def ask(name: str, payload: object) -> None:
            answers[name] = await meta.call(name, payload)

        async with anyio.create_task_group() as group:
            group.start_soon(ask, "calculator", Calculate(expression="4+4"))
            group.start_soon(ask, "lookup", Lookup(key="rome"))
        total, city = answers["calculator"], answers["lookup"]
        return HandlerResponse.respond(PlanAnswer(value=total.value, found=city.name))  # type: ignore[attr-defined]

    async with planner_organism(plan) as org:
        reply = await org.request("planner", Plan(), timeout=5)
    assert (reply.value, reply.found) == (8, "ROME")


async def test_expect_types_the_answer_and_refuses_another_class() -> None:
    async def plan(msg: Plan, meta: HandlerMetadata) -> HandlerResponse:
        total = await meta.call("calculator", Calculate(expression="1+2"), expect=Total)
        try:
            await meta.call("lookup", Lookup(key="x"), expect=Total)
        except DeliveryError as err:
            return HandlerResponse.respond(PlanAnswer(value=total.value, found=str(err)))
        raise AssertionError("an answer of the wrong class was taken")

    async with planner_organism(plan) as org:
        reply = await org.request("planner", Plan(), timeout=5, expect=PlanAnswer)
    assert reply.value == 3
    assert "invalid_response" in reply.found and "answered a City, not the Total" in reply.found


@payload
@dataclass
class Count:
    n: int


async def test_a_call_cycle_through_single_slot_listeners_completes() -> None:
    """planner -> adder -> planner ... with max_concurrency 1 each: a handler waiting in
    meta.call holds no slot, so the cycle does not deadlock."""

    async def planner(msg: Count, meta: HandlerMetadata) -> HandlerResponse:
        if msg.n == 0:
            return HandlerResponse.respond(Count(n=0))
        answer = await meta.call("adder", Count(n=msg.n))
        return HandlerResponse.respond(Count(n=answer.n + 1))

    async def adder(msg: Count, meta: HandlerMetadata) -> HandlerResponse:
        answer = await meta.call("planner", Count(n=msg.n - 1))
        return HandlerResponse.respond(Count(n=answer.n + 1))

    listeners = [
        Listener("planner", Count, planner, peers=("adder",), max_concurrency=1),
        Listener("adder", Count, adder, peers=("planner",), max_concurrency=1),
    ]
    async with Organism(listeners) as org:
        with anyio.fail_after(10):
            replies = await asyncio.gather(
                *(org.request("planner", Count(n=5), timeout=10) for _ in range(20))
            )
        assert replies == [Count(n=10)] * 20
        assert await org.registry.size() == 1


async def test_a_callee_failure_raises_in_the_handler_which_may_recover() -> None:
    async def plan(msg: Plan, meta: HandlerMetadata) -> HandlerResponse:
        try:
            total = await meta.call("calculator", Calculate(expression=msg.expr))
        except DeliveryError as exc:
            return HandlerResponse.respond(
                PlanAnswer(value=-1, found=f"{exc.reason}:{exc.listener}")
            )
        return HandlerResponse.respond(PlanAnswer(value=total.value, found=""))

    async with planner_organism(plan) as org:
        reply = await org.request("planner", Plan(expr="boom"), timeout=5)
        assert reply == PlanAnswer(value=-1, found="handler_error:calculator")
        reply = await org.request("planner", Plan(expr="nothing"), timeout=5)
        assert reply == PlanAnswer(value=-1, found="no_answer:calculator")


async def test_an_uncaught_call_failure_is_the_handlers_own_error() -> None:
    async def plan(msg: Plan, meta: HandlerMetadata) -> HandlerResponse:
        await meta.call("calculator", Calculate(expression="boom"))
        return HandlerResponse.respond(PlanAnswer(value=0, found=""))

    async with planner_organism(plan) as org:
        with pytest.raises(DeliveryError) as info:
            await org.request("planner", Plan(), timeout=5)
    assert (info.value.reason, info.value.listener) == ("handler_error", "planner")
    assert "DeliveryError" in info.value.message and "calculator broke" in info.value.message


@pytest.mark.parametrize(
    ("call", "error", "reason", "words"),
    [
        (lambda meta: meta.call("calculatr", Calculate(expression="1+1")), DeliveryError,
         "no_route", "did you mean 'calculator'"),
        (lambda meta: meta.call("Calculator", Calculate(expression="1+1")), DeliveryError,
         "no_route", "no listener named 'Calculator'; did you mean 'calculator'?"),
        (lambda meta: meta.call(None, Calculate(expression="1+1")), UsageError, None,
         "meta.call from 'planner': the peer must be a listener name (str), not None"),
        (lambda meta: meta.call("planner", Plan()), DeliveryError, "peer_denied",
         "not among its peers"),
        (lambda meta: meta.call("calculator", {"expression": "1+1"}), PayloadTypeError, None,
         "needs a @payload object"),
        (lambda meta: meta.call("calculator", Lookup(key="x")), DeliveryError, "no_route",
         "accepts <Calculate>, not <Lookup>"),
        (lambda meta: meta.call("calculator", Calculate(expression=3)), DeliveryError,
         "schema_violation", "is not a valid string"),
        (lambda meta: meta.call("calculator", Calculate("1+1"), timeout="5"), UsageError, None,
         "meta.call('calculator') from 'planner': timeout must be a number of seconds"),
        (lambda meta: meta.call("calculator", Calculate("1+1"), timeout=0), UsageError, None,
         "timeout must be a finite number of seconds above 0, not 0"),
        (lambda meta: meta.call("calculator", Calculate("1+1"), timeout=-1.0), UsageError,
         None, "above 0, not -1.0"),
        (lambda meta: meta.call("calculator", Calculate("1+1"), expect="Total"), UsageError,
         None, "meta.call('calculator') from 'planner': expect= takes a @payload class"),
        (lambda meta: meta.call("calculator", Calculate("1+1"), expect=Total(1)), UsageError,
         None, "expect= takes a @payload class (like expect=Total), not Total(value=1)"),
        (lambda meta: meta.call("calculator", Calculate("1+1"), timeout=float("nan")),
         UsageError, None, "above 0, not nan"),
    ],
    ids=["unknown-peer", "other-case", "peer-not-a-name", "not-a-peer", "not-a-payload",
         "wrong-class", "schema",
         "timeout-text", "timeout-zero", "timeout-negative", "timeout-nan", "expect-name",
         "expect-object"],
)  # fmt: skip
async def test_a_bad_call_is_refused_at_the_call_with_its_reason(
    call: object, error: type[Exception], reason: str | None, words: str
) -> None:
    """Refused before anything is sent (a bad timeout once left the call in flight, unawaited,
    and raised a bare TypeError; 0, -1 and nan timed out at once; a bad expect= raised
    AttributeError once the answer came; a peer that is not a str raised TypeError)."""
    raised: list[BaseException] = []

    async def plan(msg: Plan, meta: HandlerMetadata) -> HandlerResponse:
        try:
            await call(meta)  # type: ignore[operator]
        except Exception as exc:
            raised.append(exc)
        return HandlerResponse.respond(PlanAnswer(value=0, found=""))

    async with planner_organism(plan) as org:
        await org.request("planner", Plan(), timeout=5)
    assert len(raised) == 1 and isinstance(raised[0], error), raised
    assert words in str(raised[0])
    if reason is not None:
        assert raised[0].reason == reason  # type: ignore[attr-defined]


async def test_a_call_after_the_handler_returned_is_a_usage_error() -> None:
    kept: list[HandlerMetadata] = []

    async def plan(msg: Plan, meta: HandlerMetadata) -> HandlerResponse:
        kept.append(meta)
        return HandlerResponse.respond(PlanAnswer(value=0, found=""))

    async with planner_organism(plan) as org:
        conversation = await org.send("planner", Plan())
        async for _ in org.outcomes():
            break
        with pytest.raises(UsageError, match="its handler returned") as info:
            await kept[0].call("calculator", Calculate(expression="1+1"))
        assert f"(conversation {conversation})" in str(info.value)
        await drain(org)
        assert await org.registry.size() == 1, "nothing was sent"


async def test_a_call_from_a_handler_its_ended_conversation_is_stopping_is_a_usage_error() -> None:
    """A handler that catches the cancellation of its ended conversation and calls again is
    told the conversation ended, and which."""
    raised: list[Exception] = []

    async def plan(msg: Plan, meta: HandlerMetadata) -> HandlerResponse:
        try:
            await meta.call("calculator", Calculate(expression="slow"))
        except asyncio.CancelledError:
            try:
                await meta.call("calculator", Calculate(expression="1+1"))
            except Exception as exc:
                raised.append(exc)
            raise
        return HandlerResponse.respond(PlanAnswer(value=0, found=""))

    async with planner_organism(plan) as org:
        conversation = await org.send("planner", Plan())
        await _until(lambda: bool(org.runs(listener="calculator")))
        await org.cancel_conversation(conversation)
        await _until(lambda: bool(raised))
    assert isinstance(raised[0], UsageError)
    assert f"the conversation has ended (conversation {conversation})" in str(raised[0])


async def _until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():
            await anyio.sleep(0.01)


async def test_a_call_timeout_raises_and_a_late_answer_is_dropped() -> None:
    async def plan(msg: Plan, meta: HandlerMetadata) -> HandlerResponse:
        try:
            await meta.call("lookup", Lookup(key="far"), timeout=0.001)
        except DeliveryError as exc:
            await anyio.sleep(0.1)  # the conversation goes on: the late answer arrives meanwhile
            return HandlerResponse.respond(PlanAnswer(value=0, found=str(exc.reason)))
        return HandlerResponse.respond(PlanAnswer(value=1, found="in time"))

    async with planner_organism(plan) as org:
        reply = await org.request("planner", Plan(), timeout=5)
        assert reply.found == "timeout"
        assert org.stats.late_replies == 1, "the answer after the call's timeout was dropped"
        assert await org.registry.size() == 1


async def test_the_handlers_own_timeout_runs_while_it_waits() -> None:
    async def plan(msg: Plan, meta: HandlerMetadata) -> HandlerResponse:
        await meta.call("calculator", Calculate(expression="slow"))
        return HandlerResponse.respond(PlanAnswer(value=0, found=""))

    async with planner_organism(plan, timeout_seconds=0.2) as org:
        with anyio.fail_after(5), pytest.raises(DeliveryError) as info:
            await org.request("planner", Plan(), timeout=30)
    assert (info.value.reason, info.value.listener) == ("timeout", "planner")


async def test_a_conversation_that_ends_cancels_the_handler_waiting_in_it() -> None:
    stopped = anyio.Event()

    async def plan(msg: Plan, meta: HandlerMetadata) -> HandlerResponse:
        try:
            await meta.call("calculator", Calculate(expression="slow"))
        finally:
            stopped.set()
        return HandlerResponse.respond(PlanAnswer(value=0, found=""))

    async with planner_organism(plan) as org:
        with pytest.raises(DeliveryError) as info:
            await org.request("planner", Plan(), timeout=0.2)
        assert info.value.reason == "timeout"
        with anyio.fail_after(5):
            await stopped.wait()
            await drain(org)
        assert await org.registry.size() == 1


@payload
@dataclass
class Go:
    mode: str = ""


@pytest.mark.parametrize("end", ["answer", "failure", "timeout", "cancel"])
async def test_every_way_a_conversation_ends_cancels_the_handlers_waiting_in_it(end: str) -> None:
    """A fan-out's branch waits in meta.call, another is still running, when a third answers
    or fails (or the requester times out, or someone cancels): both are cancelled, and the
    call they made ends too."""
    stopped: list[str] = []

    async def fan(msg: Go | Total, meta: HandlerMetadata) -> HandlerResult:
        if isinstance(msg, Total):  # the calculator's answer: it ends the conversation
            return HandlerResponse.respond(PlanAnswer(value=msg.value, found="calculator"))
        calls = [HandlerResponse(Go(), to="waiter"), HandlerResponse(Go(), to="runner")]
        if msg.mode in ("answer", "failure"):
            calls.append(HandlerResponse(Calculate("1+1" if msg.mode == "answer" else "boom"),
                                         to="calculator"))  # fmt: skip
        return calls

    async def waiter(msg: Go, meta: HandlerMetadata) -> HandlerResponse:
        try:
            await meta.call("calculator", Calculate(expression="slow"))
        except asyncio.CancelledError:
            stopped.append("waiter")
            raise
        return HandlerResponse.respond(PlanAnswer(value=0, found="waiter"))

    async def runner(msg: Go, meta: HandlerMetadata) -> HandlerResponse:
        try:
            await anyio.sleep(30)
        except asyncio.CancelledError:
            stopped.append("runner")
            raise
        return HandlerResponse.respond(PlanAnswer(value=0, found="runner"))

    listeners = [
        Listener("fan", Go, fan, peers=("waiter", "runner", "calculator")),  # type: ignore[arg-type]
        Listener("waiter", Go, waiter, peers=("calculator",)),
        Listener("runner", Go, runner),
        Listener("calculator", Calculate, calculator),
    ]
    async with Organism(listeners) as org:
        if end == "answer":
            assert await org.request("fan", Go(end), timeout=5) == PlanAnswer(2, "calculator")
        elif end == "cancel":
            conversation = await org.send("fan", Go(end))
            await _until(lambda: len(org.runs(listener="calculator")) == 1)
            await org.cancel_conversation(conversation)
        elif end == "timeout":
            with pytest.raises(DeliveryError, match="timeout"):
                await org.request("fan", Go(end), timeout=0.3)
        elif end == "failure":
            with pytest.raises(DeliveryError) as info:
                await org.request("fan", Go(end), timeout=5)
            assert info.value.reason == "handler_error"
        await _until(lambda: sorted(stopped) == ["runner", "waiter"])
        with anyio.fail_after(5):
            await drain(org)
        assert await org.registry.size() == 1, "the waiting call ended with its conversation"


async def test_the_two_styles_mix_a_call_awaited_then_a_call_returned() -> None:
    async def plan(msg: Plan | City, meta: HandlerMetadata) -> HandlerResponse:
        if isinstance(msg, City):  # the returned call's answer re-invokes the handler
            return HandlerResponse.respond(PlanAnswer(value=0, found=msg.name))
        total = await meta.call("calculator", Calculate(expression=msg.expr))
        return HandlerResponse(Lookup(key=f"k{total.value}"), to="lookup")

    async with planner_organism(plan) as org:
        reply = await org.request("planner", Plan(expr="3+4"), timeout=5)
    assert reply == PlanAnswer(value=0, found="K7")


async def test_a_cpu_bound_handler_is_told_meta_call_is_not_for_it() -> None:
    from tests.fault_handlers import calls_a_peer

    listeners = [
        Listener("cpu", Work, calls_a_peer, cpu_bound=True, peers=("other",)),
        Listener("other", Work, calls_a_peer),
    ]
    async with Organism(listeners, process_pool={"workers": 1}) as org:
        with pytest.raises(DeliveryError) as info:
            await org.request("cpu", Work(), timeout=20)
    assert info.value.reason == "handler_error"
    assert "cpu_bound handler runs in a worker process" in info.value.message


async def test_no_call_is_left_waiting_once_its_conversation_ended() -> None:
    """A call orphaned by its handler (failed in a gather, or fired and forgotten) ends with
    the conversation instead of waiting until the organism stops."""
    finished: list[str] = []

    async def plan(msg: Plan, meta: HandlerMetadata) -> HandlerResponse:
        async def tracked(name: str, payload: object) -> object:
            try:
                return await meta.call(name, payload)
            finally:
                finished.append(name)

        if msg.key == "forget":
            forgotten = asyncio.get_running_loop().create_task(
                tracked("calculator", Calculate("slow"))
            )
            await asyncio.sleep(0.05)  # the call is made, then the handler answers
            assert not forgotten.done()
            return HandlerResponse.respond(PlanAnswer(value=0, found="forgot"))
        await asyncio.gather(
            tracked("calculator", Calculate(expression="slow")),
            tracked("calculator", Calculate(expression="boom")),
        )
        raise AssertionError("the failing call should have raised")

    async with planner_organism(plan) as org:
        with pytest.raises(DeliveryError):
            await org.request("planner", Plan(), timeout=5)
        await org.request("planner", Plan(key="forget"), timeout=5)
        with anyio.fail_after(5):
            while len(finished) < 3:
                await anyio.sleep(0.01)
        await org.wait_idle()
    assert sorted(finished) == ["calculator"] * 3
