"""Coalescing of concurrent Lua script calls into pipelines (automatic pipelining).

A round trip costs far more client CPU than a script call does (about 60 us against a few us
on the machine class we target), so one script call per hop in its own round trip caps a pump at
a few thousand hops per second. `ScriptBatcher` sends every call that is waiting as one pipeline:
with one caller it is a plain call; with many, each round trip carries many calls. Each call is
still one atomic script; only the round trips are shared.

How a pipeline is sent: each call is packed (``EVALSHA``) when it is queued, a pipeline is the
concatenation of its calls, written at once on a connection from the client's blocking pool and
answered by one reply per call, under the client's retry policy. redis-py's ``Pipeline`` object
does the same with about three times the client CPU per call (command packing, a timer per reply,
response callbacks): 17-21 us against 5-9 (pipelines of 32, with and without hiredis).

Who sends: *sender* tasks owned by the batcher, never a caller. A caller queues its call and
awaits its own future, nothing else. A call that finds no sender about to start, and fewer than
``max_in_flight`` senders, starts one; a sender takes every call waiting (up to 512) as one
pipeline, hands each caller its reply, takes the next batch until none is waiting, then ends.
Callers that arrive in the same loop iteration share the starting sender's pipeline; callers
that arrive while pipelines are in the air share the next one.

Why not a caller: an earlier design had no task of its own; the caller that found a free slot
sent the pipeline for every caller waiting, shielded by an anyio cancel scope. A plain asyncio
``task.cancel()`` goes through such a shield, so a cancelled leader abandoned the other calls of
its pipeline and their callers waited for ever (issue 9). Shared work must not depend on any
one caller staying; the price is one task per busy period, not per call.

What a caller can rely on (each is a test in ``tests/backends/test_redis_batch.py``):

- its call is settled exactly once: the script's reply, the script's error, the pipeline's
  error (connection lost, timeout: the same for every call of that pipeline), or
  `BatcherClosedError` (its ``sent`` tells whether the script may have run);
- if it leaves (cancelled, timed out) before a sender took its call, the call is dropped: the
  script does not run;
- if it leaves after that, it cannot know whether the script ran: the pipeline goes on and the
  reply is discarded. The script may even run after the caller has left, for as long as the
  pipeline is in the air (the client's timeouts and retries), and later still if the server was
  stalled and reads the request once it resumes;
- every call a sender took is settled in a ``finally``, whatever ends the sender (a reply, an
  error, `ScriptBatcher.aclose`, the event loop shutting down).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["BatcherClosedError", "ScriptBatcher"]

# redis-py leaves the concrete pools' ``get_connection`` unannotated.
_GetConnection = Callable[[], Awaitable[AbstractConnection]]

_MAX_BATCH = 512


class BatcherClosedError(RedisError):
    """The batcher stopped (`ScriptBatcher.aclose`, or its event loop shut down) before the
    call's reply arrived.

    Attributes:
        sent: the call had left in a pipeline, so its script may have run; ``False`` when it
            had not been sent and its script did not run.
    """

    def __init__(self, sent: bool) -> None:
        self.sent = sent
        if sent:
            message = "stopped while the call's pipeline was in the air: the script may have run"
        else:
            message = "stopped before the call was sent: the script did not run"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.sent,)


class _Call:
    __slots__ = ("future", "packed", "script", "settled")

    def __init__(self, script: AsyncScript, packed: bytes, future: asyncio.Future[Any]) -> None:
        self.script = script
        self.packed = packed
        self.future = future
        self.settled = False


def _pack(script: AsyncScript, keys: Sequence[str | bytes], args: Sequence[str | bytes]) -> bytes:
    """``EVALSHA sha len(keys) *keys *args`` in the Redis protocol (RESP), text as UTF-8.

    Written here rather than with redis-py's ``pack_command``, which costs several times as
    much per call (it re-joins the buffer for every argument).
    """
    parts = [
        b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n" % (3 + len(keys) + len(args), script.sha.encode())
    ]
    count = b"%d" % len(keys)
    parts.append(b"$%d\r\n%s\r\n" % (len(count), count))
    for arg in (*keys, *args):
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class ScriptBatcher:
    """Runs script calls for many concurrent callers, sharing round trips between them.

    Raises:
        ValueError: ``max_in_flight`` < 1.
    """

    def __init__(self, client: aioredis.Redis, *, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight!r}")
        self._client = client
        self._max_senders = max_in_flight
        self._waiting: deque[_Call] = deque()
        self._in_flight = 0
        self._senders = 0
        # A sender that was started and has not taken its first batch: callers just queue.
        self._starting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        """Calls queued and not yet taken by a sender (those whose callers left included)."""
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        """Calls taken into a pipeline and not yet settled."""
        return self._in_flight

    @property
    def senders(self) -> int:
        """Sender tasks alive (at most ``max_in_flight``)."""
        return self._senders

    async def call(
        self, script: AsyncScript, keys: Sequence[str | bytes], args: Sequence[str | bytes]
    ) -> Any:
        """``script(keys, args)``, possibly in one pipeline with other callers' calls.

        Cancelling the caller never affects another caller's call. It drops this call if no
        pipeline has taken it yet; otherwise the script may or may not run (see the module
        docstring).

        Raises:
            redis.exceptions.RedisError: the call failed (after the client's retries), or
                `BatcherClosedError`.
        """
        loop = asyncio.get_running_loop()
        call = _Call(script, _pack(script, keys, args), loop.create_future())
        self._waiting.append(call)
        if self._starting is None and self._senders < self._max_senders:
            self._start_sender(loop)
        return await call.future

    async def aclose(self) -> None:
        """Settle every unanswered call with `BatcherClosedError` now, without waiting for
        Redis; pipelines in the air are abandoned (their connections closed by redis-py).

        The batcher stays usable: a later call starts a new sender.
        """
        waiting, self._waiting = self._waiting, deque()
        for call in waiting:
            if not call.future.done():
                call.future.set_exception(BatcherClosedError(sent=False))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # -- senders ------------------------------------------------------------------------------

    def _start_sender(self, loop: asyncio.AbstractEventLoop) -> None:
        self._senders += 1
        task = loop.create_task(self._run_sender())
        self._starting = task
        self._tasks.add(task)
        task.add_done_callback(self._sender_done)

    async def _run_sender(self) -> None:
        self._starting = None
        batch: list[_Call] = []
        try:
            while True:
                batch = self._take()
                if not batch:
                    return
                try:
                    await self._send(batch)
                except Exception as exc:  # a defect of ours: its callers get it, not a hang
                    for call in batch:
                        self._settle(call, exc)
        finally:
            self._senders -= 1
            # Normally a no-op: _send settled the whole batch. Not when the sender is cancelled
            # (aclose, the loop's shutdown) or interrupted in the middle of a pipeline.
            for call in batch:
                if not call.settled:
                    self._settle(call, BatcherClosedError(sent=True))
            self._restart_if_needed()

    def _sender_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a BaseException already went up through the loop
        if self._starting is task:  # cancelled before it ever ran: its finally never ran
            self._starting = None
            self._senders -= 1
            self._restart_if_needed()

    def _restart_if_needed(self) -> None:
        """No sender left: start one if live calls would otherwise wait for ever.

        Only a sender that ended early (cancelled, perhaps before it ever ran) can leave calls
        waiting; after a normal end nothing is waiting and this costs nothing.
        """
        if self._starting is not None or self._senders or not self._waiting:
            return  # a sender alive takes what is waiting once its pipeline is answered
        live = [call for call in self._waiting if not call.future.done()]
        self._waiting = deque(live)  # the others' callers left: nobody will take them
        if live:
            self._start_sender(live[0].future.get_loop())

    def _take(self) -> list[_Call]:
        waiting = self._waiting
        batch: list[_Call] = []
        while waiting and len(batch) < _MAX_BATCH:
            call = waiting.popleft()
            if not call.future.done():  # done: its caller left before it was sent
                batch.append(call)
        self._in_flight += len(batch)
        return batch

    def _settle(self, call: _Call, result: Any) -> None:
        if call.settled:
            return
        call.settled = True
        self._in_flight -= 1
        future = call.future
        if future.done():  # its caller left while the pipeline was in the air
            return
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            results = await self._exchange(batch)
        except Exception as exc:
            for call in batch:
                self._settle(call, exc)
            return
        missing = []
        for call, result in zip(batch, results, strict=True):
            if isinstance(result, NoScriptError):
                missing.append(call)
            else:
                self._settle(call, result)  # these ran: their outcome is final, whatever follows
        if not missing:
            return
        # The server lost its scripts (restart, SCRIPT FLUSH): none of these ran.
        try:
            for script in {id(call.script): call.script for call in missing}.values():
                await self._client.script_load(script.script)
            retried = await self._exchange(missing)
        except Exception as exc:
            for call in missing:
                self._settle(call, exc)
            return
        for call, result in zip(missing, retried, strict=True):
            self._settle(call, result)

    async def _exchange(self, batch: list[_Call]) -> list[Any]:
        """Each call's reply (or its script's error), in order, over one pooled connection.

        The client's retry policy applies to the whole exchange, as to a redis-py pipeline:
        after a connection error or timeout, the connection is dropped and every call is sent
        again (the scripts are written to be run twice: see the receipts in ``redis.py``).
        """
        pool = self._client.connection_pool
        connection = await cast("_GetConnection", pool.get_connection)()
        answered = False
        try:
            replies = await connection.retry.call_with_retry(
                lambda: _round_trip(connection, batch), lambda _error: connection.disconnect()
            )
            answered = True
            return replies
        finally:
            if not answered and connection.is_connected:
                # Left mid-exchange (cancelled): replies may still be due on this socket, and
                # the next user of the connection would read them as its own.
                await connection.disconnect(nowait=True)
            await pool.release(connection)


async def _round_trip(connection: AbstractConnection, batch: list[_Call]) -> list[Any]:
    """Write every call of the batch at once and read one reply per call.

    One deadline (the connection's ``socket_timeout``) covers the whole exchange: redis-py
    arms a timer for every reply it reads when the socket timeout is set on the connection,
    which cost about 4 us per call, more than packing and parsing it (measured: 9.0 against
    4.8 us of client CPU per call, pipelines of 32, hiredis). The connection is ours alone
    until it is released, so the setting is lifted for the exchange and restored after it.
    """
    timeout = connection.socket_timeout
    connection.socket_timeout = None
    try:
        async with asyncio.timeout(timeout):
            await connection.send_packed_command(b"".join([call.packed for call in batch]))
            replies: list[Any] = []
            for _ in batch:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as exc:  # the script's error: that call's outcome only
                    replies.append(exc)
            return replies
    except TimeoutError:  # our deadline (asyncio's); redis-py's own is another class
        await connection.disconnect(nowait=True)
        raise RedisTimeoutError(
            f"Timeout reading the replies to {len(batch)} script calls "
            f"(socket_timeout {timeout:g} s)"
        ) from None
    finally:
        connection.socket_timeout = timeout
