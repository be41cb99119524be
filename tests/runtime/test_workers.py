"""cpu_bound listeners: real worker processes, real crashes, timeouts and fairness."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
from pathlib import Path

import anyio
import pytest

from tests import pool_tasks
from tests.worker_handlers import (
    LEVELS,
    Bulk,
    Job,
    Result,
    Seen,
    araise,
    bulk_echo,
    crunch,
    front,
    helper,
    inline,
    looper,
    nest,
    nested_echo,
    quick,
)
from xml_pipeline import DeliveryError, Listener, Organism, UsageError
from xml_pipeline._config import ProcessPoolConfig

pytestmark = pytest.mark.anyio


def crunch_organism(workers: int = 2, timeout: float = 20.0, max_crashes: int = 2) -> Organism:
    listeners = [
        Listener("crunch", Job, crunch, peers=("helper",), cpu_bound=True, timeout_seconds=timeout),
        Listener("helper", Job, helper),
        Listener("quick", Job, quick),
    ]
    pool = ProcessPoolConfig(workers=workers, max_crashes=max_crashes)
    return Organism(listeners, process_pool=pool)


async def test_cpu_bound_handler_runs_in_another_process_and_answers_like_inline() -> None:
    async with crunch_organism() as org:
        reply = await org.request("crunch", Job(n=10), timeout=30)
    assert isinstance(reply, Result)
    assert reply.value == sum(i * i for i in range(10))
    assert reply.pid != os.getpid()


async def test_cpu_bound_handler_can_call_an_inline_peer_and_receive_its_answer() -> None:
    async with crunch_organism() as org:
        reply = await org.request("crunch", Job(mode="call-peer", n=21), timeout=30)
    assert reply == Result(pid=os.getpid(), value=42), "the inline peer answered, passed up"


async def test_async_handlers_in_a_worker_share_one_event_loop_and_see_history() -> None:
    listeners = [
        Listener("front", Job, front, peers=("looper",)),
        Listener("looper", Job, looper, cpu_bound=True),
    ]
    async with Organism(listeners, process_pool=ProcessPoolConfig(workers=1)) as org:
        first = await org.request("front", Job(n=1), timeout=30)
        second = await org.request("front", Job(n=2), timeout=30)
    assert isinstance(first, Seen) and isinstance(second, Seen)
    assert (first.pid, first.loop) == (second.pid, second.loop), "no new loop per task"
    assert first.tags == ["_external>front:Job", "front>looper:Job"]


async def test_killed_worker_is_replaced_and_every_innocent_message_is_answered() -> None:
    async with crunch_organism() as org:
        pool = org.process_pool
        assert pool is not None
        replies: list[object] = []

        async def ask(i: int) -> None:
            replies.append(await org.request("crunch", Job(mode="sleep", n=200 + i), timeout=60))

        async with anyio.create_task_group() as group:
            for i in range(12):
                group.start_soon(ask, i)
            await anyio.sleep(0.1)
            victim = pool.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
        assert len(replies) == 12 and all(isinstance(r, Result) for r in replies)
        assert pool.stats.rebuilds >= 1
        assert victim not in pool.worker_pids()
        again = await org.request("crunch", Job(n=3), timeout=30)
        assert isinstance(again, Result) and again.value == 5


async def test_message_that_always_kills_its_worker_fails_with_worker_crash_alone() -> None:
    async with crunch_organism(max_crashes=2) as org:
        outcomes: dict[str, object] = {}

        async def ask(key: str, job: Job) -> None:
            try:
                outcomes[key] = await org.request("crunch", job, timeout=60)
            except DeliveryError as exc:
                outcomes[key] = exc

        async with anyio.create_task_group() as group:
            group.start_soon(ask, "poison", Job(mode="always-crash"))
            for i in range(10):
                group.start_soon(ask, f"innocent{i}", Job(mode="sleep", n=50))
        poison = outcomes.pop("poison")
        assert isinstance(poison, DeliveryError) and poison.reason == "worker_crash"
        assert poison.listener == "crunch"
        assert all(isinstance(r, Result) for r in outcomes.values()), outcomes
        assert await org.request("quick", Job(n=1)) == Result(pid=os.getpid(), value=1)


async def test_message_that_crashed_once_is_retried_and_answered(tmp_path: Path) -> None:
    marker = tmp_path / "crashed"
    async with crunch_organism(max_crashes=2) as org:
        reply = await org.request(
            "crunch", Job(mode="crash-once", n=4, marker=str(marker)), timeout=60
        )
    assert marker.exists(), "the first attempt really crashed its worker"
    assert isinstance(reply, Result) and reply.value == 14


async def test_hung_handler_times_out_and_its_worker_is_replaced() -> None:
    async with crunch_organism(timeout=0.5) as org:
        pool = org.process_pool
        assert pool is not None
        before = set(pool.worker_pids())
        with pytest.raises(DeliveryError) as info:
            await org.request("crunch", Job(mode="hang"), timeout=30)
        assert (info.value.reason, info.value.listener) == ("timeout", "crunch")
        reply = await org.request("crunch", Job(n=2), timeout=30)
        assert isinstance(reply, Result) and reply.value == 1
        assert set(pool.worker_pids()) != before, "the hung worker is not reused"


async def test_inline_listeners_keep_answering_while_the_pool_is_saturated() -> None:
    async with crunch_organism(workers=2) as org:
        order: list[str] = []

        async def heavy() -> None:
            await org.request("crunch", Job(mode="sleep", n=1500), timeout=60)
            order.append("heavy")

        async with anyio.create_task_group() as group:
            group.start_soon(heavy)
            group.start_soon(heavy)
            await anyio.sleep(0.2)  # both workers are busy now
            for i in range(50):
                assert await org.request("quick", Job(n=i)) == Result(pid=os.getpid(), value=i)
                order.append("inline")
        assert order[:50] == ["inline"] * 50, "inline round trips did not wait for the pool"


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("garbage", "invalid_response"),
        ("bad-field", "schema_violation"),
        ("call-stranger", "peer_denied"),  # checked in the parent, like an inline call
    ],
)
async def test_worker_results_are_checked_like_any_other(mode: str, reason: str) -> None:
    async with crunch_organism() as org:
        with pytest.raises(DeliveryError) as info:
            await org.request("crunch", Job(mode=mode), timeout=30)
    assert info.value.reason == reason


def test_cpu_bound_closure_is_refused_when_the_organism_is_built() -> None:
    def local(msg: Job, meta: object) -> None:
        return None

    with pytest.raises(UsageError, match="nested function or closure"):
        Organism([Listener("x", Job, local, cpu_bound=True)])


async def test_hops_beyond_the_pool_size_wait_outside_the_timeout_clock() -> None:
    """Six 0.4 s jobs on one worker under a 1 s timeout: each waits its turn, none times out."""
    async with crunch_organism(workers=1, timeout=1.0) as org:
        replies = await asyncio.gather(
            *(org.request("crunch", Job(mode="sleep", n=400), timeout=60) for _ in range(6))
        )
        assert all(isinstance(r, Result) for r in replies)
        assert org.stats.timeouts == 0


async def _wait_for_runs(runs: Path, count: int) -> None:
    with anyio.fail_after(20):
        while not runs.exists() or runs.read_text().count("run") < count:
            await anyio.sleep(0.01)


async def test_a_cpu_bound_handler_that_raises_fails_at_once_and_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever a cpu_bound handler raises (XmlInputError from from_xml, exceptions that cannot
    be unpickled, BaseException subclasses) is handler_error at once, naming listener, type and
    message, its worker traceback logged; nothing is taken for a crash, and the calls in
    flight beside it run once."""
    caplog.set_level(logging.DEBUG, logger="xml_pipeline.workers")
    runs = tmp_path / "runs"
    errors: dict[str, DeliveryError] = {}
    async with crunch_organism(workers=3) as org:
        pool = org.process_pool
        assert pool is not None
        innocent = Job(mode="count", marker=str(runs))
        in_flight = [
            asyncio.ensure_future(org.request("crunch", innocent, timeout=60)) for _ in range(2)
        ]
        await _wait_for_runs(runs, 2)
        for kind in pool_tasks.RAISERS:  # one after the other, on the third worker
            with anyio.fail_after(10), pytest.raises(DeliveryError) as info:
                await org.request("crunch", Job(mode=f"raise:{kind}"), timeout=60)
            errors[kind] = info.value
        assert not any(f.done() for f in in_flight), "reported before the innocents finished"
        (tmp_path / "runs.go").touch()
        replies = await asyncio.gather(*in_flight)
        assert all(isinstance(r, Result) for r in replies)
        assert (pool.stats.crashes, pool.stats.rebuilds, pool.stats.retried) == (0, 0, 0)
        assert org.stats.handler_errors == len(pool_tasks.RAISERS)
    assert runs.read_text().count("run") == 2, "each innocent call ran exactly once"
    for kind, error in errors.items():
        _, type_name, message = pool_tasks.RAISERS[kind]
        assert (error.reason, error.listener) == ("handler_error", "crunch"), kind
        assert error.message.startswith(f"'crunch' raised {type_name}"), error.message
        assert message in error.message, kind
    traces = [r.getMessage() for r in caplog.records if r.name == "xml_pipeline.workers"]
    assert len(traces) == len(pool_tasks.RAISERS)
    assert all("handler of 'crunch' raised" in t and "in raise_kind" in t for t in traces)


async def test_an_async_cpu_bound_handler_that_raises_leaves_its_worker_serving() -> None:
    """BaseException out of the worker's shared event loop: the call fails, the loop and the
    worker stay (same pid answers next)."""
    listeners = [Listener("araise", Job, araise, cpu_bound=True)]
    async with Organism(listeners, process_pool=ProcessPoolConfig(workers=1)) as org:
        pool = org.process_pool
        assert pool is not None
        [pid] = pool.worker_pids()
        for kind in ("system-exit", "keyboard-interrupt", "generator-exit", "abort"):
            type_name = pool_tasks.RAISERS[kind][1]
            with pytest.raises(DeliveryError, match=f"'araise' raised {type_name}"):
                await org.request("araise", Job(mode=f"raise:{kind}"), timeout=30)
        assert await org.request("araise", Job(n=5), timeout=30) == Result(pid=pid, value=5)
        assert (pool.stats.crashes, pool.stats.rebuilds) == (0, 0)


def limits_organism() -> Organism:
    """The same handlers inline and cpu_bound, under a 4 MiB message cap."""
    listeners = [
        Listener("bulk-inline", Bulk, inline),
        Listener("bulk-pool", Bulk, bulk_echo, cpu_bound=True),
        Listener("nested-inline", LEVELS[-1], inline),
        Listener("nested-pool", LEVELS[-1], nested_echo, cpu_bound=True),
    ]
    return Organism(
        listeners, process_pool=ProcessPoolConfig(workers=2), max_message_bytes=4_194_304
    )


async def _outcome(org: Organism, to: str, message: object) -> tuple[str, object]:
    try:
        return "answer", await org.request(to, message, timeout=60)
    except DeliveryError as exc:
        return exc.reason, exc.message.replace(to, "<listener>")


def _bulk_cases() -> list[tuple[str, Bulk]]:
    rng = random.Random(9)  # a fixed sample around and past the caps for outside input
    cases = [
        ("empty", Bulk()),
        ("6k items, answered with 12k", Bulk(items=list(range(6_000)))),
        ("20k items both ways", Bulk(items=list(range(20_000)))),
        ("150 KB, answered with 300 KB", Bulk(text="x" * 150_000)),
        ("300 KB both ways", Bulk(text="é" * 150_000)),
    ]
    for i in range(4):
        items = [rng.randrange(-(10**9), 10**9) for _ in range(rng.randrange(25_000))]
        cases.append((f"random {i}", Bulk(items=items, text="y" * rng.randrange(400_000))))
    return cases


async def test_inline_and_cpu_bound_listeners_receive_and_answer_the_same_payloads() -> None:
    """Whether a listener is cpu_bound never changes what it can receive or answer: the
    organism's limits are the only limits (before, the pool applied the default caps for XML
    from outside, 256 KB, 10k elements and depth 64, to the request and to the answer)."""
    async with limits_organism() as org:
        for name, message in _bulk_cases():
            inline_outcome = await _outcome(org, "bulk-inline", message)
            pool_outcome = await _outcome(org, "bulk-pool", message)
            assert pool_outcome == inline_outcome, name
            assert inline_outcome == ("answer", bulk_echo(message, None).payload), name  # type: ignore[arg-type]
        deep = nest(len(LEVELS))
        assert await _outcome(org, "nested-pool", deep) == ("answer", deep)
        assert await _outcome(org, "nested-inline", deep) == ("answer", deep)
