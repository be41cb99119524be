"""Coalescing of concurrent Lua script calls into pipelines (automatic pipelining).

A round trip costs far more client CPU than a script call does (about 60 us against a few us
on the machine class we target), so one script call per hop in its own round trip caps a pump at
a few thousand hops per second. `ScriptBatcher` sends every call that is waiting as one pipeline:
with one caller it is a plain call; with many, each round trip carries many calls. Each call is
still one atomic script; only the round trips are shared.

How a pipeline is sent: the batcher knows its scripts (given at construction) and loads one
*dispatcher* script that holds each of them as a function. A pipeline is one ``EVALSHA`` of the
dispatcher per 64 calls, whose arguments list each call's script, keys and arguments; the
dispatcher runs the calls one after the other, each under ``pcall``, and replies with a table of
their replies, so that a call's error (a failed command, a Lua error) is that call's reply only,
as it would be alone. Each call stays atomic; so is each run of the dispatcher as a whole.
Against one ``EVALSHA`` per call this saves Redis about 2.5 us per call (the command's dispatch)
and the client a reply to read per call. The request is packed by us when each call is queued,
written at once on a connection of the client's blocking pool and read under the client's retry
policy; redis-py's ``Pipeline`` object does the same with about three times the client CPU per
call (command packing, a timer per reply, response callbacks).

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
# Calls per run of the dispatcher script: Redis serves no other client while a script runs, so
# a run is kept to about a millisecond of server time (64 hops of about 15 us).
_CALLS_PER_SCRIPT = 64


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
    __slots__ = ("future", "items", "packed", "settled")

    def __init__(self, packed: bytes, items: int, future: asyncio.Future[Any]) -> None:
        self.packed = packed  # the call's part of the dispatcher's ARGV, in RESP
        self.items = items  # how many arguments that part holds
        self.future = future
        self.settled = False


# Runs calls of the batcher's scripts in one EVALSHA: ARGV holds, for each call, the script's
# number, its count of keys and of arguments, then the keys and the arguments. Each call runs
# under pcall, so that its error (a failed command, a Lua error) is its own reply; a call that
# returns nothing replies nil, as it would alone (a nil would end the table of replies).
_DISPATCH = """
local out, n, i, last = {}, 0, 1, #ARGV
while i <= last do
  local f, nk, na = F[tonumber(ARGV[i])], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local keys = {unpack(ARGV, i + 3, i + 2 + nk)}
  local args = {unpack(ARGV, i + 3 + nk, i + 2 + nk + na)}
  i = i + 3 + nk + na
  local ok, reply = pcall(f, keys, args)
  if not ok then
    if type(reply) == 'table' and reply.err then
      reply = {err = reply.err}
    else
      reply = {err = 'ERR ' .. tostring(reply)}
    end
  elseif reply == nil then
    reply = false
  end
  n = n + 1
  out[n] = reply
end
return out
"""


def _dispatcher_source(scripts: Sequence[AsyncScript]) -> str:
    """One Lua script that runs any number of calls of ``scripts`` (numbered from 1)."""
    functions = [
        f"F[{number}] = function(KEYS, ARGV)\n{_text(script)}\nend"
        for number, script in enumerate(scripts, 1)
    ]
    return "\n".join(["local F = {}", *functions, _DISPATCH])


def _text(script: AsyncScript) -> str:
    source = script.script
    return source if isinstance(source, str) else bytes(source).decode()


def _argument(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return b"$%d\r\n%s\r\n" % (len(data), data)


class ScriptBatcher:
    """Runs calls of ``scripts`` for many concurrent callers, sharing round trips between them.

    Raises:
        ValueError: ``max_in_flight`` < 1, or no scripts.
    """

    def __init__(
        self, client: aioredis.Redis, scripts: Sequence[AsyncScript], *, max_in_flight: int
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight!r}")
        if not scripts:
            raise ValueError("a ScriptBatcher needs at least one script")
        self._client = client
        self._dispatcher = client.register_script(_dispatcher_source(scripts))
        self._sha = self._dispatcher.sha.encode()
        # Script -> its number in the dispatcher, as the first of a call's three counts.
        self._numbers = {script: _argument(str(n)) for n, script in enumerate(scripts, 1)}
        # (script, keys, arguments) -> the three counts that start a call of that shape.
        self._heads: dict[tuple[AsyncScript, int, int], bytes] = {}
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

    async def load(self) -> None:
        """Load the batcher's script into Redis now rather than at its first use.

        Raises:
            redis.exceptions.RedisError: Redis is unreachable or refused the script.
        """
        await self._client.script_load(self._dispatcher.script)

    async def call(
        self, script: AsyncScript, keys: Sequence[str | bytes], args: Sequence[str | bytes]
    ) -> Any:
        """``script(keys, args)``, possibly in one round trip with other callers' calls.

        Cancelling the caller never affects another caller's call. It drops this call if no
        pipeline has taken it yet; otherwise the script may or may not run (see the module
        docstring).

        Raises:
            KeyError: ``script`` is not one of the batcher's scripts.
            redis.exceptions.RedisError: the call failed (after the client's retries), or
                `BatcherClosedError`.
        """
        shape = (script, len(keys), len(args))
        head = self._heads.get(shape)
        if head is None:
            head = self._heads[shape] = b"".join(
                [self._numbers[script], _argument(str(len(keys))), _argument(str(len(args)))]
            )
        parts = [head]
        for value in (*keys, *args):  # inline: half the CPU of a helper call per argument
            data = value.encode() if isinstance(value, str) else value
            parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
        packed = b"".join(parts)
        loop = asyncio.get_running_loop()
        call = _Call(packed, 3 + len(keys) + len(args), loop.create_future())
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
            await self.load()
            retried = await self._exchange(missing)
        except Exception as exc:
            for call in missing:
                self._settle(call, exc)
            return
        for call, result in zip(missing, retried, strict=True):
            self._settle(call, result)

    async def _exchange(self, batch: list[_Call]) -> list[Any]:
        """Each call's reply (or its error), in order, over one pooled connection.

        The client's retry policy applies to the whole exchange, as to a redis-py pipeline:
        after a connection error or timeout, the connection is dropped and every call is sent
        again (the scripts are written to be run twice: see the receipts in ``redis.py``).
        """
        chunks = [batch[n : n + _CALLS_PER_SCRIPT] for n in range(0, len(batch), _CALLS_PER_SCRIPT)]
        request = b"".join(
            [
                part
                for chunk in chunks
                for part in (
                    b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n0\r\n"
                    % (3 + sum([call.items for call in chunk]), self._sha),
                    *[call.packed for call in chunk],
                )
            ]
        )
        pool = self._client.connection_pool
        connection = await cast("_GetConnection", pool.get_connection)()
        answered = False
        try:
            replies = await connection.retry.call_with_retry(
                lambda: _round_trip(connection, request, len(chunks)),
                lambda _error: connection.disconnect(),
            )
            answered = True
        finally:
            if not answered and connection.is_connected:
                # Left mid-exchange (cancelled): replies may still be due on this socket, and
                # the next user of the connection would read them as its own.
                await connection.disconnect(nowait=True)
            await pool.release(connection)
        results: list[Any] = []
        for chunk, reply in zip(chunks, replies, strict=True):
            if isinstance(reply, list) and len(reply) == len(chunk):
                results.extend(reply)
            elif isinstance(reply, ResponseError):  # none of the chunk ran: NOSCRIPT, BUSY...
                results.extend([reply] * len(chunk))
            else:  # a defect of ours
                error = ResponseError(f"{len(chunk)} script calls got the reply {reply!r:.200}")
                results.extend([error] * len(chunk))
        return results


async def _round_trip(connection: AbstractConnection, request: bytes, replies: int) -> list[Any]:
    """Write the request at once and read its ``replies`` (an error reply as its exception).

    One deadline (the connection's ``socket_timeout``) covers the whole exchange: redis-py
    arms a timer for every reply it reads when the socket timeout is set on the connection,
    which cost about 4 us per reply, more than packing and parsing a script call (measured:
    9.0 against 4.8 us of client CPU per call, one EVALSHA per call, 32 calls per pipeline,
    hiredis). The connection is ours alone until it is released, so the setting is lifted for
    the exchange and restored after it.
    """
    timeout = connection.socket_timeout
    connection.socket_timeout = None
    try:
        async with asyncio.timeout(timeout):
            await connection.send_packed_command(request)
            answers: list[Any] = []
            for _ in range(replies):
                try:
                    answers.append(await connection.read_response())
                except ResponseError as exc:  # that script's outcome only
                    answers.append(exc)
            return answers
    except TimeoutError:  # our deadline (asyncio's); redis-py's own is another class
        await connection.disconnect(nowait=True)
        raise RedisTimeoutError(
            f"Timeout reading the replies to {replies} script runs (socket_timeout {timeout:g} s)"
        ) from None
    finally:
        connection.socket_timeout = timeout
