"""What only the Redis backend does: scripts, pooling, prefixes, outages, no KEYS."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import pytest
import redis

from tests.redis_server import RedisServer, free_port
from xml_pipeline._errors import BackendError
from xml_pipeline.backends import PruneResult, RedisBackend

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

ROOT = "root"


@pytest.fixture
async def backend(redis_url: str) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(redis_url)
    await backend.open()
    await backend.put_root(ROOT, "organism")
    try:
        yield backend
    finally:
        await backend.aclose()


async def converse(backend: RedisBackend, name: str) -> PruneResult | None:
    """One short conversation: root -> a -> b, b answers, a answers."""
    await backend.extend(ROOT, f"{name}-a", "alpha", b"<ask/>")
    await backend.extend(f"{name}-a", f"{name}-b", "beta", b"<b/>")
    await backend.prune(f"{name}-b", b"<b-done/>")
    return await backend.prune(f"{name}-a", b"<answer/>")


async def test_keys_command_is_disabled_on_the_test_server(redis_server: RedisServer) -> None:
    """The test server refuses KEYS, so every passing Redis test shows KEYS is never used."""
    with redis_server.client() as client, pytest.raises(redis.ResponseError, match="unknown"):
        client.keys("*")


async def test_scripts_are_reloaded_after_script_flush(
    backend: RedisBackend, redis_server: RedisServer
) -> None:
    """NOSCRIPT (a restart, SCRIPT FLUSH) reloads the scripts, alone or in a pipeline."""
    assert await converse(backend, "before") is not None
    with redis_server.client() as client:
        client.script_flush()
    assert await converse(backend, "single") is not None  # one call at a time
    with redis_server.client() as client:
        client.script_flush()

    results: list[PruneResult | None] = []

    async def run(n: int) -> None:
        results.append(await converse(backend, f"many{n}"))

    async with anyio.create_task_group() as tg:  # calls that share pipelines
        for n in range(50):
            tg.start_soon(run, n)
    assert len(results) == 50
    assert all(result is not None and result.conversation_ended for result in results)
    assert await backend.count() == 1


async def test_blocking_pool_serves_500_concurrent_operations_on_4_connections(
    redis_url: str, redis_server: RedisServer
) -> None:
    """Callers wait for a free connection instead of failing with MaxConnectionsError."""
    backend = RedisBackend(redis_url, max_connections=4)
    await backend.open()
    try:
        await backend.put_root(ROOT, "organism")
        done = 0

        async def operate(n: int) -> None:
            nonlocal done
            assert await converse(backend, f"c{n}") is not None
            assert await backend.history(f"c{n}-a") == []  # a plain command, not a script
            done += 1

        async with anyio.create_task_group() as tg:
            for n in range(500):
                tg.start_soon(operate, n)
        assert done == 500
        assert await backend.count() == 1
        with redis_server.client() as client:
            # The test's own client plus at most the pool's connections.
            assert len(client.client_list()) <= 1 + 4
    finally:
        await backend.aclose()


async def test_prefixes_keep_organisms_apart(redis_url: str, redis_server: RedisServer) -> None:
    """Two organisms on one Redis, same thread ids, different prefixes: never crossed."""
    first = RedisBackend(redis_url, prefix="one:")
    second = RedisBackend(redis_url, prefix="two:")
    await first.open()
    await second.open()
    try:
        await first.put_root(ROOT, "first")
        await second.put_root(ROOT, "second")
        await first.extend(ROOT, "a", "alpha", b"<one/>")
        await second.extend(ROOT, "a", "omega", b"<two/>")
        await first.extend("a", "b", "beta")

        assert await second.get("b") is None
        assert await second.chain("a") == ["second", "omega"]
        assert await first.count() == 3
        assert await second.count() == 2
        assert await second.prune("a") == PruneResult("second", ROOT, "a", True)
        assert await first.history("a") == [b"<one/>"]
        assert await first.chain("b") == ["first", "alpha", "beta"]

        with redis_server.client() as client:
            keys = [key.decode() for key in client.scan_iter(count=1000)]
        assert keys
        assert all(key.startswith(("one:", "two:")) for key in keys), keys
    finally:
        await first.aclose()
        await second.aclose()


async def test_prefix_may_hold_any_characters(redis_url: str) -> None:
    backend = RedisBackend(redis_url, prefix="org \"x\" 'y' \\ \n ✓:")
    await backend.open()
    try:
        await backend.put_root(ROOT, "organism")
        assert await converse(backend, "c") is not None
        assert await backend.count() == 1
    finally:
        await backend.aclose()


async def test_records_have_sliding_ttls_and_the_root_none(
    backend: RedisBackend, redis_server: RedisServer
) -> None:
    await backend.extend(ROOT, "a", "alpha", b"<ask/>")
    await backend.extend("a", "b", "beta")
    with redis_server.client() as client:
        assert client.pttl("xp:t:root") == -1
        for key in ("xp:t:a", "xp:t:b", "xp:c:a", "xp:h:a"):
            assert 3_500_000 < client.pttl(key) <= 3_600_000, key


async def test_a_retried_prune_gets_the_answer_of_the_attempt_that_ran(
    backend: RedisBackend,
) -> None:
    """A prune whose reply was lost is retried with the same token: same answer, not None.

    Any other caller still finds the thread gone.
    """
    await backend.extend(ROOT, "a", "alpha")
    await backend.extend("a", "b", "beta")
    script = backend._scripts["prune"]
    first = await script((), ("b", "token-1", b"<done/>"))
    retried = await script((), ("b", "token-1", b"<done/>"))
    assert first == retried == b"alpha\0a\0a\x000"
    assert await script((), ("b", "token-2")) is None
    assert await backend.prune("b") is None
    assert await backend.history("a") == [b"<done/>"]


async def test_unreachable_url_names_the_url_cause_and_remedy() -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    backend = RedisBackend(url)
    started = time.monotonic()
    try:
        with pytest.raises(BackendError) as caught:
            await backend.open()
    finally:
        await backend.aclose()
    assert time.monotonic() - started < 10
    error = caught.value
    assert error.reason == "backend_unreachable"
    assert "127.0.0.1" in error.message
    assert "s3cret" not in error.message  # the password stays out of messages
    assert "refused" in error.message.lower()
    assert "start redis-server" in error.message
    assert "backend.redis_url" in error.message


async def test_operations_fail_while_redis_is_down_and_work_after_a_restart() -> None:
    """A killed server: operations raise BackendError promptly, then succeed on restart."""
    with RedisServer() as server:
        backend = RedisBackend(server.url, max_connections=8)
        await backend.open()
        try:
            await backend.put_root(ROOT, "organism")
            assert await converse(backend, "before") is not None
            await backend.extend(ROOT, "open", "alpha")

            server.stop()
            failures: list[BackendError] = []

            async def attempt(n: int) -> None:
                try:
                    await converse(backend, f"down{n}")
                except BackendError as exc:
                    failures.append(exc)

            started = time.monotonic()
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for n in range(20):
                        tg.start_soon(attempt, n)
            assert len(failures) == 20
            assert time.monotonic() - started < 15
            assert {failure.reason for failure in failures} == {"backend_unreachable"}
            assert server.url.split("//")[1].split("/")[0] in failures[0].message
            # A killed server is one where nothing listens: the message says to start one.
            assert all("nothing listens there" in f.message for f in failures), failures[0]
            assert all("start redis-server" in f.message for f in failures)

            server.start()  # same port, empty (nothing persisted), no scripts loaded
            await backend.put_root(ROOT, "organism")
            assert await converse(backend, "after") is not None
            assert await backend.get("open") is None
            assert await backend.count() == 1
        finally:
            await backend.aclose()


async def test_a_restart_between_operations_is_absorbed_by_reconnecting() -> None:
    """Pooled connections to a server that went away are replaced without an error."""
    with RedisServer() as server:
        backend = RedisBackend(server.url, max_connections=4)
        await backend.open()
        try:
            await backend.put_root(ROOT, "organism")
            async with anyio.create_task_group() as tg:  # fill the pool with connections
                for n in range(20):
                    tg.start_soon(converse, backend, f"warm{n}")
            server.stop()
            server.start()
            await backend.put_root(ROOT, "organism")
            assert await converse(backend, "after") is not None
            assert await backend.history("after-a") == []
        finally:
            await backend.aclose()


async def test_cancelled_callers_do_not_stall_the_others(backend: RedisBackend) -> None:
    """Callers cancelled while their call waits or is in a pipeline leave the rest working."""
    scopes: list[anyio.CancelScope] = []
    finished: list[int] = []

    async def call(n: int) -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await backend.extend(ROOT, f"c{n}", "alpha")
            await backend.prune(f"c{n}")
            finished.append(n)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for n in range(200):
                tg.start_soon(call, n)
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            for scope in scopes[::2]:
                scope.cancel()
    assert set(finished) >= set(range(1, 200, 2))
    for n in range(200):  # a cancelled extend may or may not have run
        await backend.retire_conversation(f"c{n}")
    assert await converse(backend, "after") is not None
    assert await backend.count() == 1
