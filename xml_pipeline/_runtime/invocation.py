"""Running a handler: in process or in the pool, under a deadline, and stopping it.

Who decides a hop's outcome. Normally the task running the hop. Two events take a running hop
over (*settle* it) from outside: its handler's deadline passing (the watchdog reports the
``timeout`` to the caller at once, through ``on_timeout``) and its conversation ending for any
reason (nothing is left to report). Either way the handler's task is cancelled, and again at
every watchdog tick while the handler runs (cancellation is level-triggered, as in trio: a
handler that swallows one cancel and awaits again gets another); every one of those cancels is
balanced with ``Task.uncancel`` however the handler ends (raising, swallowing the cancel,
answering late), so the next hop the same task runs never mistakes its own ``CancelledError``
for a shutdown. What a settled handler returns is dropped. A handler still running
``CANCEL_GRACE`` seconds after its first cancel ignores cancellation: it is *abandoned* (logged,
counted) and its concurrency slot given back (``on_abandon``).

One watchdog checks every deadline a few times a second: a cancel scope per hop costs about
10 us, a dict entry well under one.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

import anyio

from xml_pipeline._errors import DeliveryError, PermanentError, Reason, RetryLater, raised_at
from xml_pipeline._handlers import HandlerMetadata
from xml_pipeline._runtime.hops import Hop
from xml_pipeline._runtime.invoker import Invoker
from xml_pipeline._runtime.outcomes import Counters
from xml_pipeline._runtime.outputs import Failure
from xml_pipeline._runtime.pool import WorkerFailure
from xml_pipeline._runtime.registry import ThreadRegistry
from xml_pipeline._runtime.retry import AttemptFailure

__all__ = ["CANCEL_GRACE", "Invocation", "Settled"]

log = logging.getLogger("xml_pipeline.pump")

# How long a cancelled handler may take to stop before it is abandoned. Cooperative handlers
# stop at their next await, within microseconds; cleanup in a `finally` gets this long.
CANCEL_GRACE = 0.25


class Settled(Exception):
    """The hop was taken over while its handler ran; what the handler did is dropped."""


class Invocation:
    """Runs handlers for one pump and watches their deadlines.

    ``pool`` runs ``cpu_bound`` listeners (``None``: the organism has none); ``on_timeout(hop)``
    reports a hop the watchdog settled at its deadline; ``on_abandon(hop)`` gives back the slot
    of a handler that ignored its cancel.
    """

    def __init__(
        self,
        *,
        pool: Invoker | None,
        registry: ThreadRegistry,
        counters: Counters,
        tick: float,
        on_timeout: Callable[[Hop], None],
        on_abandon: Callable[[Hop], None],
    ) -> None:
        self._pool = pool
        self._registry = registry
        self._counters = counters
        self._tick = tick
        self._on_timeout = on_timeout
        self._on_abandon = on_abandon
        self._running: dict[Hop, float] = {}  # in-process handler runs -> deadline
        self._abandoned: set[Hop] = set()  # handlers that ignored cancellation, still running
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the running loop (cached: ``get_running_loop`` costs a syscall on 3.11)."""
        self._loop = loop

    def hop_of(self, task: asyncio.Task[Any]) -> Hop | None:
        """The hop whose handler ``task`` runs, if the watchdog knows it."""
        for hop in (*self._running, *self._abandoned):
            if hop.task is task:
                return hop
        return None

    async def run(self, hop: Hop, meta: HandlerMetadata) -> object:
        """Run the handler; return what it returned. Anything user code raises (any
        BaseException but a cancel of the pump's or KeyboardInterrupt) becomes `Failure`.

        Raises:
            Settled: the hop was taken over meanwhile; its result is dropped.
            Failure: the handler failed.
            asyncio.CancelledError: the pump is shutting down.
        """
        state, conv = hop.state, hop.conv
        task = hop.task
        running = self._running
        if state.cpu_bound:
            if self._pool is None:
                raise RuntimeError(f"{state.name!r} is cpu_bound but the organism has no pool")
            stored = await self._registry.stored_history(conv.id)
            if conv.done:
                raise Settled  # it ended while the history was read: do not start the work
            call: Any = self._pool(state.listener, hop.payload, meta, state.timeout, stored)
        else:
            loop = self._loop or asyncio.get_running_loop()
            running[hop] = loop.time() + state.timeout
            call = None
        conv.running.add(hop)
        caught: BaseException | None = None
        try:
            if call is not None:
                result = await call
            elif state.is_async:
                result = await state.handler(hop.payload, meta)  # type: ignore[misc]
            else:
                result = state.handler(hop.payload, meta)
                if inspect.isawaitable(result):  # an async callable object, a wrapped coroutine
                    result = await result
                else:
                    self._blocked(hop)
        except BaseException as exc:  # sorted below, once the hop's state is known
            caught = exc
            result = None
        finally:
            hop.finished = True
            running.pop(hop, None)
            if hop.abandoned:
                self._abandoned.discard(hop)
            conv.running.discard(hop)
        if hop.settled is not None:
            # the cancels the pump made, balanced however the handler ended
            pending = 0
            for _ in range(hop.cancels):
                pending = task.uncancel() if task is not None else 0
            if pending > 0:
                raise asyncio.CancelledError  # a shutdown cancel landed too
            raise Settled
        if caught is None:
            return result
        if isinstance(caught, asyncio.CancelledError):
            if task is not None and task.cancelling():
                raise caught  # the pump is shutting down
            caught = RuntimeError("CancelledError, yet nobody cancelled the handler")
        elif isinstance(caught, KeyboardInterrupt):
            raise caught
        if isinstance(caught, DeliveryError) and call is not None:
            # the pool's verdict: worker_crash, timeout, invalid_response, handler_error...
            raise Failure(caught.reason, caught.message, _from_worker(caught)) from None
        log.debug("handler of %r raised", state.name, exc_info=caught)
        raise Failure(
            Reason.HANDLER_ERROR,
            f"{state.name!r} raised {type(caught).__name__}: {_describe(caught)}"
            f"{raised_at(caught)}",
            _attempt_failure(caught),
        ) from None

    def settle(self, hop: Hop, reason: str) -> None:
        """Take a running hop over: its outcome is decided elsewhere; cancel its handler."""
        if hop.settled is not None:
            return
        hop.settled = reason
        loop = self._loop or asyncio.get_running_loop()
        self._running[hop] = loop.time() + CANCEL_GRACE  # watched for abandonment
        _cancel(hop)

    async def watch(self) -> None:
        """The watchdog: deadlines, level-triggered cancels, abandonment. Runs until cancelled."""
        loop = self._loop or asyncio.get_running_loop()
        while True:
            await anyio.sleep(self._tick)
            now = loop.time()
            for hop, deadline in list(self._running.items()):
                if now < deadline:
                    if hop.settled is not None:
                        _cancel(hop)  # again, until it stops
                elif hop.settled is None:
                    self.settle(hop, "timeout")
                    self._on_timeout(hop)
                else:
                    self._abandon(hop)
            for hop in self._abandoned:
                _cancel(hop)

    def _blocked(self, hop: Hop) -> None:
        """A plain function returned: nothing could interrupt it on the event loop, so an
        answer after its deadline is settled as a timeout here."""
        deadline = self._running.get(hop)
        loop = self._loop or asyncio.get_running_loop()
        if deadline is None or hop.settled is not None or loop.time() < deadline:
            return
        state = hop.state
        log.warning(
            "the plain (sync) handler of %r blocked the event loop past its %ss timeout; "
            "nothing could stop it there: make it async, or mark the listener cpu_bound",
            state.name, state.timeout,
        )  # fmt: skip
        hop.settled = "timeout"
        self._on_timeout(hop)

    def abandoned_at_close(self, hop: Hop) -> bool:
        """The organism closes and gives up on ``hop``'s handler, which ignored its cancel.

        Returns:
            False when the watchdog abandoned it already (counted and logged then); True when
            the caller is to count and log it, the watchdog then leaving it alone.
        """
        if hop.abandoned:
            return False
        self._running.pop(hop, None)
        hop.conv.running.discard(hop)
        hop.abandoned = True
        self._abandoned.add(hop)
        return True

    def _abandon(self, hop: Hop) -> None:
        """A settled handler ignored its cancel: stop waiting for it, give its slot back."""
        del self._running[hop]
        hop.conv.running.discard(hop)
        hop.abandoned = True
        self._abandoned.add(hop)  # cancelled again at every tick while it runs
        self._counters.abandoned += 1
        state = hop.state
        log.warning(
            "the handler of %r on thread %s did not stop within %ss of being cancelled "
            "(%s); it is abandoned and its slot given back, so %r may run over its "
            "max_concurrency while the handler goes on. Let CancelledError propagate.",
            state.name, hop.frame.thread, CANCEL_GRACE, hop.settled, state.name,
        )  # fmt: skip
        self._on_abandon(hop)


def _cancel(hop: Hop) -> None:
    task = hop.task
    if task is not None and not task.done():
        hop.cancels += 1
        task.cancel()


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # a __str__ that raises
        return "(its message could not be read)"
    return text if text else "(no message)"


def _attempt_failure(exc: BaseException) -> AttemptFailure:
    """What the retry policy is told of an exception a handler raised in process."""
    types = tuple(f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__)
    after = exc.after_seconds if isinstance(exc, RetryLater) else None
    return AttemptFailure(Reason.HANDLER_ERROR, types, after, isinstance(exc, PermanentError))


def _from_worker(error: DeliveryError) -> AttemptFailure:
    """The same for a failure in a worker process, which sends the exception's class names
    and a `RetryLater`'s delay as plain data."""
    cause = error.__cause__
    if not isinstance(cause, WorkerFailure):
        return AttemptFailure(error.reason)
    types = cause.types
    return AttemptFailure(error.reason, types, cause.after_seconds, _PERMANENT in types)


_PERMANENT = f"{PermanentError.__module__}.{PermanentError.__qualname__}"
