"""Seeing and steering running work in process (issue 13, items 1 and 3): `Organism.runs`,
progress and output lines, `cancel_run`, `cancel_conversation`."""

from __future__ import annotations

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
    Run,
    UnknownIdError,
    UsageError,
    payload,
)
from xml_pipeline._runtime.runs import MAX_OUTPUT_LINES

pytestmark = pytest.mark.anyio


@payload
@dataclass
class Work:
    text: str = ""


@payload
@dataclass
class Said:
    text: str


async def long(msg: Work, meta: HandlerMetadata) -> HandlerResponse:
    for i in range(MAX_OUTPUT_LINES + 5):
        meta.log(f"line {i}")
    meta.progress("fetched 3 of 10")
    await anyio.sleep(30)
    return HandlerResponse.respond(Said(text="done"))


async def boss(msg: Work, meta: HandlerMetadata) -> HandlerResponse | None:
    if isinstance(msg, ErrorReport):
        return HandlerResponse.respond(Said(text=f"boss saw {msg.reason}"))
    if msg.text == "await":
        return HandlerResponse.respond(await meta.call("long", msg))
    return HandlerResponse(msg, to="long")


def organism() -> Organism:
    return Organism([
        Listener("boss", Work, boss, peers=("long",), handles_errors=True),
        Listener("long", Work, long, max_concurrency=1),
    ])  # fmt: skip


async def until(predicate: object, seconds: float = 5) -> None:
    with anyio.fail_after(seconds):
        while not predicate():  # type: ignore[operator]
            await anyio.sleep(0.01)


async def test_runs_lists_running_waiting_and_queued_work_with_progress_and_output() -> None:
    async with organism() as org, anyio.create_task_group() as tg:
        tg.start_soon(org.request, "boss", Work(text="await"))
        tg.start_soon(org.send, "long", Work())  # queued behind the first (one slot)
        await until(lambda: len(org.runs()) == 3)
        by_status = {run.status: run for run in org.runs()}
        assert set(by_status) == {"waiting", "running", "queued"}
        waiting, running, queued = by_status["waiting"], by_status["running"], by_status["queued"]
        assert (waiting.listener, running.listener, queued.listener) == ("boss", "long", "long")
        assert running.progress == "fetched 3 of 10"
        assert running.output[-1] == f"line {MAX_OUTPUT_LINES + 4}"
        assert len(running.output) == MAX_OUTPUT_LINES and running.output_dropped == 5
        assert running.run_id == f"r{running.run_id[1:].partition('@')[0]}@{org.process}"
        assert running.process == org.process and queued.run_id == ""
        assert queued.started_at is None
        assert running.elapsed_seconds >= 0 and running.started_at is not None
        assert [r.listener for r in org.runs(listener="long", status="running")] == ["long"]
        tg.cancel_scope.cancel()


async def test_cancel_run_fails_its_caller_with_cancelled_and_the_conversation_goes_on() -> None:
    async with organism() as org:
        async with anyio.create_task_group() as tg:
            answers: list[object] = []

            async def ask() -> None:
                answers.append(await org.request("boss", Work(), timeout=10))

            tg.start_soon(ask)
            await until(lambda: org.runs(listener="long", status="running"))
            [run] = org.runs(listener="long", status="running")
            await org.cancel_run(run.run_id)
        assert answers == [Said(text="boss saw cancelled")]  # boss handles errors: it answered
        with pytest.raises(UsageError, match="finished"):
            await org.cancel_run(run.run_id)
        with pytest.raises(UnknownIdError, match="no run r999999") as unknown:
            await org.cancel_run("r999999")
        assert (unknown.value.kind, unknown.value.id) == ("run", "r999999")
        with pytest.raises(UsageError, match="r followed by digits"):
            await org.cancel_run("12")
        [cancelled] = org.runs(listener="long")
        assert (cancelled.status, cancelled.outcome) == ("cancelled", "cancelled")
        assert cancelled.run_id == run.run_id and cancelled.finished_at is not None


async def test_cancel_conversation_ends_it_for_its_requester() -> None:
    async with organism() as org:
        async with anyio.create_task_group() as tg:
            failures: list[DeliveryError] = []

            async def ask() -> None:
                with pytest.raises(DeliveryError) as failed:
                    await org.request("long", Work(), timeout=10)
                failures.append(failed.value)

            tg.start_soon(ask)
            await until(lambda: org.runs(status="running"))
            [run] = org.runs()
            await org.cancel_conversation(run.conversation)
        assert failures[0].reason == "cancelled"
        assert org.runs(status="running") == []
        [ended] = org.runs()
        assert (ended.status, ended.outcome) == ("cancelled", "ended")
        with pytest.raises(UnknownIdError, match="no open conversation") as unknown:
            await org.cancel_conversation(run.conversation)
        assert (unknown.value.kind, unknown.value.id) == ("conversation", run.conversation)


async def quick(msg: Work, meta: HandlerMetadata) -> HandlerResponse:
    if msg.text == "fail":
        raise RuntimeError("it broke")
    return HandlerResponse.respond(Said(text=msg.text))


async def test_finished_runs_stay_listed_with_their_outcome_newest_first_and_bounded() -> None:
    org = Organism([Listener("quick", Work, quick)], runs={"keep_finished": 3})
    async with org:
        for text in ("a", "b"):
            await org.request("quick", Work(text=text))
        with pytest.raises(DeliveryError):
            await org.request("quick", Work(text="fail"))
        runs = org.runs()
        assert [r.status for r in runs] == ["failed", "completed", "completed"]
        failed = runs[0]
        assert failed.outcome == "handler_error" and "it broke" in failed.message
        assert runs[1].outcome == "ok" and runs[1].finished_at is not None
        assert runs[1].finished_at >= (runs[1].started_at or 0)
        await org.request("quick", Work(text="d"))
        assert len(org.runs()) == 3  # the bound: the oldest went
        assert [r.status for r in org.runs(status="completed")] == ["completed", "completed"]
        assert org.runs(status="running") == []


async def test_keep_finished_zero_lists_open_work_only() -> None:
    async with Organism([Listener("quick", Work, quick)], runs={"keep_finished": 0}) as org:
        await org.request("quick", Work(text="a"))
        assert org.runs() == []


async def test_a_run_round_trips_through_its_json_dict() -> None:
    import json

    async with Organism([Listener("quick", Work, quick)]) as org:
        await org.request("quick", Work(text="a"))
        [run] = org.runs()
        data = json.loads(json.dumps(run.to_dict()))
        assert set(data) >= {"run_id", "status", "outcome", "finished_at", "worker_pid", "process"}
        assert Run.from_dict(data) == run
        assert (await org.all_runs()) == [run]  # memory backend: this process only


async def test_organisms_sharing_one_memory_backend_see_and_cancel_each_others_runs() -> None:
    from xml_pipeline.backends import MemoryBackend

    shared = MemoryBackend()
    fast = {"heartbeat_seconds": 0.05, "lost_after_seconds": 1.0}
    hidden = {"heartbeat_seconds": 0}
    quick_stop = {"backend": shared, "drain_timeout_seconds": 0.2}
    one = Organism(list(organism().listeners), runs=fast, **quick_stop)  # type: ignore[arg-type]
    two = Organism([Listener("long", Work, long)], runs=fast, **quick_stop)  # type: ignore[arg-type]
    three = Organism([Listener("long", Work, long)], runs=hidden, **quick_stop)  # type: ignore[arg-type]
    async with one, two, three, anyio.create_task_group() as tg:
        failures: list[DeliveryError] = []

        async def ask() -> None:
            with pytest.raises(DeliveryError) as failed:
                await two.request("long", Work(), timeout=10)
            failures.append(failed.value)

        tg.start_soon(ask)
        tg.start_soon(three.send, "long", Work())
        await until(lambda: two.runs(status="running") and three.runs(status="running"))
        [theirs] = two.runs(status="running")
        with anyio.fail_after(5):
            while theirs.run_id not in {r.run_id for r in await one.all_runs()}:
                await anyio.sleep(0.01)
        assert three.process not in {r.process for r in await one.all_runs()}  # heartbeat off
        await one.cancel_run(theirs.run_id)  # taken by two at its next heartbeat
        await until(lambda: failures)
        assert failures[0].reason == "cancelled"
        with anyio.fail_after(5):
            while (await one.all_runs(status="cancelled")) == []:
                await anyio.sleep(0.01)
        tg.start_soon(two.send, "long", Work())
        await until(lambda: two.runs(status="running"))
        conversation = two.runs(status="running")[0].conversation
        with anyio.fail_after(5):  # seen by the others from two's next heartbeat on
            while conversation not in {r.conversation for r in await one.all_runs()}:
                await anyio.sleep(0.01)
        await one.cancel_conversation(conversation)
        await until(lambda: not two.runs(status="running"))
        with pytest.raises(UnknownIdError):  # three is invisible: nobody can reach it
            await one.cancel_conversation(three.runs(status="running")[0].conversation)
        tg.cancel_scope.cancel()


async def test_a_snapshot_builds_at_most_its_limit_of_unfinished_runs_and_counts_the_rest() -> None:
    listener = Listener("long", Work, long, max_concurrency=1)
    async with Organism([listener], drain_timeout_seconds=0.2) as org:
        for _ in range(5):
            await org.send("long", Work())
        await until(lambda: len(org.runs()) == 5)
        views = org._running().run_views
        runs, omitted = views.active_runs(2)
        assert [run.status for run in runs] == ["running", "queued"] and omitted == 3
        assert views.active_runs()[1] == 0 and len(views.active_runs()[0]) == 5
        await org.cancel_run(runs[0].run_id)
        await until(lambda: views.finished_runs())
        assert [run.status for run in views.finished_runs()] == ["cancelled"]
