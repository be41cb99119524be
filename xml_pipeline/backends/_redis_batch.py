"""Coalescing of concurrent Lua script calls into pipelines (automatic pipelining).

redis-py spends far more CPU per command than Redis does (about 60 us against a few us on the
machine class we target), so one script call per hop in its own round trip caps a pump at a few
thousand hops per second. `ScriptBatcher` sends every call that is waiting as one pipeline: with
one caller it is a plain call; with many, each round trip carries many calls.

There is no background task. A caller that finds fewer than ``max_in_flight`` pipelines in the
air sends what is waiting, its own call included (it *leads*); the others wait for their
result. A leader whose pipeline completes hands the lead to the oldest waiting caller, so no
caller spends its time sending other callers' work. Each call is still one atomic script; only
the round trips are shared.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

import anyio
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

__all__ = ["ScriptBatcher"]

_MAX_BATCH = 512


class _Lead:
    """The value a waiting call's future gets when its caller must lead the next pipeline."""


_LEAD = _Lead()


class _Call:
    __slots__ = ("args", "future", "keys", "script")

    def __init__(
        self,
        script: AsyncScript,
        keys: Sequence[str],
        args: Sequence[Any],
        future: asyncio.Future[Any],
    ) -> None:
        self.script = script
        self.keys = keys
        self.args = args
        self.future = future


class ScriptBatcher:
    """Runs script calls for many concurrent callers, sharing round trips between them."""

    def __init__(self, client: aioredis.Redis, *, max_in_flight: int) -> None:
        self._client = client
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._waiting: deque[_Call] = deque()

    async def call(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """``script(keys, args)``, possibly in one pipeline with other callers' calls.

        Raises:
            redis.exceptions.RedisError: the call failed (after the client's retries).
        """
        loop = asyncio.get_running_loop()
        call = _Call(script, keys, args, loop.create_future())
        if self._in_flight < self._max_in_flight:
            self._in_flight += 1
            try:
                # Let the callers that are ready in this loop iteration join the pipeline.
                await anyio.lowlevel.checkpoint()
            except BaseException:
                self._release()
                raise
        else:
            self._waiting.append(call)
            try:
                result = await call.future
            except BaseException:
                future = call.future
                # Cancelled just as the lead (or a result) arrived: pass the lead on.
                if (
                    future.done()
                    and not future.cancelled()
                    and future.exception() is None
                    and future.result() is _LEAD
                ):
                    self._release()
                raise
            if result is not _LEAD:
                return result
            call.future = loop.create_future()
        self._waiting.appendleft(call)
        try:
            while not call.future.done():
                # Shielded: the other callers in this pipeline depend on its outcome.
                with anyio.CancelScope(shield=True):
                    await self._send(self._take())
        finally:
            self._release()
        return call.future.result()

    def _take(self) -> list[_Call]:
        waiting = self._waiting
        batch: list[_Call] = []
        while waiting and len(batch) < _MAX_BATCH:
            call = waiting.popleft()
            if not call.future.done():  # done: its caller was cancelled while waiting
                batch.append(call)
        return batch

    def _release(self) -> None:
        """Give up a lead: hand it to the oldest waiting call, if any."""
        self._in_flight -= 1
        waiting = self._waiting
        while waiting:
            call = waiting.popleft()
            if not call.future.done():
                self._in_flight += 1
                call.future.set_result(_LEAD)
                return

    async def _send(self, batch: list[_Call]) -> None:
        if len(batch) == 1:
            call = batch[0]
            try:
                # AsyncScript reloads the script itself after NOSCRIPT.
                result = await call.script(call.keys, call.args)
            except Exception as exc:
                result = exc
            _settle(call, result)
            return
        try:
            results = await self._pipeline(batch)
        except Exception as exc:
            for call in batch:
                _settle(call, exc)
            return
        missing = []
        for call, result in zip(batch, results, strict=True):
            if isinstance(result, NoScriptError):
                missing.append(call)
            else:
                _settle(call, result)  # these ran: their outcome is final, whatever follows
        if not missing:
            return
        # The server lost its scripts (restart, SCRIPT FLUSH): none of these ran.
        try:
            for script in {id(call.script): call.script for call in missing}.values():
                await self._client.script_load(script.script)
            retried = await self._pipeline(missing)
        except Exception as exc:
            for call in missing:
                _settle(call, exc)
            return
        for call, result in zip(missing, retried, strict=True):
            _settle(call, result)

    async def _pipeline(self, batch: list[_Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for call in batch:
            pipe.execute_command("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results


def _settle(call: _Call, result: Any) -> None:
    future = call.future
    if future.done():  # its caller was cancelled while the pipeline was in the air
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)
