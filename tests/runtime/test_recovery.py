"""Recovery (issue 12): retries with backoff, rollback of a failed attempt, compensation,
circuit breakers and the recovery status; real organisms, real failures."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from tests.worker_handlers import (
    Job,
    Result,
    fails_first_attempt,
    looper,
    raises_key_error,
    retry_later_first,
)
from xml_pipeline import (
    BackoffSettings,
    CircuitSettings,
    DeliveryError,
    HandlerMetadata,
    HandlerResponse,
    Listener,
    Organism,
    PermanentError,
    ProcessPoolConfig,
    RetryLater,
    RetrySettings,
    payload,
)

pytestmark = pytest.mark.anyio

FAST = BackoffSettings(initial_seconds=0, max_seconds=0, jitter="none")


@payload
@dataclass
class Task:
    name: str = ""
    fail_times: int = 0


@payload
@dataclass
class Done:
    name: str
    attempt: int = 1
    seen: list[str] = field(default_factory=list)


def retrying(handler: Any, attempts: int = 3, **retry: Any) -> Listener:
    settings = RetrySettings(attempts=attempts, backoff=retry.pop("backoff", FAST), **retry)
    return Listener("worker", Task, handler, retry=settings, timeout_seconds=5)


async def test_a_handler_that_fails_twice_is_answered_on_its_third_attempt() -> None:
    async def flaky(msg: Task, meta: HandlerMetadata) -> HandlerResponse:
        if meta.attempt <= msg.fail_times:
            raise ConnectionError(f"attempt {meta.attempt} failed")
        return HandlerResponse.respond(Done(name=msg.name, attempt=meta.attempt))

    async with Organism([retrying(flaky)]) as org:
        answer = await org.request("worker", Task(name="a", fail_times=2), timeout=5)
        status = org.recovery_status()["worker"]
        assert answer == Done(name="a", attempt=3)
        assert (status.attempts, status.retries, status.recovered, status.exhausted) == (3, 2, 1, 0)
        assert status.last_error is not None and "attempt 2 failed" in status.last_error
        assert org.stats.retries == 2 and org.stats.answered == 1


async def test_one_that_always_fails_is_exhausted_and_says_after_how_many_attempts() -> None:
    async def broken(msg: Task, meta: HandlerMetadata) -> HandlerResponse:
        raise ConnectionError("down")

    async with Organism([retrying(broken, attempts=4)]) as org:
        with pytest.raises(DeliveryError) as failed:
            await org.request("worker", Task(), timeout=5)
        assert failed.value.reason == "handler_error"
        assert "(after 4 attempts)" in failed.value.message
        status = org.recovery_status()["worker"]
        assert (status.attempts, status.retries, status.exhausted) == (4, 3, 1)


@pytest.mark.parametrize(
    ("error", "runs"),
    [
        (ValueError("bad input"), 1),  # in never: final at once
        (KeyError("a subclass of LookupError, also in never"), 1),
        (PermanentError("the record is gone"), 1),
        (ConnectionError("retried: not in never"), 3),
    ],
)
async def test_never_types_and_permanent_errors_are_not_retried(
    error: Exception, runs: int
) -> None:
    seen: list[int] = []

    async def failing(msg: Task, meta: HandlerMetadata) -> HandlerResponse:
        seen.append(meta.attempt)
        raise error

    listener = retrying(failing, never=(ValueError, "builtins.LookupError"))
    async with Organism([listener]) as org:
        with pytest.raises(DeliveryError):
            await org.request("worker", Task(), timeout=5)
    assert seen == list(range(1, runs + 1))


async def test_only_the_reasons_listed_in_on_are_retried() -> None:
    seen: list[int] = []

    async def wrong_answer(msg: Task, meta: HandlerMetadata) -> HandlerResponse:
        seen.append(meta.attempt)
        return HandlerResponse(Task(), to="nobody")  # no_route: not in the default `on`

    async with Organism([retrying(wrong_answer)]) as org:
        with pytest.raises(DeliveryError) as failed:
            await org.request("worker", Task(), timeout=5)
    assert failed.value.reason == "no_route" and seen == [1]


async def test_retry_later_sets_the_delay_and_the_deadline_bounds_it() -> None:
    seen: list[int] = []

    async def busy(msg: Task, meta: HandlerMetadata) -> HandlerResponse:
        seen.append(meta.attempt)
        if meta.attempt == 1:
            raise RetryLater("rate limited", after_seconds=0.01 if msg.name == "soon" else 60)
        return HandlerResponse.respond(Done(name=msg.name, attempt=meta.attempt))

    async with Organism([retrying(busy, on=("timeout",))]) as org:
        assert (await org.request("worker", Task(name="soon"), timeout=5)).attempt == 2
        seen.clear()
        # a retry due after the request's deadline is not started: the failure comes at once,
        # with its own reason, not as the request's timeout
        with pytest.raises(DeliveryError) as failed:
            await org.request("worker", Task(name="later"), timeout=2)
        assert failed.value.reason == "handler_error"
        assert "could not start before the request's deadline" in failed.value.message
        assert seen == [1]
        assert org.recovery_status()["worker"].exhausted == 1


async def test_a_timed_out_attempt_is_retried() -> None:
    async def slow_first(msg: Task, meta: HandlerMetadata) -> HandlerResponse:
        if meta.attempt == 1:
            await anyio.sleep(30)
        return HandlerResponse.respond(Done(name="x", attempt=meta.attempt))

    settings = RetrySettings(attempts=2, backoff=FAST)
    listener = Listener("worker", Task, slow_first, retry=settings, timeout_seconds=0.2)
    async with Organism([listener]) as org:
        assert (await org.request("worker", Task(), timeout=5)).attempt == 2
        assert org.stats.timeouts == 1


async def test_a_cpu_bound_handler_is_retried_and_sees_its_attempt() -> None:
    settings = RetrySettings(attempts=2, backoff=FAST)
    listener = Listener("crunch", Job, fails_first_attempt, cpu_bound=True, retry=settings)
    async with Organism([listener], process_pool=ProcessPoolConfig(workers=1)) as org:
        answer = await org.request("crunch", Job(), timeout=30)
    assert isinstance(answer, Result) and answer.value == 2


async def test_a_cpu_bound_retry_later_sets_the_delay_as_in_process() -> None:
    """The worker sends RetryLater's delay back: it replaces the policy's backoff (60 s here,
    which would not fit the request's deadline) and stays bounded by that deadline."""
    slow_backoff = BackoffSettings(initial_seconds=60, max_seconds=60, jitter="none")
    settings = RetrySettings(attempts=2, backoff=slow_backoff)
    listener = Listener("crunch", Job, retry_later_first, cpu_bound=True, retry=settings)
    async with Organism([listener], process_pool=ProcessPoolConfig(workers=1)) as org:
        answer = await org.request("crunch", Job(n=10), timeout=20)
        assert isinstance(answer, Result) and answer.value == 2
        with pytest.raises(DeliveryError) as failed:  # asks for 60 s: past the deadline
            await org.request("crunch", Job(n=60_000), timeout=20)
        assert "could not start before the request's deadline" in failed.value.message


async def test_never_matches_a_base_class_of_what_a_cpu_bound_handler_raised() -> None:
    settings = RetrySettings(attempts=3, backoff=FAST, never=("builtins.LookupError",))
    listener = Listener("crunch", Job, raises_key_error, cpu_bound=True, retry=settings)
    async with Organism([listener], process_pool=ProcessPoolConfig(workers=1)) as org:
        with pytest.raises(DeliveryError) as failed:
            await org.request("crunch", Job(), timeout=20)
        assert "attempt 1" in failed.value.message
        assert org.recovery_status()["crunch"].attempts == 1


# -- rollback of a failed attempt -------------------------------------------------------------


@payload
@dataclass
class Step:
    n: int


async def test_calls_a_failed_attempt_left_in_flight_are_withdrawn_and_their_work_stopped() -> None:
    stopped: list[int] = []
    started: list[int] = []

    async def planner(msg: Task, meta: HandlerMetadata) -> HandlerResponse:
        if meta.attempt == 1:  # one call fails at once while the other is still running
            await asyncio.gather(meta.call("slow", Step(n=1)), meta.call("fails", Step(n=2)))
        return HandlerResponse.respond(Done(name="ok", attempt=meta.attempt))

    async def slow(msg: Step, meta: HandlerMetadata) -> HandlerResponse:
        started.append(msg.n)
        try:
            await anyio.sleep(30)
        except BaseException:
            stopped.append(msg.n)
            raise
        return HandlerResponse.respond(msg)

    async def fails(msg: Step, meta: HandlerMetadata) -> HandlerResponse:
        raise RuntimeError("the second call fails")

    org = Organism([
        Listener("planner", Task, planner, peers=("slow", "fails"),
                 retry=RetrySettings(attempts=2, backoff=FAST)),
        Listener("slow", Step, slow),
        Listener("fails", Step, fails),
    ])  # fmt: skip
    async with org:
        answer = await org.request("planner", Task(), timeout=5)
        assert answer.attempt == 2
        with anyio.fail_after(5):
            while not stopped:
                await anyio.sleep(0.01)
        assert started == stopped == [1]
        await org.wait_idle()
        assert await org.registry.size() == 1  # the withdrawn call's thread is gone too
        assert org.listeners and org.stats.late_replies == 0


async def test_history_leaves_out_what_a_rolled_back_attempt_did_answered_nested_or_in_flight() -> (
    None
):
    """The retry reads the conversation as it was before the failed attempt: the calls that
    attempt made (answered, in flight, and the calls made under them) are not current."""
    views: list[list[str]] = []

    def seen(history: list[Any]) -> list[str]:
        return [f"{h.sender}>{h.to}:{h.payload_tag}" for h in history]

    async def planner(msg: Task, meta: HandlerMetadata) -> HandlerResponse:
        if meta.attempt == 1:
            await meta.call("middle", Step(n=0))  # answered, with a nested call under it
            await asyncio.gather(meta.call("slow", Step(n=1)), meta.call("fails", Step(n=2)))
        await meta.call("middle", Step(n=3))
        views.append(seen(await meta.history()))
        return HandlerResponse.respond(Done(name="ok", attempt=meta.attempt))

    async def middle(msg: Step, meta: HandlerMetadata) -> HandlerResponse:
        await meta.call("leaf", msg)
        return HandlerResponse.respond(msg)

    async def leaf(msg: Step, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse.respond(msg)

    async def slow(msg: Step, meta: HandlerMetadata) -> HandlerResponse:
        await anyio.sleep(30)
        return HandlerResponse.respond(msg)

    async def fails(msg: Step, meta: HandlerMetadata) -> HandlerResponse:
        raise RuntimeError("the call fails")

    org = Organism([
        Listener("planner", Task, planner, peers=("middle", "slow", "fails"),
                 retry=RetrySettings(attempts=2, backoff=FAST)),
        Listener("middle", Step, middle, peers=("leaf",)),
        Listener("leaf", Step, leaf),
        Listener("slow", Step, slow),
        Listener("fails", Step, fails),
    ])  # fmt: skip
    async with org:
        assert (await org.request("planner", Task(), timeout=5)).attempt == 2
    call, answer = ["planner>middle:Step", "middle>leaf:Step"], ["leaf>middle:Step"]
    assert views == [["_external>planner:Task", *call, *answer, "middle>planner:Step"]]


async def test_a_failed_callee_attempt_is_rolled_back_for_its_caller_too() -> None:
    """A callee whose own attempt fails and is retried: its caller's later history shows
    the callee's successful attempt only."""
    views: list[list[str]] = []

    async def planner(msg: Task, meta: HandlerMetadata) -> HandlerResponse:
        await meta.call("middle", Step(n=1))
        views.append([f"{h.sender}>{h.to}" for h in await meta.history()])
        return HandlerResponse.respond(Done(name="ok"))

    async def middle(msg: Step, meta: HandlerMetadata) -> HandlerResponse:
        await meta.call("leaf", Step(n=meta.attempt))
        if meta.attempt == 1:
            raise ConnectionError("after its call was answered")
        return HandlerResponse.respond(msg)

    async def leaf(msg: Step, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse.respond(msg)

    org = Organism([
        Listener("planner", Task, planner, peers=("middle",)),
        Listener("middle", Step, middle, peers=("leaf",),
                 retry=RetrySettings(attempts=2, backoff=FAST)),
        Listener("leaf", Step, leaf),
    ])  # fmt: skip
    async with org:
        await org.request("planner", Task(), timeout=5)
    assert views == [
        ["_external>planner", "planner>middle", "middle>leaf", "leaf>middle", "middle>planner"]
    ]


async def test_a_cpu_bound_handler_reads_history_without_a_rolled_back_attempt() -> None:
    """A worker process gets the current history too (the pool path reads it apart)."""

    async def planner(msg: Task, meta: HandlerMetadata) -> HandlerResponse:
        if meta.attempt == 1:
            await meta.call("echo", Step(n=1))
            raise ConnectionError("after its call was answered")
        seen = await meta.call("looper", Job())
        return HandlerResponse.respond(Done(name="ok", seen=seen.tags))

    async def echo(msg: Step, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse.respond(msg)

    org = Organism(
        [
            Listener("planner", Task, planner, peers=("echo", "looper"),
                     retry=RetrySettings(attempts=2, backoff=FAST)),
            Listener("echo", Step, echo),
            Listener("looper", Job, looper, cpu_bound=True),
        ],
        process_pool=ProcessPoolConfig(workers=1),
    )  # fmt: skip
    async with org:
        answer = await org.request("planner", Task(), timeout=30)
    assert answer.seen == ["_external>planner:Task", "planner>looper:Job"]


async def test_ledger_every_conversation_answered_once_and_no_failed_attempts_output_routed() -> (
    None
):
    """10,000 conversations, each hop failing once at random (20%) after producing outputs:
    every conversation is answered exactly once and the ledger sees only the outputs of the
    attempts that succeeded."""
    rng = random.Random(12)
    fail_once = {n for n in range(10_000) if rng.random() < 0.2}
    ledger: list[int] = []
    answers: dict[int, int] = {}

    async def front(msg: Step | Done, meta: HandlerMetadata) -> Any:
        if isinstance(msg, Done):
            return HandlerResponse.respond(msg)
        record = HandlerResponse(Step(n=msg.n), to="ledger")
        if msg.n in fail_once and meta.attempt == 1:
            # a fan-out whose second output is refused: the first must not be routed either
            return [record, HandlerResponse(Step(n=msg.n), to="nobody")]
        return record

    async def book(msg: Step, meta: HandlerMetadata) -> HandlerResponse:
        ledger.append(msg.n)
        return HandlerResponse.respond(Done(name=str(msg.n)))

    retry = RetrySettings(attempts=2, backoff=FAST, on=("no_route",))
    org = Organism(
        [
            Listener("front", Step, front, peers=("ledger",), retry=retry),
            Listener("ledger", Step, book),
        ],
        ingress_limit=2000,
    )

    limit = anyio.CapacityLimiter(500)  # in flight at once, below the ingress limit

    async def one(n: int) -> None:
        async with limit:
            answer = await org.request("front", Step(n=n), timeout=60)
        answers[n] = answers.get(n, 0) + int(answer.name == str(n))

    async with org, anyio.create_task_group() as tg:
        for n in range(10_000):
            tg.start_soon(one, n)
    assert answers == dict.fromkeys(range(10_000), 1)
    assert sorted(ledger) == list(range(10_000)), "each booked once: no failed output routed"
    assert org.stats.retries == len(fail_once) and org.stats.answered == 10_000


# -- compensation -----------------------------------------------------------------------------


@payload
@dataclass
class Booking:
    what: str


async def test_a_failed_conversation_compensates_what_was_answered_newest_first_once() -> None:
    undone: list[str] = []

    async def trip(msg: Task, meta: HandlerMetadata) -> HandlerResponse:
        await meta.call("hotel", Booking(what="hotel"))
        await meta.call("flight", Booking(what="flight"))
        raise RuntimeError("the payment failed")

    async def book(msg: Booking, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse.respond(Booking(what=f"{msg.what} booked"))

    async def cancel(answer: Booking, meta: HandlerMetadata) -> None:
        undone.append(f"{meta.own_name}: {answer.what}")

    org = Organism([
        Listener("trip", Task, trip, peers=("hotel", "flight")),
        Listener("hotel", Booking, book, compensate=cancel),
        Listener("flight", Booking, book, compensate=cancel),
    ])  # fmt: skip
    async with org:
        with pytest.raises(DeliveryError):
            await org.request("trip", Task(), timeout=5)
        with anyio.fail_after(5):
            while len(undone) < 2:
                await anyio.sleep(0.01)
        status = org.recovery_status()
    assert undone == ["flight: flight booked", "hotel: hotel booked"]
    assert status["hotel"].compensations == status["flight"].compensations == 1


async def test_an_answered_conversation_compensates_nothing_and_a_failing_compensation_is_a_dead_letter() -> (  # noqa: E501
    None
):
    undone: list[str] = []

    async def trip(msg: Task, meta: HandlerMetadata) -> HandlerResponse:
        booked = await meta.call("hotel", Booking(what="hotel"))
        if msg.name == "fail":
            raise RuntimeError("the payment failed")
        return HandlerResponse.respond(Done(name=booked.what))

    async def book(msg: Booking, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse.respond(Booking(what="booked"))

    async def cancel(answer: Booking, meta: HandlerMetadata) -> None:
        undone.append(answer.what)
        raise OSError("the hotel's API is down")

    org = Organism([
        Listener("trip", Task, trip, peers=("hotel",)),
        Listener("hotel", Booking, book, compensate=cancel),
    ])  # fmt: skip
    async with org:
        await org.request("trip", Task(name="ok"), timeout=5)
        assert undone == []
        failed_id = await org.send("trip", Task(name="fail"))
        with anyio.fail_after(5):
            while org.recovery_status()["hotel"].compensations_failed == 0:
                await anyio.sleep(0.01)
        letters = await org.dead_letters.list(reason="compensation_failed")
        [refused] = await org.dead_letters.replay([d.id for d in letters])
        assert not refused.ok and "undo it by hand" in str(refused.error)
        assert await org.dead_letters.list(reason="compensation_failed") == letters
    assert undone == ["booked"]
    assert len(letters) == 1 and letters[0].conversation == failed_id
    assert "OSError: the hotel's API is down" in letters[0].message
    # what was not undone, for a person: the hotel's answer
    assert (letters[0].listener, letters[0].chain) == ("hotel", ("hotel",))
    assert b"<to>hotel</to>" in letters[0].envelope
    assert b"<Booking" in letters[0].envelope and b"<what>booked</what>" in letters[0].envelope


# -- circuit breaker --------------------------------------------------------------------------


async def test_the_circuit_opens_fails_fast_probes_and_closes() -> None:
    healthy = False
    runs = 0

    async def peer(msg: Task, meta: HandlerMetadata) -> HandlerResponse:
        nonlocal runs
        runs += 1
        if not healthy:
            raise ConnectionError("down")
        return HandlerResponse.respond(Done(name="up"))

    circuit = CircuitSettings(failures=3, reset_seconds=0.3)
    async with Organism([Listener("peer", Task, peer, circuit=circuit)]) as org:
        for _ in range(3):
            with pytest.raises(DeliveryError) as failed:
                await org.request("peer", Task(), timeout=5)
            assert failed.value.reason == "handler_error"
        assert org.recovery_status()["peer"].circuit == "open"
        with pytest.raises(DeliveryError) as fast:
            await org.request("peer", Task(), timeout=5)
        assert fast.value.reason == "circuit_open" and runs == 3, "failed without running"
        assert "lets a probe through in" in fast.value.message
        await anyio.sleep(0.35)
        with pytest.raises(DeliveryError) as probe:  # the probe fails: open again
            await org.request("peer", Task(), timeout=5)
        assert probe.value.reason == "handler_error" and runs == 4
        assert org.recovery_status()["peer"].circuit == "open"
        healthy = True
        await anyio.sleep(0.35)
        assert await org.request("peer", Task(), timeout=5) == Done(name="up")
        status = org.recovery_status()["peer"]
        assert status.circuit == "closed" and status.circuit_rejections == 1


async def test_a_half_open_circuit_lets_one_probe_through_at_a_time() -> None:
    gate = anyio.Event()

    async def peer(msg: Task, meta: HandlerMetadata) -> HandlerResponse:
        if msg.name == "break":
            raise ConnectionError("down")
        await gate.wait()
        return HandlerResponse.respond(Done(name="up"))

    circuit = CircuitSettings(failures=1, reset_seconds=0.1)
    async with Organism([Listener("peer", Task, peer, circuit=circuit)]) as org:
        with pytest.raises(DeliveryError):
            await org.request("peer", Task(name="break"), timeout=5)
        await anyio.sleep(0.15)
        answers: list[object] = []

        async def probe() -> None:
            answers.append(await org.request("peer", Task(), timeout=5))

        async with anyio.create_task_group() as tg:
            tg.start_soon(probe)
            await anyio.sleep(0.05)
            with pytest.raises(DeliveryError) as second:
                await org.request("peer", Task(), timeout=5)
            assert second.value.reason == "circuit_open"
            gate.set()
        assert answers == [Done(name="up")]
        assert org.recovery_status()["peer"].circuit == "closed"
