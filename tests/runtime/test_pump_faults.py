"""Correctness under cancellation and failure (issue 9): each test pins one kind of fault.

Every cancel the pump makes is balanced, a conversation that ends stops its running work and
drops its backlog, every failure of user code reaches the caller at once, one deadline covers a
whole request, and nothing a cut-short call created is left in the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from tests import fault_handlers
from tests.fault_handlers import Done, Work, fails, sleepy
from xml_pipeline import (
    BackendError,
    DeliveryError,
    ErrorReport,
    HandlerMetadata,
    HandlerResponse,
    Listener,
    Organism,
    PayloadTypeError,
    Reason,
    UsageError,
    XmlPipelineError,
    payload,
    payload_spec,
)
from xml_pipeline._config import BackendConfig
from xml_pipeline.backends.base import PruneResult, ThreadRecord
from xml_pipeline.backends.memory import MemoryBackend
from xml_pipeline.testing import drain

pytestmark = pytest.mark.anyio


@payload
@dataclass
class Msg:
    text: str = ""
    n: int = 0


def pump_tasks() -> list[asyncio.Task[object]]:
    """Tasks of any pump still alive."""
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_coro().__qualname__.startswith("StreamPump.") and not t.done()  # type: ignore[union-attr]
    ]


async def eventually(condition: object, seconds: float = 5.0) -> None:
    """Wait until ``condition()`` is true (a hang guard, not a speed assertion)."""
    with anyio.fail_after(seconds):
        while not condition():  # type: ignore[operator]
            await anyio.sleep(0.01)


# -- a finished conversation stops its running work (item 3) ---------------------------------


async def test_a_request_timeout_frees_the_only_slot_for_the_next_request() -> None:
    """A 5 s handler with max_concurrency 1: after a 0.2 s request timeout, the next request is
    served at once, because the timed-out conversation's handler was cancelled."""
    cancelled: list[str] = []

    async def slow_or_fast(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
        if msg.text == "slow":
            try:
                await anyio.sleep(5)
            except BaseException:
                cancelled.append(msg.text)
                raise
        return HandlerResponse.respond(msg)

    async with Organism([Listener("one", Msg, slow_or_fast, max_concurrency=1)]) as org:
        with pytest.raises(DeliveryError) as info:
            await org.request("one", Msg(text="slow"), timeout=0.2)
        assert info.value.reason == "timeout"
        with anyio.fail_after(4):  # well inside the 5 s the old handler would hold the slot
            assert await org.request("one", Msg(text="fast"), timeout=3) == Msg(text="fast")
        assert cancelled == ["slow"]


async def test_cancelling_the_requester_cancels_the_running_handler() -> None:
    started, stopped = anyio.Event(), anyio.Event()

    async def slow(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
        started.set()
        try:
            await anyio.sleep(30)
        finally:
            stopped.set()
        return HandlerResponse.respond(msg)

    async with Organism([Listener("slow", Msg, slow, max_concurrency=1)]) as org:
        task = asyncio.ensure_future(org.request("slow", Msg(text="x"), timeout=60))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with anyio.fail_after(5):
            await stopped.wait()
            await org.wait_idle()
        assert org.stats.cancelled == 1
        assert await org.registry.size() == 1


@pytest.mark.parametrize("ending", ["handler_error", "hop_limit"])
async def test_a_conversation_that_fails_cancels_its_other_running_hops(ending: str) -> None:
    """Fan-out: when one branch fails (or the conversation runs out of hops), the siblings
    still running are cancelled, not left to run for nobody."""
    sibling_started, sibling_stopped = anyio.Event(), anyio.Event()

    async def planner(msg: Msg | ErrorReport, meta: HandlerMetadata) -> object:
        return [HandlerResponse(Msg(text=t), to="worker") for t in ("long", "bad")]

    async def worker(msg: Msg, meta: HandlerMetadata) -> object:
        if msg.text == "bad":
            await sibling_started.wait()
            if ending == "hop_limit":
                return HandlerResponse(Msg(text="loop"), to="loop")
            raise RuntimeError("broken branch")
        sibling_started.set()
        try:
            await anyio.sleep(30)
        finally:
            sibling_stopped.set()
        return HandlerResponse.respond(msg)

    async def loop(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse(msg, to="loop2")

    async def loop2(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse(msg, to="loop")

    listeners = [
        Listener("planner", Msg, planner, peers=("worker",)),
        Listener("worker", Msg, worker, peers=("loop",)),
        Listener("loop", Msg, loop, peers=("loop2",)),
        Listener("loop2", Msg, loop2, peers=("loop",)),
    ]
    async with Organism(listeners, max_hops=50) as org:
        with pytest.raises(DeliveryError) as info:
            await org.request("planner", Msg(), timeout=20)
        assert info.value.reason == ending
        with anyio.fail_after(5):
            await sibling_stopped.wait()
        await drain(org)
        assert await org.registry.size() == 1


async def test_a_timed_out_cpu_bound_request_stops_its_worker(tmp_path: Path) -> None:
    """The worker running for a conversation that timed out is stopped, not left computing."""
    marker = str(tmp_path / "job")
    listeners = [Listener("cpu", Work, sleepy, cpu_bound=True, timeout_seconds=30)]
    async with Organism(listeners, process_pool={"workers": 1}) as org:
        with pytest.raises(DeliveryError) as info:
            await org.request("cpu", Work(seconds=3.0, marker=marker), timeout=1.0)
        assert info.value.reason == "timeout"
        assert Path(marker + ".started").exists()
        # the only worker is free again well before the 3 s job would have ended
        with anyio.fail_after(2.5):
            reply = await org.request("cpu", Work(seconds=0.0), timeout=2.4)
        assert isinstance(reply, Done)
        await anyio.sleep(2.5)
        assert not Path(marker + ".finished").exists(), "the abandoned job ran to its end"


async def test_cancelling_cpu_bound_requests_stops_the_running_job_and_drops_the_waiting_one(
    tmp_path: Path,
) -> None:
    """``task.cancel()`` of requests to a cpu_bound listener with one worker: the job running
    for one is stopped, the one waiting behind it never starts, and the worker serves the next
    request well before the cancelled job would have ended."""
    running, waiting = str(tmp_path / "running"), str(tmp_path / "waiting")
    listeners = [Listener("cpu", Work, sleepy, cpu_bound=True, timeout_seconds=30)]
    async with Organism(listeners, process_pool={"workers": 1}) as org:
        tasks = [
            asyncio.ensure_future(org.request("cpu", Work(seconds=3.0, marker=m), timeout=30))
            for m in (running, waiting)
        ]
        await eventually(lambda: Path(running + ".started").exists(), 20)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results), results
        with anyio.fail_after(2.5):  # well before the 3 s job would have freed the worker
            reply = await org.request("cpu", Work(seconds=0.0), timeout=2.4)
        assert isinstance(reply, Done)
        await anyio.sleep(3.0)
        assert not Path(running + ".finished").exists(), "the cancelled job ran to its end"
        assert not Path(waiting + ".started").exists(), "the waiting job ran for nobody"
        assert org.stats.cancelled == 2


# -- every cancel the pump makes is balanced; a handler that ignores it is abandoned (item 4) ---


async def swallow_once(msg: Msg, meta: HandlerMetadata) -> HandlerResponse | None:
    with contextlib.suppress(asyncio.CancelledError):  # swallows the pump's cancel
        await asyncio.sleep(10)
    if msg.text == "answer":
        return HandlerResponse.respond(Msg(text="too late"))
    return None


async def test_a_handler_that_swallows_the_cancel_fails_its_caller_at_its_own_timeout() -> None:
    async def front(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse(msg, to="swallower")

    listeners = [
        Listener("front", Msg, front, peers=("swallower",)),
        Listener("swallower", Msg, swallow_once, timeout_seconds=0.3),
    ]
    async with Organism(listeners) as org:
        for text in ("answer", "nothing"):
            with anyio.fail_after(5):  # the request's own deadline is far away
                with pytest.raises(DeliveryError) as info:
                    await org.request("front", Msg(text=text), timeout=30)
            assert (info.value.reason, info.value.listener) == ("timeout", "swallower")
        assert org.stats.timeouts == 2


async def test_a_send_to_a_handler_that_swallows_the_cancel_ends() -> None:
    async with Organism([Listener("s", Msg, swallow_once, timeout_seconds=0.3)]) as org:
        await org.send("s", Msg(text="answer"))
        with anyio.fail_after(5):
            await org.wait_idle()
        assert [d.reason for d in await org.dead_letters.list()] == ["timeout"]


async def test_the_next_hop_of_a_task_that_ran_a_swallowing_handler_is_not_taken_for_shutdown() -> (
    None
):
    """After a swallowed cancel the task's cancel count is balanced: a CancelledError the next
    handler raises of its own is that handler's error, not a shutdown that kills the chain."""

    async def careful(msg: Msg | ErrorReport, meta: HandlerMetadata) -> HandlerResponse:
        if isinstance(msg, Msg):
            return HandlerResponse(Msg(text="answer"), to="swallower")
        inner = asyncio.ensure_future(asyncio.sleep(10))
        inner.cancel()
        await inner  # raises CancelledError although nobody cancelled this handler
        return HandlerResponse.respond(Msg(text="unreachable"))

    listeners = [
        Listener("careful", Msg, careful, peers=("swallower",), handles_errors=True),
        Listener("swallower", Msg, swallow_once, timeout_seconds=0.3),
    ]
    async with Organism(listeners) as org:
        with anyio.fail_after(5):
            with pytest.raises(DeliveryError) as info:
                await org.request("careful", Msg(), timeout=30)
        assert (info.value.reason, info.value.listener) == ("handler_error", "careful")
        assert "CancelledError" in info.value.message


async def test_cancellation_is_level_triggered_a_handler_swallowing_once_still_stops() -> None:
    """Swallow one cancel, then await again: the next cancel stops it, well before the grace
    ends, so it is not abandoned and its task does not outlive the conversation."""
    stopped = anyio.Event()

    async def swallow_then_wait(msg: Msg, meta: HandlerMetadata) -> None:
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)
            await asyncio.sleep(10)
        finally:
            stopped.set()

    async with Organism([Listener("s", Msg, swallow_then_wait, timeout_seconds=0.2)]) as org:
        with pytest.raises(DeliveryError):
            await org.request("s", Msg(), timeout=30)
        with anyio.fail_after(5):
            await stopped.wait()
        assert org.stats.abandoned == 0
        await anyio.sleep(0.05)
        assert [t for t in pump_tasks() if "_chain" in t.get_coro().__qualname__] == []  # type: ignore[union-attr]


async def test_a_handler_that_ignores_cancellation_is_abandoned_and_its_slot_given_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = anyio.Event()

    async def stubborn(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
        if msg.text == "stubborn":
            while not release.is_set():
                with contextlib.suppress(asyncio.CancelledError):  # ignores every cancel
                    await asyncio.sleep(0.05)
        return HandlerResponse.respond(msg)

    listeners = [Listener("s", Msg, stubborn, max_concurrency=1, timeout_seconds=0.2)]
    async with Organism(listeners) as org:
        with pytest.raises(DeliveryError) as info:
            await org.request("s", Msg(text="stubborn"), timeout=30)
        assert info.value.reason == "timeout"
        with anyio.fail_after(5):
            assert await org.request("s", Msg(text="ok"), timeout=5) == Msg(text="ok")
        assert org.stats.abandoned == 1
        assert "abandoned" in caplog.text
        release.set()
        await anyio.sleep(0.1)
    assert pump_tasks() == []


async def test_leaving_never_waits_for_a_stubborn_handler_past_the_drain_timeout() -> None:
    """Exit takes the drain timeout plus a short grace, not twice the drain timeout, and no
    handler task outlives the organism when handlers stop on the first cancel."""
    org = Organism(
        [Listener("s", Msg, swallow_once, timeout_seconds=60)], drain_timeout_seconds=2.0
    )
    started = time.monotonic()
    with anyio.fail_after(10):
        async with org:
            for _ in range(3):
                await org.send("s", Msg(text="answer"))
            await anyio.sleep(0.05)
    took = time.monotonic() - started
    assert took < 3.5, f"leaving took {took:.1f}s with drain_timeout_seconds=2"
    assert pump_tasks() == []
    assert [d.reason for d in await org.dead_letters.list()] == ["shutdown"] * 3


async def test_leaving_abandons_handlers_that_ignore_every_cancel_after_the_drain_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Handlers that catch every cancel and keep going: leaving takes the drain timeout plus a
    short grace (before the fix, twice the drain timeout), and each is abandoned, counted and
    logged once rather than waited for."""
    release = anyio.Event()

    async def stubborn(msg: Msg, meta: HandlerMetadata) -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):  # ignores every cancel
                await asyncio.sleep(0.05)

    org = Organism([Listener("s", Msg, stubborn, timeout_seconds=60)], drain_timeout_seconds=2.0)
    try:
        with anyio.fail_after(10):
            async with org:
                for _ in range(3):
                    await org.send("s", Msg())
                await anyio.sleep(0.05)
                leaving = time.monotonic()
        took = time.monotonic() - leaving
        assert took < 3.5, f"leaving took {took:.1f}s with drain_timeout_seconds=2"
        # each once: by the watchdog (its grace ran out) or by leaving, whichever came first
        assert org.stats.abandoned == 3
        assert sum("abandoned" in r.getMessage() for r in caplog.records) == 3, caplog.text
        assert [d.reason for d in await org.dead_letters.list()] == ["shutdown"] * 3
    finally:
        release.set()
    await eventually(lambda: pump_tasks() == [])


# -- every exception from user code becomes handler_error, at once (item 5) -------------------


class Abort(BaseException):
    """A BaseException of the user's own."""


@pytest.mark.parametrize(
    "raise_it",
    [
        lambda: pytest.fail("a test helper failing inside a handler"),
        lambda: (_ for _ in ()).throw(GeneratorExit("closing")),
        lambda: (_ for _ in ()).throw(Abort("stop everything")),
        lambda: (_ for _ in ()).throw(SystemExit(3)),
    ],
    ids=["pytest.fail", "GeneratorExit", "custom-BaseException", "SystemExit"],
)
async def test_a_base_exception_from_a_handler_is_a_handler_error_at_once(raise_it: object) -> None:
    async def raises(msg: Msg, meta: HandlerMetadata) -> None:
        raise_it()  # type: ignore[operator]

    async with Organism([Listener("x", Msg, raises)]) as org:
        with anyio.fail_after(5):
            with pytest.raises(DeliveryError) as info:
                await org.request("x", Msg(), timeout=60)
            assert info.value.reason == "handler_error"
            await org.send("x", Msg())
            await org.wait_idle()
        assert [d.reason for d in await org.dead_letters.list()] == ["handler_error"]
        assert org.stats.handler_errors == 2


# -- one deadline per request (item 6) ----------------------------------------------------------


async def test_the_request_timeout_covers_waiting_at_ingress() -> None:
    gate = anyio.Event()

    async def stuck(msg: Msg, meta: HandlerMetadata) -> None:
        await gate.wait()

    org = Organism([Listener("s", Msg, stuck)], ingress_limit=1, ingress_wait_seconds=5)
    async with org:
        await org.send("s", Msg())
        with anyio.fail_after(2.5):
            with pytest.raises(DeliveryError) as info:
                await org.request("s", Msg(), timeout=0.5)
        assert info.value.reason == "timeout"
        assert org.stats.timeouts == 1
        gate.set()


class StallingBackend(MemoryBackend):
    """A memory backend whose opening writes take ``stall`` seconds to reach the state, like
    a request to a server that is slow to answer (the write lands after the caller left)."""

    def __init__(self, stall: float) -> None:
        super().__init__()
        self.stall = stall
        self.landed = 0

    async def extend(
        self, parent_id: str, child_id: str, listener: str, history_entry: bytes | None = None
    ) -> ThreadRecord | None:
        if not parent_id.startswith("root:"):
            return await super().extend(parent_id, child_id, listener, history_entry)

        async def on_the_wire() -> ThreadRecord | None:  # lands whether the caller waits or not
            await asyncio.sleep(self.stall)
            self.landed += 1
            return await MemoryBackend.extend(self, parent_id, child_id, listener, history_entry)

        return await asyncio.shield(asyncio.ensure_future(on_the_wire()))


async def _landed_and_undone(backend: StallingBackend, opens: int) -> None:
    await eventually(lambda: backend.landed >= opens, 10)
    await anyio.sleep(0.05)
    assert await backend.count() == 1, "only the root: the cut-short opens left nothing"


async def test_the_request_timeout_covers_the_opening_write_and_leaves_nothing_behind() -> None:
    backend = StallingBackend(stall=1.0)

    async def echo(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse.respond(msg)

    async with Organism([Listener("e", Msg, echo)], backend=backend) as org:
        with anyio.fail_after(0.9):  # returns at its deadline, before the write lands
            with pytest.raises(DeliveryError) as info:
                await org.request("e", Msg(), timeout=0.3)
        assert info.value.reason == "timeout"
        await _landed_and_undone(backend, 1)
        assert org.stats.conversations == 0


# -- cancelled or failed opens leave nothing in the backend (item 2) -------------------------


async def test_requests_cancelled_while_opening_leave_nothing_in_the_backend() -> None:
    backend = StallingBackend(stall=0.05)

    async def echo(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse.respond(msg)

    async with Organism([Listener("e", Msg, echo)], backend=backend) as org:
        tasks = [asyncio.ensure_future(org.request("e", Msg(n=i), timeout=30)) for i in range(200)]
        await anyio.sleep(0.01)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _landed_and_undone(backend, 200)
        assert org.stats.cancelled == 200


class FailingOpenBackend(MemoryBackend):
    """Its opening write reaches the state, then the reply is lost: the caller sees an error."""

    async def extend(
        self, parent_id: str, child_id: str, listener: str, history_entry: bytes | None = None
    ) -> ThreadRecord | None:
        record = await super().extend(parent_id, child_id, listener, history_entry)
        if parent_id.startswith("root:"):
            raise BackendError("the reply was lost", reason="backend_unreachable")
        return record


async def test_a_failed_open_raises_a_delivery_error_and_is_undone() -> None:
    backend = FailingOpenBackend()

    async def echo(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse.respond(msg)

    async with Organism([Listener("e", Msg, echo)], backend=backend) as org:
        with pytest.raises(DeliveryError) as info:
            await org.request("e", Msg(), timeout=5)
        assert info.value.reason == "backend_unreachable"
        with pytest.raises(DeliveryError):
            await org.send("e", Msg())
        await eventually(lambda: not org._running()._retiring)
        assert await backend.count() == 1


# -- errors users can act on (items 12, 13, 14, 17, 18, 20) ------------------------------------


async def test_a_fan_out_callee_that_returns_nothing_fails_that_call_naming_it() -> None:
    got: list[ErrorReport | Msg] = []

    async def planner(msg: Msg | ErrorReport, meta: HandlerMetadata) -> object:
        if isinstance(msg, Msg) and msg.text == "go":
            return [
                HandlerResponse(Msg(text="answer"), to="helper"),
                HandlerResponse(Msg(text="silent"), to="helper"),
            ]
        got.append(msg)
        if len(got) == 2:
            return HandlerResponse.respond(Msg(text="; ".join(type(g).__name__ for g in got)))
        return None

    async def helper(msg: Msg, meta: HandlerMetadata) -> HandlerResponse | None:
        if msg.text == "silent":
            return None
        await anyio.sleep(0.05)
        return HandlerResponse.respond(Msg(text="fine"))

    listeners = [
        Listener("planner", Msg, planner, peers=("helper",), handles_errors=True),
        Listener("helper", Msg, helper),
    ]
    async with Organism(listeners) as org:
        with anyio.fail_after(5):
            reply = await org.request("planner", Msg(text="go"), timeout=30)
    assert reply == Msg(text="ErrorReport; Msg")
    report = next(g for g in got if isinstance(g, ErrorReport))
    assert (report.reason, report.listener) == ("no_answer", "helper")
    assert "'helper' returned nothing for the call from 'planner'" in report.message


async def test_a_callee_that_returns_nothing_names_itself_to_the_requester() -> None:
    async def front(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse(msg, to="mute")

    async def mute(msg: Msg, meta: HandlerMetadata) -> None:
        return None

    listeners = [Listener("front", Msg, front, peers=("mute",)), Listener("mute", Msg, mute)]
    async with Organism(listeners) as org:
        with anyio.fail_after(5):
            with pytest.raises(DeliveryError) as info:
                await org.request("front", Msg(), timeout=30)
    assert (info.value.reason, info.value.listener) == ("no_answer", "mute")
    assert org.stats.no_answer == 1


def _envelope(sender: str) -> str:
    return (
        '<message xmlns="https://xml-pipeline.org/ns/envelope/v1"><meta>'
        f"<from>{sender}</from><to>vault</to></meta>"
        '<Msg xmlns=""><text>open</text></Msg></message>'
    )


@pytest.mark.parametrize(
    "sender",
    [
        "Admin",
        "ADMIN",
        " admin",
        "admin\t",
        "_admin",
        "_external",
        "\uff41\uff44\uff4d\uff49\uff4e",  # fullwidth letters
        "_",
        " ",
    ],
    ids=["case", "upper", "space", "tab", "underscore", "external", "fullwidth", "bare", "blank"],
)
async def test_a_forged_sender_differing_only_in_form_is_refused(
    sender: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def echo(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse.respond(msg)

    async with Organism([Listener("vault", Msg, echo), Listener("admin", Msg, echo)]) as org:
        with pytest.raises(DeliveryError) as info:
            await org.inject(_envelope(sender))
        assert info.value.reason == "forged_sender"
        assert org.stats.rejected == 1
        assert "inject() refused" in caplog.text
        await org.inject(_envelope("a person"))  # an honest outside name is fine
        await org.wait_idle()


async def test_rejected_injects_are_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def echo(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse.respond(msg)

    async with Organism([Listener("vault", Msg, echo)]) as org:
        for bad in ("<message", "<other/>", _envelope("vault").replace("vault<", "nobody<")):
            with pytest.raises(XmlPipelineError):
                await org.inject(bad)
        assert org.stats.rejected == 3
        assert caplog.text.count("inject() refused") == 3


async def test_stats_count_conversations_lost_not_hops() -> None:
    class FailingPruneBackend(MemoryBackend):
        """Every answer's write fails, as against a backend that went away mid-conversation."""

        async def prune(self, thread_id: str, entry: bytes | None = None) -> PruneResult | None:
            raise BackendError("the server went away", reason="backend_unreachable")

    async def fan(msg: Msg, meta: HandlerMetadata) -> list[HandlerResponse]:
        return [HandlerResponse(Msg(n=i), to="leaf") for i in range(5)]

    async def leaf(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
        await anyio.sleep(0.01 * msg.n)  # all five run at once, then answer one by one
        return HandlerResponse.respond(msg)

    listeners = [Listener("fan", Msg, fan, peers=("leaf",)), Listener("leaf", Msg, leaf)]
    async with Organism(listeners, backend=FailingPruneBackend()) as org:
        with pytest.raises(DeliveryError) as info:
            await org.request("fan", Msg(), timeout=5)
        assert info.value.reason == "backend_unreachable"
        await drain(org)
        await anyio.sleep(0.1)  # the other four hops would have failed too by now
        assert org.stats.lost == 1, "one conversation was lost, whatever its hops"


async def test_stats_and_dead_letters_stay_readable_after_the_organism_stops() -> None:
    async def broken(msg: Msg, meta: HandlerMetadata) -> None:
        raise RuntimeError("boom")

    org = Organism([Listener("b", Msg, broken)])
    assert org.stats.conversations == 0 and await org.dead_letters.list() == []
    async with org:
        await org.send("b", Msg())
        await org.wait_idle()
    assert org.stats.conversations == 1
    assert [d.reason for d in await org.dead_letters.list()] == ["handler_error"]


def _envelope_to(listener: str) -> bytes:
    ns = "https://xml-pipeline.org/ns/envelope/v1"
    return (
        f'<message xmlns="{ns}"><meta><to>{listener}</to></meta><Msg xmlns=""><text>x</text>'
        "<n>1</n></Msg></message>"
    ).encode()


def _every_way_in(org: Organism) -> dict[str, Callable[[], Awaitable[object]]]:
    """Each entry point that starts a conversation, called once."""
    return {
        "request": lambda: org.request("e", Msg(text="x"), timeout=5),
        "request_envelope": lambda: org.request_envelope(_envelope_to("e"), timeout=5),
        "send": lambda: org.send("e", Msg(text="x")),
        "inject": lambda: org.inject(_envelope_to("e")),
    }


async def test_a_conversation_started_while_or_after_the_stop_fails_with_shutdown() -> None:
    """A caller racing the stop (``organism run`` reading its last lines as SIGTERM came) gets
    ``shutdown``, as those refused by the closing gate do, not a usage error; only an organism
    that never ran says "not running"."""

    async def echo(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse.respond(msg)

    org = Organism([Listener("e", Msg, echo)], drain_timeout_seconds=1)
    for start in _every_way_in(org).values():
        with pytest.raises(UsageError, match="not running"):
            await start()
    racing: dict[str, BaseException | None] = {}

    async def after_the_stop_began(name: str, start: Callable[[], Awaitable[object]]) -> None:
        await asyncio.sleep(0)  # the stop has begun when this runs
        try:
            await start()
            racing[name] = None
        except BaseException as exc:
            racing[name] = exc

    async with org:
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(after_the_stop_began(n, s)) for n, s in _every_way_in(org).items()
        ]
    await asyncio.gather(*tasks)
    for name, exc in racing.items():
        assert isinstance(exc, DeliveryError) and exc.reason == "shutdown", (name, exc)
    for name, start in _every_way_in(org).items():  # and once it has stopped
        with pytest.raises(DeliveryError) as refused:
            await start()
        assert refused.value.reason == "shutdown", name
        assert "start it again with 'async with organism:'" in refused.value.message
    assert org.stats.conversations == 0


async def test_request_arguments_are_checked_where_they_enter() -> None:
    async def echo(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse.respond(msg)

    async with Organism([Listener("e", Msg, echo)]) as org:
        with pytest.raises(PayloadTypeError, match="must be a @payload object, not str"):
            await org.request("e", "not a payload")
        with pytest.raises(PayloadTypeError, match="not a class"):
            await org.request("e", Msg)
        with pytest.raises(PayloadTypeError):
            await org.send("e", {"text": "a dict"})
        with pytest.raises(UsageError, match="bytes or str, not NoneType"):
            await org.inject(None)  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="timeout"):
            await org.request("e", Msg(), timeout=0)
        with pytest.raises(UsageError, match="timeout"):
            await org.request("e", Msg(), timeout=float("nan"))
        assert org.stats.rejected == 3


def test_listener_fields_are_checked_where_they_enter() -> None:
    async def h(msg: Msg, meta: HandlerMetadata) -> None:
        return None

    with pytest.raises(UsageError, match=r"did you mean \('back',\)"):
        Listener("front", Msg, h, peers="back")  # type: ignore[arg-type]
    assert Listener("front", Msg, h, peers=["back"]).peers == ("back",)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="payload_class must be a @payload class"):
        Listener("front", dict, h)
    with pytest.raises(UsageError, match="handler must be callable"):
        Listener("front", Msg, "handlers.h")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="max_concurrency"):
        Listener("front", Msg, h, max_concurrency=0)
    with pytest.raises(UsageError, match="timeout_seconds"):
        Listener("front", Msg, h, timeout_seconds=float("inf"))
    with pytest.raises(UsageError, match="reserved"):
        Listener("_front", Msg, h)
    with pytest.raises(UsageError, match="cpu_bound"):
        Listener("front", Msg, h, cpu_bound="yes")  # type: ignore[arg-type]

    async def one_arg(msg: Msg) -> None:
        return None

    with pytest.raises(UsageError, match=r"handler\(payload, metadata\)"):
        Organism([Listener("front", Msg, one_arg)])


HELLO = str(Path(__file__).resolve().parents[2] / "organisms" / "hello" / "organism.yaml")


def test_from_yaml_overrides_are_checked_and_mappings_read_like_the_file() -> None:
    org = Organism.from_yaml(HELLO, backend={"type": "memory", "history_max_entries": 5})
    assert org._backend_spec == BackendConfig(history_max_entries=5)
    with pytest.raises(UsageError, match=r"backend\.redis_urll: unknown key; did you mean"):
        Organism.from_yaml(HELLO, backend={"type": "redis", "redis_urll": "redis://x"})
    with pytest.raises(UsageError, match="backend= takes a BackendConfig"):
        Organism.from_yaml(HELLO, backend="redis")
    with pytest.raises(UsageError, match="no setting named 'max_hop'"):
        Organism.from_yaml(HELLO, max_hop=5)
    with pytest.raises(UsageError, match="max_hops= takes int"):
        Organism.from_yaml(HELLO, max_hops="5")
    with pytest.raises(UsageError, match="Listener objects"):
        Organism("greeter")  # type: ignore[arg-type]


def test_every_delivery_reason_is_documented_where_users_read_it() -> None:
    """The reasons `request` can raise are listed in its docstring and in the README, and the
    ErrorReport schema enumerates every code."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    doc = Organism.request.__doc__ or ""
    for reason in DeliveryError.reasons:
        assert f"`{reason}`" in readme, reason
        assert f"``{reason}``" in doc, reason
    xsd = payload_spec(ErrorReport).xsd
    for reason in Reason:
        assert f'value="{reason}"' in xsd


@pytest.fixture
async def org_with_echo() -> AsyncIterator[Organism]:
    async def echo(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse.respond(msg)

    async with Organism([Listener("e", Msg, echo)]) as org:
        yield org


async def test_error_report_takes_reason_text_and_refuses_unknown_codes(
    org_with_echo: Organism,
) -> None:
    assert ErrorReport(reason="timeout", message="m").reason is Reason.TIMEOUT  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nonsense"):
        ErrorReport(reason="nonsense", message="m")  # type: ignore[arg-type]
    assert await org_with_echo.request("e", Msg(text="still fine"), timeout=5) == Msg(
        text="still fine"
    )


async def test_a_handler_error_names_the_users_line_in_process_and_in_a_worker() -> None:
    import json

    async def inline(msg: Work, meta: HandlerMetadata) -> None:
        json.loads("{")  # this line

    line = inline.__code__.co_firstlineno + 1
    source = inspect.getsourcefile(fault_handlers)
    assert source is not None
    worker_line = next(
        i
        for i, text in enumerate(Path(source).read_text().splitlines(), 1)
        if "the line the" in text
    )
    listeners = [
        Listener("inline", Work, inline),
        Listener("pooled", Work, fails, cpu_bound=True),
    ]
    async with Organism(listeners, process_pool={"workers": 1}) as org:
        with pytest.raises(DeliveryError) as info:
            await org.request("inline", Work(), timeout=10)
        assert f"test_pump_faults.py:{line}, in inline)" in info.value.message
        with pytest.raises(DeliveryError) as info:
            await org.request("pooled", Work(), timeout=10)
        assert f"fault_handlers.py:{worker_line}, in fails)" in info.value.message


async def test_a_payload_of_another_class_with_the_same_tag_is_named_as_such() -> None:
    @payload(tag="Msg")
    @dataclass
    class Lookalike:
        text: str = ""
        n: int = 0

    async def echo(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse.respond(msg)

    async with Organism([Listener("e", Msg, echo)]) as org:
        with pytest.raises(DeliveryError, match="another class of that name") as info:
            await org.request("e", Lookalike(), timeout=5)
    assert "test_pump_faults.Msg" in info.value.message
    assert "Lookalike" in info.value.message


async def test_a_sync_handler_that_blocks_past_its_timeout_is_a_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A plain function cannot be interrupted on the event loop; an answer it gives after its
    deadline is a timeout all the same, and the log says why it could not be stopped."""

    def blocking(msg: Msg, meta: HandlerMetadata) -> HandlerResponse:
        time.sleep(0.3)
        return HandlerResponse.respond(msg)

    async with Organism([Listener("b", Msg, blocking, timeout_seconds=0.1)]) as org:
        with pytest.raises(DeliveryError) as info:
            await org.request("b", Msg(), timeout=5)
    assert (info.value.reason, info.value.listener) == ("timeout", "b")
    assert "blocked the event loop" in caplog.text
