"""Each way Redis can fail gets its own accurate message: what happened, where, what to do.

Real failures only: a private redis-server frozen with SIGSTOP, one kept busy by another
client's Lua loop, one that wants a password, a port nobody listens on, a host that does not
resolve, a listener whose accept queue is full, and a server that drops every connection.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.redis_server import RedisServer, free_port
from xml_pipeline._errors import BackendError
from xml_pipeline.backends import RedisBackend, ThreadRecord

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

ROOT = "root"
START_REDIS = "start redis-server"


async def failure(backend: RedisBackend, operation: str = "extend") -> BackendError:
    """The `BackendError` of one operation (``open`` or ``extend``), which must fail."""
    with pytest.raises(BackendError) as caught:
        if operation == "open":
            await backend.open()
        else:
            await backend.extend(ROOT, "child", "alpha")
    return caught.value


@pytest.mark.slow
async def test_a_frozen_server_did_not_answer_within_the_timeout_not_start_redis() -> None:
    """SIGSTOP: connections are accepted, nothing is answered. The message names the timeout
    (from the URL), the operation and what to do; the backend works again after SIGCONT."""
    with RedisServer() as server:
        backend = RedisBackend(server.url + "?socket_timeout=0.5")
        try:
            await backend.open()
            await backend.put_root(ROOT, "organism")
            server.pause()
            try:
                error = await failure(backend)
                fresh = RedisBackend(server.url + "?socket_timeout=0.5")
                try:
                    at_open = await failure(fresh, "open")
                finally:
                    await fresh.aclose()
            finally:
                server.resume()
            for problem, operation in ((error, "extend"), (at_open, "open")):
                message = problem.message
                assert problem.reason == "backend_unreachable"
                assert f"redis at {server.url}" in message
                assert "did not answer within 0.5 s" in message
                assert f"during {operation}" in message
                assert "SLOWLOG" in message and "?socket_timeout=" in message
                assert START_REDIS not in message
            assert await backend.extend(ROOT, "after", "alpha") is not None
            # The extend that timed out was read by the server once it resumed: it may have run.
            ran = ThreadRecord("child", ROOT, "alpha", "child")
            assert await backend.get("child") in (None, ran)
        finally:
            await backend.aclose()


async def test_an_exhausted_pool_says_no_connection_came_free_not_dropped() -> None:
    """The only pooled connection waits for a frozen server: the next operation that needs a
    connection gives up after the pool timeout (``?timeout=`` in the URL) and says so."""
    with RedisServer() as server:
        backend = RedisBackend(server.url + "?timeout=0.3", max_connections=1)
        try:
            await backend.open()
            await backend.put_root(ROOT, "organism")
            server.pause()
            try:
                holding = asyncio.ensure_future(backend.extend(ROOT, "held", "alpha"))
                await asyncio.sleep(0.05)
                with pytest.raises(BackendError) as caught:
                    await backend.history("held")
            finally:
                server.resume()
            assert await holding is not None
            message = caught.value.message
            assert caught.value.reason == "backend_unreachable"
            assert "no pooled connection came free within 0.3 s" in message
            assert "during history" in message and "all 1 were busy" in message
            assert "backend.redis_max_connections" in message
            assert START_REDIS not in message and "dropped" not in message
        finally:
            await backend.aclose()


async def test_a_busy_script_is_reported_as_busy_for_a_lone_call_and_a_pipeline() -> None:
    """Another client's script past busy-reply-threshold: BUSY, said as such, with SCRIPT KILL;
    every call of a shared pipeline gets it."""
    with RedisServer() as server:
        with server.client() as admin:
            admin.config_set("busy-reply-threshold", 100)
        backend = RedisBackend(server.url)
        try:
            await backend.open()
            await backend.put_root(ROOT, "organism")
            with server.busy_script(1.0):
                await asyncio.sleep(0.2)  # past the threshold: the server answers BUSY
                errors = [await failure(backend)]
                outcomes = await asyncio.gather(
                    *(backend.extend(ROOT, f"c{n}", "alpha") for n in range(20)),
                    return_exceptions=True,
                )
            errors += outcomes  # type: ignore[arg-type]
            assert all(isinstance(error, BackendError) for error in errors), errors
            for error in errors:
                message = error.message
                assert error.reason == "backend_unreachable"
                assert "busy running another client's script" in message
                assert "refused extend" in message and "SCRIPT KILL" in message
                assert START_REDIS not in message
            assert await backend.extend(ROOT, "after", "alpha") is not None
            assert await backend.get("c0") is None  # a BUSY call did not run
        finally:
            await backend.aclose()


async def test_a_refused_connection_says_nothing_listens_there_and_start_redis() -> None:
    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0")
    try:
        error = await failure(backend, "open")
    finally:
        await backend.aclose()
    assert error.reason == "backend_unreachable"
    assert "nothing listens there" in error.message and START_REDIS in error.message
    assert "did not answer" not in error.message


async def test_an_unknown_host_says_fix_the_host_not_start_redis() -> None:
    backend = RedisBackend("redis://no-such-host.invalid:6379/0")
    try:
        error = await failure(backend, "open")
    finally:
        await backend.aclose()
    assert error.reason == "backend_unreachable"
    assert "host name is not known" in error.message
    assert "no-such-host.invalid" in error.message and "backend.redis_url" in error.message
    assert START_REDIS not in error.message


@pytest.fixture
def full_listener() -> Iterator[int]:
    """A port whose accept queue is full: connection attempts get no answer at all."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for sock in [*fillers, listener]:
            sock.close()


async def test_a_connect_timeout_names_the_connect_timeout(full_listener: int) -> None:
    backend = RedisBackend(f"redis://127.0.0.1:{full_listener}/0?socket_connect_timeout=0.2")
    try:
        error = await failure(backend, "open")
    finally:
        await backend.aclose()
    assert error.reason == "backend_unreachable"
    assert "did not accept a connection within 0.2 s" in error.message
    assert "?socket_connect_timeout=" in error.message and "during open" in error.message
    assert START_REDIS not in error.message


@pytest.fixture
def dropping_server() -> Iterator[int]:
    """A TCP server that accepts every connection and closes it at once."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


async def test_a_dropped_connection_says_so_and_points_at_the_server_log(
    dropping_server: int,
) -> None:
    backend = RedisBackend(f"redis://127.0.0.1:{dropping_server}/0")
    try:
        error = await failure(backend, "open")
    finally:
        await backend.aclose()
    assert error.reason == "backend_unreachable"
    assert "dropped the connection" in error.message and "server's log" in error.message
    assert START_REDIS not in error.message


async def test_refused_credentials_say_fix_the_password_and_never_show_it() -> None:
    with RedisServer() as server:
        with server.client() as admin:
            admin.config_set("requirepass", "right-one")
        for url in (server.url, server.url.replace("//", "//:wrong-one@")):
            backend = RedisBackend(url)
            try:
                error = await failure(backend, "open")
            finally:
                await backend.aclose()
            assert error.reason == "backend_error"
            assert "refused this client" in error.message and "password" in error.message
            assert "wrong-one" not in error.message and "right-one" not in error.message
            assert START_REDIS not in error.message
        backend = RedisBackend(server.url.replace("//", "//:right-one@"))
        try:
            await backend.open()
        finally:
            await backend.aclose()


async def test_closing_the_backend_fails_calls_in_the_air_saying_they_may_have_run(
    redis_server: RedisServer, redis_url: str
) -> None:
    backend = RedisBackend(redis_url)
    await backend.open()
    await backend.put_root(ROOT, "organism")
    with redis_server.busy_script(0.3):
        calls = [asyncio.ensure_future(backend.extend(ROOT, f"c{n}", "alpha")) for n in range(5)]
        await asyncio.sleep(0.05)
        await backend.aclose()
        _, pending = await asyncio.wait(calls, timeout=0.1)
    assert not pending
    for call in calls:
        error = call.exception()
        assert isinstance(error, BackendError), error
        assert error.reason == "backend_error"
        assert "closed during extend, which may have run" in error.message
