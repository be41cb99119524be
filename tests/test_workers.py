"""cpu_bound listeners: real worker processes, real crashes, timeouts and fairness."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import anyio
import pytest

from xml_pipeline import DeliveryError, Listener, Organism, UsageError
from xml_pipeline.config import ProcessPoolConfig

from .worker_handlers import Job, Result, Seen, crunch, front, helper, looper, quick

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
