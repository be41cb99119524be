"""Shared pipelines never strand a caller: every call is settled whoever else is cancelled.

`ScriptBatcher` sends many callers' script calls in one pipeline. These tests cancel callers
while their pipelines are in the air (plain ``task.cancel()``, ``asyncio.wait_for``), kill the
pipeline's connection and close the batcher, against a real redis-server kept busy by another
client's Lua loop, and check that every other call gets its own result or error at once, that
the batcher's counters return to zero and that the data in Redis matches what callers were told.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from tests.redis_server import RedisServer
from xml_pipeline.backends import PruneResult, RedisBackend, ThreadRecord
from xml_pipeline.backends._redis_batch import BatcherClosedError, ScriptBatcher

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

ROOT = "root"
CALLERS = 20
# Liveness bounds, far above what a healthy run needs (Redis is busy for 0.3 s): a caller still
# waiting after this is stranded, not slow.
SETTLE_BOUND = 15.0


@pytest.fixture
async def backend(redis_url: str) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(redis_url)
    await backend.open()
    await backend.put_root(ROOT, "organism")
    await backend.extend(ROOT, "warm", "alpha")  # a pooled connection, the scripts loaded
    try:
        yield backend
    finally:
        await backend.aclose()


def batcher_of(backend: RedisBackend) -> ScriptBatcher:
    return backend._batcher


async def settled(batcher: ScriptBatcher) -> None:
    """Wait (boundedly) until the batcher holds no call and runs no sender."""
    for _ in range(1000):
        if batcher.waiting == batcher.in_flight == batcher.senders == 0:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(
        f"batcher not idle: waiting={batcher.waiting} in_flight={batcher.in_flight} "
        f"senders={batcher.senders}"
    )


@pytest.mark.parametrize("victim", ["leader", "random"])
async def test_a_caller_cancelled_mid_pipeline_leaves_the_others_of_its_batch_answered(
    backend: RedisBackend, redis_server: RedisServer, victim: str
) -> None:
    """Issue 9, item 1: 20 callers share pipelines while Redis is busy; one is cancelled with a
    plain ``task.cancel()``: the 19 others get their records, none waits for ever.

    ``leader`` cancels the first caller, the one whose call opened the pipeline that carries
    most of the others (before the fix it sent them itself); ``random`` any caller.
    """
    seed = random.randrange(2**32)
    index = 0 if victim == "leader" else random.Random(seed).randrange(CALLERS)
    batcher = batcher_of(backend)
    with redis_server.busy_script(0.3):
        tasks = [
            asyncio.ensure_future(backend.extend(ROOT, f"c{n}", "alpha", b"<ask/>"))
            for n in range(CALLERS)
        ]
        await asyncio.sleep(0.1)
        # Redis is busy: every call has left in a pipeline and none has its answer yet.
        assert not any(task.done() for task in tasks)
        assert batcher.in_flight == CALLERS and batcher.waiting == 0
        tasks[index].cancel()
        others = [task for n, task in enumerate(tasks) if n != index]
        _, pending = await asyncio.wait(others, timeout=SETTLE_BOUND)
    for task in pending:
        task.cancel()
    assert not pending, f"{len(pending)} of {CALLERS - 1} callers stranded (seed {seed})"
    assert tasks[index].cancelled()
    for n, task in enumerate(tasks):
        if n != index:
            assert task.result() == ThreadRecord(f"c{n}", ROOT, "alpha", f"c{n}")
    await settled(batcher)
    # The cancelled call was in the air: it ran or not, and the backend is consistent either way.
    record = await backend.get(f"c{index}")
    assert record in (None, ThreadRecord(f"c{index}", ROOT, "alpha", f"c{index}"))
    assert await backend.count() == 2 + CALLERS - 1 + (record is not None)


async def test_2000_calls_under_random_deadlines_each_settle_and_redis_agrees(
    backend: RedisBackend,
) -> None:
    """Each extend (then prune) runs under ``asyncio.wait_for`` with a random deadline, a few
    callers are also cancelled outright: every call returns or raises TimeoutError or
    CancelledError, none stays pending, the batcher empties, and Redis holds exactly what the
    callers were told (plus, for calls whose caller left, either outcome).

    A quarter of the deadlines are long: before the fix such a call, shipped in the pipeline of
    a caller whose short deadline expired, waited out its whole deadline.
    """
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    calls = 2000
    entry = b"<Ask><n>1</n></Ask>"
    extended: dict[int, ThreadRecord] = {}
    extend_unknown: set[int] = set()
    pruned: dict[int, PruneResult] = {}
    prune_unknown: set[int] = set()

    def deadline() -> float:
        return 60.0 if rng.random() < 0.25 else rng.uniform(0.0, 0.004)

    async def one(n: int, extend_timeout: float, prune_timeout: float | None) -> None:
        child = f"s{n}"
        try:
            record = await asyncio.wait_for(
                backend.extend(ROOT, child, "alpha", entry), extend_timeout
            )
        except (TimeoutError, asyncio.CancelledError):
            extend_unknown.add(n)
            raise
        assert record is not None
        extended[n] = record
        if prune_timeout is None:
            return
        try:
            result = await asyncio.wait_for(backend.prune(child, entry), prune_timeout)
        except (TimeoutError, asyncio.CancelledError):
            prune_unknown.add(n)
            raise
        assert result is not None
        pruned[n] = result

    tasks = [
        asyncio.ensure_future(one(n, deadline(), deadline() if rng.random() < 0.5 else None))
        for n in range(calls)
    ]
    for _ in range(40):  # and some callers are cancelled outright, at random moments
        await asyncio.sleep(rng.uniform(0.0, 0.002))
        tasks[rng.randrange(calls)].cancel()
    _, pending = await asyncio.wait(tasks, timeout=SETTLE_BOUND)
    for task in pending:
        task.cancel()
    assert not pending, f"{len(pending)} of {calls} calls still pending (seed {seed})"
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            assert isinstance(task.exception(), TimeoutError), (seed, task.exception())
    assert extended, f"no extend succeeded (seed {seed})"
    await settled(batcher_of(backend))

    existing = 1  # the warm-up record
    for n in range(calls):
        child = f"s{n}"
        record = await backend.get(child)
        expected = ThreadRecord(child, ROOT, "alpha", child)
        if n in pruned:
            assert pruned[n] == PruneResult("organism", ROOT, child, True), seed
            assert record is None, (seed, n)
        elif n in extended and n not in prune_unknown:
            assert extended[n] == expected, seed
            assert record == expected, (seed, n)
            assert await backend.history(child) == [entry], (seed, n)
        else:  # the caller left: either outcome, but a whole one
            assert n in extend_unknown or n in prune_unknown, (seed, n)
            assert record in (None, expected), (seed, n)
        existing += record is not None
    assert await backend.count() == 1 + existing, seed


async def test_a_pipeline_whose_connection_is_killed_settles_every_call_with_the_error(
    redis_server: RedisServer, redis_url: str
) -> None:
    """CLIENT KILL while a pipeline of 20 calls waits for its reply: each caller gets the
    connection error (no retries here), promptly; the next call reconnects and works."""
    client = aioredis.Redis.from_url(
        redis_url, retry=Retry(NoBackoff(), 0), client_name="batch-under-test"
    )
    admin = aioredis.Redis.from_url(redis_url)
    script = client.register_script("return ARGV[1]")
    batcher = ScriptBatcher(client, [script], max_in_flight=1)
    try:
        assert await batcher.call(script, (), ("warm",)) == b"warm"
        ids = [c["id"] for c in await admin.client_list() if c["name"] == "batch-under-test"]
        assert ids
        with redis_server.busy_script(0.3):
            tasks = [
                asyncio.ensure_future(batcher.call(script, (), (str(n),))) for n in range(CALLERS)
            ]
            await asyncio.sleep(0.05)
            assert batcher.in_flight == CALLERS
            # Queued behind the busy script, with the pipeline: its reply is never written.
            pipe = admin.pipeline(transaction=False)
            for client_id in ids:
                pipe.execute_command("CLIENT", "KILL", "ID", client_id)
            killed = asyncio.ensure_future(pipe.execute())
            _, pending = await asyncio.wait(tasks, timeout=SETTLE_BOUND)
            assert await killed == [1] * len(ids)  # each connection found and killed
        for task in pending:
            task.cancel()
        assert not pending, f"{len(pending)} of {CALLERS} calls stranded"
        errors = [task.exception() for task in tasks]
        assert all(isinstance(error, RedisConnectionError) for error in errors), errors
        await settled(batcher)
        assert await batcher.call(script, (), ("after",)) == b"after"
    finally:
        await client.aclose()
        await admin.aclose()


async def test_aclose_settles_calls_in_the_air_and_waiting_and_the_batcher_works_after(
    redis_server: RedisServer, redis_url: str
) -> None:
    """Closing abandons pipelines in the air and calls not yet sent: each caller gets
    `BatcherClosedError` at once (not after Redis answers), saying whether its script ran."""
    client = aioredis.Redis.from_url(redis_url)
    script = client.register_script("return ARGV[1]")
    batcher = ScriptBatcher(client, [script], max_in_flight=1)
    try:
        assert await batcher.call(script, (), ("warm",)) == b"warm"
        with redis_server.busy_script(0.3):
            in_air = [
                asyncio.ensure_future(batcher.call(script, (), (str(n),))) for n in range(CALLERS)
            ]
            await asyncio.sleep(0.05)
            not_sent = [
                asyncio.ensure_future(batcher.call(script, (), (str(n),))) for n in range(5)
            ]
            await asyncio.sleep(0)
            assert batcher.in_flight == CALLERS and batcher.waiting == 5
            await batcher.aclose()
            # Settled before the busy script ends: closing does not wait for Redis.
            assert all(task.done() for task in in_air + not_sent)
        errors: list[Any] = [task.exception() for task in in_air + not_sent]
        assert all(isinstance(error, BatcherClosedError) for error in errors), errors
        assert all("may have run" in str(error) for error in errors[:CALLERS]), errors[0]
        assert all("did not run" in str(error) for error in errors[CALLERS:]), errors[-1]
        await settled(batcher)
        assert await batcher.call(script, (), ("after",)) == b"after"
    finally:
        await client.aclose()


async def test_a_lone_caller_is_one_round_trip_and_concurrent_callers_share_them(
    redis_url: str,
) -> None:
    """The point of batching, pinned by the server's count of replies written: one call alone
    is one round trip; 200 concurrent calls travel in a few pipelines, not 200 round trips."""
    client = aioredis.Redis.from_url(redis_url)
    script = client.register_script("return ARGV[1]")
    batcher = ScriptBatcher(client, [script], max_in_flight=4)

    async def round_trips(calls: int) -> int:
        before = (await client.info("stats"))["total_writes_processed"]
        results = await asyncio.gather(*(batcher.call(script, (), (str(n),)) for n in range(calls)))
        assert results == [str(n).encode() for n in range(calls)]
        after = (await client.info("stats"))["total_writes_processed"]
        return int(after - before) - 1  # the second INFO's own reply

    try:
        await asyncio.gather(*(batcher.call(script, (), ("warm",)) for _ in range(20)))
        assert await round_trips(1) == 1
        assert await round_trips(200) <= 8
    finally:
        await client.aclose()


async def test_aclose_before_the_sender_ever_ran_settles_the_queue_and_the_batcher_recovers(
    redis_url: str,
) -> None:
    """A sender cancelled before its first step never runs its ``finally``: its calls still
    fail at once ("did not run") and the next call starts a new sender."""
    client = aioredis.Redis.from_url(redis_url)
    script = client.register_script("return ARGV[1]")
    batcher = ScriptBatcher(client, [script], max_in_flight=1)
    try:
        tasks = [asyncio.ensure_future(batcher.call(script, (), (str(n),))) for n in range(5)]
        await asyncio.sleep(0)  # the callers queued and started a sender, which has not run
        assert batcher.waiting == 5 and batcher.senders == 1 and batcher.in_flight == 0
        await batcher.aclose()
        _, pending = await asyncio.wait(tasks, timeout=SETTLE_BOUND)
        assert not pending
        errors = [task.exception() for task in tasks]
        assert all(isinstance(e, BatcherClosedError) and not e.sent for e in errors), errors
        await settled(batcher)
        assert await batcher.call(script, (), ("after",)) == b"after"
    finally:
        await client.aclose()


async def test_a_sender_cancelled_from_outside_settles_its_batch_and_hands_on_the_queue(
    redis_server: RedisServer, redis_url: str
) -> None:
    """Whatever ends a sender (here a cancel that is not ours, as at loop shutdown), the calls
    it took are settled ("may have run") and the calls still queued are sent by a new one."""
    client = aioredis.Redis.from_url(redis_url)
    script = client.register_script("return ARGV[1]")
    batcher = ScriptBatcher(client, [script], max_in_flight=1)
    try:
        assert await batcher.call(script, (), ("warm",)) == b"warm"
        with redis_server.busy_script(0.3):
            in_air = [
                asyncio.ensure_future(batcher.call(script, (), (str(n),))) for n in range(CALLERS)
            ]
            await asyncio.sleep(0.05)
            queued = [asyncio.ensure_future(batcher.call(script, (), (f"q{n}",))) for n in range(5)]
            await asyncio.sleep(0)
            assert batcher.in_flight == CALLERS and batcher.waiting == 5
            (sender,) = batcher._tasks
            sender.cancel()
            _, pending = await asyncio.wait(in_air + queued, timeout=SETTLE_BOUND)
        assert not pending
        errors = [task.exception() for task in in_air]
        assert all(isinstance(e, BatcherClosedError) and e.sent for e in errors), errors
        assert [task.result() for task in queued] == [f"q{n}".encode() for n in range(5)]
        await settled(batcher)
    finally:
        await client.aclose()


async def test_each_call_of_a_shared_script_run_gets_its_own_reply_or_error(
    redis_url: str,
) -> None:
    """Calls that travel in one script run (the batcher's dispatcher, 64 calls per run) reply
    as they would alone: a value, nil, a nested table, the script's error reply, a failed
    command or a Lua error, each to its own caller, in order, across several runs."""
    client = aioredis.Redis.from_url(redis_url)
    scripts = {
        "echo": client.register_script("return ARGV[1]"),
        "nothing": client.register_script("local x = ARGV[1]"),
        "table": client.register_script("return {ARGV[1], false, 3}"),
        "refuse": client.register_script("return redis.error_reply('NOPE ' .. ARGV[1])"),
        "command": client.register_script("return redis.call('INCR', KEYS[1])"),
        "lua": client.register_script("return nil + ARGV[1]"),
    }
    batcher = ScriptBatcher(client, list(scripts.values()), max_in_flight=1)
    await client.set("text", "not a number")
    names = list(scripts)
    calls = [(names[n % len(names)], str(n)) for n in range(200)]
    try:
        await batcher.call(scripts["echo"], (), ("warm",))  # the next calls share round trips
        results = await asyncio.gather(
            *(
                batcher.call(scripts[name], ("text",) if name == "command" else (), (arg,))
                for name, arg in calls
            ),
            return_exceptions=True,
        )
        for (name, arg), result in zip(calls, results, strict=True):
            if name == "echo":
                assert result == arg.encode()
            elif name == "nothing":
                assert result is None
            elif name == "table":
                assert result == [arg.encode(), None, 3]
            elif name == "refuse":
                assert isinstance(result, ResponseError) and str(result) == f"NOPE {arg}"
            elif name == "command":
                assert isinstance(result, ResponseError) and "not an integer" in str(result)
            else:
                assert isinstance(result, ResponseError) and "arithmetic" in str(result)
        with pytest.raises(KeyError):
            await batcher.call(client.register_script("return 1"), (), ())
        await settled(batcher)
    finally:
        await client.aclose()
