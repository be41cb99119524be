"""StreamPump: routes payloads between listeners along opaque call chains.

One hop: the target's handler runs under the listener's concurrency limit; what it returns is
checked (peers, payload class, field spec) and routed: a call extends the chain, an answer
prunes it and goes to the caller, a failure travels up the chain as an `ErrorReport`.

Hot-path choices, each measured on the 2-core reference machine (see benchmarks/bench_pump.py):
- *Continuation*: the task that ran a handler runs the next hop itself when the target has a
  free slot; a new task is made only for fan-out or a backlogged hop. ``asyncio.create_task``
  is used for these hop tasks (about 7 us) rather than ``TaskGroup.start_soon`` (about 35 us);
  the pump tracks them and cancels them on close, so none outlives the organism.
- *One watchdog* checks handler and request deadlines a few times a second; a cancel scope per
  hop costs about 10 us. An overdue handler's task is cancelled and the cancellation is turned
  into a ``timeout`` failure (``Task.uncancel``), so the chain goes on.
- Hops between listeners never wait: a busy listener's backlog is a deque, so cycles such as
  planner <-> adder cannot deadlock; backpressure applies only at ingress.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from difflib import get_close_matches
from functools import partial
from typing import Any

import anyio

from xml_pipeline.codecs import xml_safe
from xml_pipeline.envelope import Envelope
from xml_pipeline.errors import BackendError, DeliveryError, SchemaViolation
from xml_pipeline.handlers import (
    ErrorReport,
    HandlerMetadata,
    HandlerResponse,
    HistoryEntry,
    Listener,
)
from xml_pipeline.history import decode_entry, encode_entry
from xml_pipeline.parsing import ParseLimits
from xml_pipeline.payloads import check_payload, from_element, is_payload, payload_spec, to_xml
from xml_pipeline.registry import ThreadRegistry

__all__ = ["DeadLetter", "PumpStats", "StreamPump"]

log = logging.getLogger("xml_pipeline.pump")
EXTERNAL = "_external"
_YIELD_EVERY = 64  # hops one task runs back to back before it lets the loop run others


@dataclass
class PumpStats:
    """Counters since the organism started (read a copy with `StreamPump.stats`)."""

    conversations: int = 0
    answered: int = 0
    failed: int = 0
    no_answer: int = 0
    hops: int = 0
    handler_errors: int = 0
    timeouts: int = 0
    late_replies: int = 0
    overloaded: int = 0
    lost: int = 0  # conversations ended by a backend or internal failure (each one logged)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A failure that reached the outside world with nobody waiting for it (``send``/``inject``).

    Kept in `StreamPump.dead_letters` (bounded) and logged at WARNING.
    """

    conversation: str
    reason: str
    message: str
    listener: str


class _Route:
    """A listener's runtime state: its definition, free slots and backlog."""

    __slots__ = (
        "backlog", "busy", "def_", "is_async", "limit", "name", "peers", "spec", "timeout"
    )  # fmt: skip

    def __init__(self, listener: Listener, pool_workers: int) -> None:
        self.def_ = listener
        self.name = listener.name
        self.spec = payload_spec(listener.payload_class)
        self.peers = frozenset(listener.peers)
        self.timeout = listener.timeout_seconds
        self.is_async = asyncio.iscoroutinefunction(listener.handler)
        # a cpu_bound listener runs no more hops than the pool has workers: the rest wait in
        # its backlog, where no timeout runs, rather than queued inside the pool, where it does
        self.limit = listener.max_concurrency
        if listener.cpu_bound:
            self.limit = min(self.limit, pool_workers)
        self.busy = 0
        self.backlog: deque[_Hop] = deque()


class _Conversation:
    __slots__ = ("deadline", "done", "future", "hops", "id", "inflight", "started_by")

    def __init__(
        self, conv_id: str, future: asyncio.Future[Any] | None, deadline: float | None, to: str
    ) -> None:
        self.id = conv_id
        self.future = future
        self.deadline = deadline
        self.inflight = 1
        self.hops = 0
        self.done = False
        self.started_by = to


Callers = tuple[str, "Callers | None"]


class _Hop:
    """One delivery to a handler.

    ``callers`` is the chain of listener names above this hop's listener as a linked list,
    ``(direct caller, (its caller, ... (outside sender, None)))``, so a call or an answer costs
    O(1) however deep the chain. The pump keeps it to name the receiver of an answer in the
    history before the registry is asked; handlers never see it.
    """

    __slots__ = ("callers", "conv", "payload", "route", "sender", "task", "thread", "timed_out")

    def __init__(
        self,
        route: _Route,
        thread: str,
        sender: str,
        payload: object,
        conv: _Conversation,
        callers: Callers,
    ) -> None:
        self.route = route
        self.thread = thread
        self.sender = sender
        self.payload = payload
        self.conv = conv
        self.callers = callers
        self.task: asyncio.Task[Any] | None = None
        self.timed_out = False


class _HandlerTimeout(Exception):
    pass


class _Failure(Exception):
    """A handler's output was refused; the hop fails with this reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class BoundOutputs:
    """What an invoker returns for a handler that ran elsewhere: each output with the XML its
    payload was bound from after XSD validation, so the pump need not check or write it again.
    """

    items: list[tuple[HandlerResponse, bytes]]


# (listener, payload, metadata, timeout, stored history) -> what the handler returned, or
# BoundOutputs
Invoker = Callable[[Listener, object, HandlerMetadata, float, list[bytes]], Awaitable[object]]


@dataclass
class _Ingress:
    limit: int
    wait_seconds: float
    open: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    dead: int = 0  # waiters in the deque that gave up


class StreamPump:
    """Routes payloads between listeners; owned by an `Organism`, one per organism."""

    def __init__(
        self,
        listeners: Sequence[Listener],
        registry: ThreadRegistry,
        *,
        limits: ParseLimits | None = None,
        ingress_limit: int = 1024,
        ingress_wait_seconds: float = 5.0,
        pool_invoker: Invoker | None = None,
        pool_workers: int = 1,
        history: bool = True,
        max_hops: int = 10_000,
    ) -> None:
        self._routes = {listener.name: _Route(listener, pool_workers) for listener in listeners}
        self._registry = registry
        self._limits = limits or ParseLimits()
        self._ingress = _Ingress(ingress_limit, ingress_wait_seconds)
        self._pool_invoker = pool_invoker
        self._history = history
        self._max_hops = max_hops
        self._convs: dict[str, _Conversation] = {}
        self._running: dict[_Hop, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._cancelling = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._tick = min([0.05, *(r.timeout / 4 for r in self._routes.values())])
        self.stats = PumpStats()
        self.dead_letters: deque[DeadLetter] = deque(maxlen=1000)
        self.observer: Callable[[Envelope], None] | None = None
        self._watchdog: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def listeners(self) -> dict[str, Listener]:
        """The listeners by name."""
        return {name: r.def_ for name, r in self._routes.items()}

    def start(self) -> None:
        """Start the watchdog (a task the pump owns, so the organism may be left from any
        task or cancel scope, unlike a task group entered in ``__aenter__``)."""
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await anyio.sleep(self._tick)
            now = loop.time()
            for hop, deadline in list(self._running.items()):
                if now >= deadline and not hop.timed_out and hop.task is not None:
                    hop.timed_out = True
                    hop.task.cancel()
            for conv in [c for c in self._convs.values() if c.deadline and now >= c.deadline]:
                self._spawn_call(
                    self._end(conv, DeliveryError(
                        f"no answer from {conv.started_by!r} within the request timeout; raise "
                        "timeout= or look at what the conversation is waiting for",
                        reason="timeout", listener=conv.started_by, thread=conv.id,
                    ))
                )  # fmt: skip

    async def wait_idle(self) -> None:
        """Wait until no conversation is open."""
        await self._idle.wait()

    async def aclose(self, drain_timeout: float) -> None:
        """Refuse new work, let open conversations finish for ``drain_timeout``, cancel the rest."""
        self._closing = True
        for waiter in self._ingress.waiters:
            if not waiter.done():
                waiter.set_exception(_shutdown())
        # shielded: leaving `async with` from a cancelled scope must still stop everything
        with anyio.CancelScope(shield=True):
            try:
                with anyio.move_on_after(drain_timeout):
                    await self._idle.wait()
                self._cancelling = True  # freed slots no longer start backlogged hops
                for route in self._routes.values():
                    route.backlog.clear()
                tasks = list(self._tasks)
                for task in tasks:
                    task.cancel()
                if tasks:
                    _, stuck = await asyncio.wait(tasks, timeout=max(1.0, drain_timeout))
                    for task in stuck:  # a handler that swallows cancellation
                        log.warning("a handler did not stop when cancelled: %r", task)
                for conv in list(self._convs.values()):
                    await self._end(conv, _shutdown(conv.started_by, conv.id))
            finally:
                if self._watchdog is not None:
                    self._watchdog.cancel()
                    await asyncio.wait([self._watchdog])

    # -- ingress --------------------------------------------------------------------------------

    async def request(self, to: str, payload: object, timeout: float) -> object:
        """Start a conversation and wait for its answer (see `Organism.request`)."""
        route = self._route_for(to, payload)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conv = await self._open(route, payload, EXTERNAL, future, timeout)
        try:
            return await future
        finally:
            if not conv.done:  # the caller gave up (cancelled): retire what is left
                self._spawn_call(self._end(conv, DeliveryError(
                    "the requester stopped waiting", reason="cancelled", listener=to
                )))  # fmt: skip

    async def send(self, to: str, payload: object) -> str:
        """Start a conversation without waiting; returns its first thread id."""
        route = self._route_for(to, payload)
        conv = await self._open(route, payload, EXTERNAL, None, None)
        return conv.id

    async def inject(self, data: bytes | str) -> str:
        """Start a conversation from a raw envelope; returns its first thread id."""
        env = Envelope.from_bytes(data, self._limits)
        route = self._routes.get(env.to)
        if route is None:
            raise self._no_route(env.to)
        if env.payload_tag != route.spec.tag:
            raise DeliveryError(
                f"{env.to!r} accepts <{route.spec.tag}>, not <{env.payload_tag}>",
                reason="no_route", listener=env.to,
            )  # fmt: skip
        sender = env.sender or EXTERNAL
        if sender != EXTERNAL and (sender in self._routes or sender.startswith("_")):
            raise DeliveryError(
                f"an envelope from outside claims to come from {sender!r}, a listener or "
                "reserved name; leave <from> empty or name the outside sender",
                reason="forged_sender", listener=env.to,
            )  # fmt: skip
        obj: object = from_element(route.def_.payload_class, env.payload)
        conv = await self._open(route, obj, sender, None, None)
        return conv.id

    def _route_for(self, to: str, payload: object) -> _Route:
        route = self._routes.get(to)
        if route is None:
            raise self._no_route(to)
        if type(payload) is not route.def_.payload_class:
            got = payload_spec(payload).tag if is_payload(payload) else type(payload).__name__
            raise DeliveryError(
                f"{to!r} accepts <{route.spec.tag}>, not <{got}>", reason="no_route", listener=to
            )
        check_payload(payload)
        return route

    def _no_route(self, to: str) -> DeliveryError:
        close = get_close_matches(to, list(self._routes), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; listeners: {sorted(self._routes)}"
        return DeliveryError(f"no listener named {to!r}{hint}", reason="no_route", listener=to)

    async def _open(
        self,
        route: _Route,
        payload: object,
        sender: str,
        future: asyncio.Future[Any] | None,
        timeout: float | None,
    ) -> _Conversation:
        await self._admit()
        try:
            entry = self._entry(sender, route.name, payload)
            root = self._registry.root_id
            rec = await self._registry.extend_chain(root, route.name, entry)
            if rec is None:  # a shared backend lost its data (e.g. Redis restarted empty)
                log.warning("the root record %s was missing; recreating it", root)
                await self._registry.initialize_root()
                rec = await self._registry.extend_chain(root, route.name, entry)
            if rec is None:
                raise DeliveryError(
                    f"the backend did not keep the root record {root!r}; check that nothing "
                    "else deletes keys under this organism's prefix",
                    reason="backend_error",
                    listener=route.name,
                )
        except BaseException:
            self._release()
            raise
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        conv = _Conversation(rec.thread_id, future, deadline, route.name)
        self._convs[conv.id] = conv
        self._idle.clear()
        self.stats.conversations += 1
        self._dispatch(_Hop(route, rec.thread_id, sender, payload, conv, (sender, None)))
        return conv

    async def _admit(self) -> None:
        ing = self._ingress
        if self._closing:
            raise _shutdown()
        if ing.open < ing.limit:
            ing.open += 1
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        ing.waiters.append(waiter)  # done waiters are skipped by _release: no O(n) removal
        timer = loop.call_later(ing.wait_seconds, self._overloaded, waiter)
        try:
            await waiter  # a finishing conversation hands its slot over (see _release)
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release()  # we were handed a slot but are leaving: pass it on
            else:
                self._forget_waiter()
            raise
        finally:
            timer.cancel()

    def _forget_waiter(self) -> None:
        """A waiter gave up: drop the dead ones once they are half the queue (amortized O(1))."""
        ing = self._ingress
        ing.dead += 1
        if ing.dead * 2 > len(ing.waiters):
            ing.waiters = deque(w for w in ing.waiters if not w.done())
            ing.dead = 0

    def _overloaded(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done():
            return
        self.stats.overloaded += 1
        ing = self._ingress
        waiter.set_exception(DeliveryError(
            f"the organism is full ({ing.limit} conversations open) and none finished within "
            f"{ing.wait_seconds}s; retry later or raise organism.ingress_limit",
            reason="overloaded",
        ))  # fmt: skip

    def _release(self) -> None:
        ing = self._ingress
        while ing.waiters:
            waiter = ing.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # hand the slot over
                return
            ing.dead = max(0, ing.dead - 1)
        ing.open -= 1

    # -- hops -----------------------------------------------------------------------------------

    def _dispatch(self, hop: _Hop) -> None:
        route = hop.route
        if route.busy < route.limit:
            route.busy += 1
            self._spawn(hop)
        else:
            route.backlog.append(hop)

    def _spawn(self, hop: _Hop) -> None:
        self._spawn_call(self._chain(hop))

    def _spawn_call(self, coro: Any) -> None:
        """Run ``coro`` as a task the pump tracks (and cancels on close)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _chain(self, first: _Hop) -> None:
        task = asyncio.current_task()
        hop: _Hop | None = first
        ran = 0
        while hop is not None:
            hop.task = task
            try:
                nexts = await self._step(hop)
            except Exception as exc:  # the backend failed under us; never leave a caller hanging
                log.exception("hop to %r on thread %s failed", hop.route.name, hop.thread)
                self.stats.lost += 1
                nexts = []
                await self._end(hop.conv, DeliveryError(
                    f"delivery to {hop.route.name!r} failed: {exc}",
                    reason=getattr(exc, "reason", "internal_error"),
                    listener=hop.route.name, thread=hop.thread,
                ))  # fmt: skip
            except BaseException:  # cancelled (shutdown): give the slot back, then go
                self._free_slot(hop.route)
                raise
            route = hop.route
            self._free_slot(route)
            conv = hop.conv
            conv.inflight += len(nexts) - 1
            if conv.inflight == 0 and not conv.done:
                await self._end(conv, DeliveryError(
                    f"the conversation ended without an answer: {route.name!r} returned nothing "
                    "and no call is in flight",
                    reason="no_answer", listener=route.name, thread=hop.thread,
                ))  # fmt: skip
            ran += 1
            if ran % _YIELD_EVERY == 0:
                # a chain of handlers that never suspend must not starve the loop (the
                # watchdog, timers, other conversations)
                await asyncio.sleep(0)
            hop = None
            for nxt in nexts:
                r = nxt.route
                if hop is None and r.busy < r.limit:
                    r.busy += 1
                    hop = nxt
                else:
                    self._dispatch(nxt)

    def _free_slot(self, route: _Route) -> None:
        if route.backlog and not self._cancelling:
            self._spawn(route.backlog.popleft())  # the slot passes to the waiting hop
        else:
            route.busy -= 1

    async def _step(self, hop: _Hop) -> list[_Hop]:
        route, conv = hop.route, hop.conv
        if conv.done:  # answered, failed or timed out while this hop waited: do not run it
            return []
        conv.hops += 1
        if conv.hops > self._max_hops:
            await self._end(conv, DeliveryError(
                f"the conversation made more than {self._max_hops} hops (a call cycle?); it "
                f"was stopped at {route.name!r}; raise organism.max_hops if that is intended",
                reason="hop_limit", listener=route.name, thread=hop.thread,
            ))  # fmt: skip
            return []
        self.stats.hops += 1
        if self.observer is not None:
            try:
                self.observer(Envelope(hop.sender, route.name, hop.thread, hop.payload))
            except Exception:
                log.exception("the hop observer raised; the hop goes on")
        history = partial(self.read_history, hop.conv.id) if self._history else None
        meta = HandlerMetadata(hop.thread, hop.sender, route.name, history)
        try:
            result = await self._invoke(hop, meta)
            outputs = self._check_outputs(route, result)
        except _HandlerTimeout:
            self.stats.timeouts += 1
            return await self._fail(
                hop, "timeout", f"{route.name!r} took longer than {route.timeout}s"
            )
        except _Failure as exc:
            return await self._fail(hop, exc.reason, exc.message)
        except BackendError:
            raise  # not the handler's fault: _chain reports the conversation as lost
        except (Exception, SystemExit) as exc:  # SystemExit must not stop the host process
            self.stats.handler_errors += 1
            log.debug("handler of %r raised", route.name, exc_info=True)
            return await self._fail(
                hop, "handler_error", f"{route.name!r} raised {type(exc).__name__}: {exc}"
            )
        nexts: list[_Hop] = []
        for out, xml in outputs:
            if out.to is None:
                nexts.extend(await self._respond(hop, route.name, out.payload, xml))
                continue
            entry = self._entry(route.name, out.to, out.payload, xml)
            rec = await self._registry.extend_chain(hop.thread, out.to, entry)
            if rec is None:  # this thread was retired meanwhile (answered, timed out, lost)
                self.stats.late_replies += 1
                conv = hop.conv
                if not conv.done and await self._registry.backend.get(conv.id) is None:
                    await self._lost(conv, route.name)
                continue
            target = self._routes[out.to]
            callers = (route.name, hop.callers)
            nexts.append(_Hop(target, rec.thread_id, route.name, out.payload, hop.conv, callers))
        return nexts

    def _entry(
        self, sender: str, to: str, payload: object, xml: bytes | None = None
    ) -> bytes | None:
        """The history entry of one hop (``xml``: the payload already serialized, if it was)."""
        if not self._history:
            return None
        return encode_entry(sender, to, to_xml(payload) if xml is None else xml)

    async def read_history(self, conversation: str) -> list[HistoryEntry]:
        """The recorded hops of a conversation, oldest first."""
        return [decode_entry(e) for e in await self._registry.backend.history(conversation)]

    async def _invoke(self, hop: _Hop, meta: HandlerMetadata) -> object:
        route = hop.route
        if route.def_.cpu_bound and self._pool_invoker is not None:
            backend = self._registry.backend
            stored = await backend.history(hop.conv.id) if self._history else []
            try:
                return await self._pool_invoker(
                    route.def_, hop.payload, meta, route.timeout, stored
                )
            except DeliveryError as exc:  # worker_crash, timeout, invalid_response...
                self.stats.timeouts += exc.reason == "timeout"
                self.stats.handler_errors += exc.reason == "handler_error"
                raise _Failure(exc.reason, exc.message) from None
        self._running[hop] = asyncio.get_running_loop().time() + route.timeout
        try:
            if route.is_async:
                return await route.def_.handler(hop.payload, meta)  # type: ignore[misc]
            result = route.def_.handler(hop.payload, meta)
            if inspect.isawaitable(result):  # an async callable object, a wrapped coroutine
                return await result
            return result
        except asyncio.CancelledError:
            task = hop.task
            if hop.timed_out and task is not None:
                if task.uncancel() > 0:
                    raise  # a shutdown cancel landed too: let it through
                raise _HandlerTimeout from None
            if task is not None and task.cancelling() == 0:
                # the handler raised CancelledError of its own (an inner task was cancelled)
                raise RuntimeError("the handler raised CancelledError") from None
            raise
        finally:
            del self._running[hop]

    def _check_outputs(
        self, route: _Route, result: object
    ) -> list[tuple[HandlerResponse, bytes | None]]:
        """The handler's outputs, each checked, with its payload XML when history needs it."""
        if result is None:
            return []
        if type(result) is BoundOutputs:
            return [(out, self._check_output(route, out, xml)) for out, xml in result.items]
        if type(result) is HandlerResponse:
            outputs: Sequence[HandlerResponse] = (result,)
        elif isinstance(result, list | tuple) and all(type(r) is HandlerResponse for r in result):
            outputs = result
        else:
            raise _Failure(
                "invalid_response",
                f"{route.name!r} returned {type(result).__name__}; return None, a "
                "HandlerResponse or a list of them (never an envelope)",
            )
        return [(out, self._check_output(route, out)) for out in outputs]

    def _check_output(
        self, route: _Route, out: HandlerResponse, xml: bytes | None = None
    ) -> bytes | None:
        """Check one output: route, peers, payload. ``xml``: what the payload was bound from
        after XSD validation (`BoundOutputs`), so it is valid and already written."""
        if out.to is not None:
            target = self._routes.get(out.to)
            if target is None:
                raise _Failure(
                    "no_route", f"{route.name!r} called {self._no_route(out.to).message}"
                )
            if out.to not in route.peers:
                raise _Failure(
                    "peer_denied",
                    f"{route.name!r} may not call {out.to!r}: it is not among its peers "
                    f"{sorted(route.peers)}; add it to peers in organism.yaml",
                )
            if type(out.payload) is not target.def_.payload_class:
                got = type(out.payload).__name__
                raise _Failure(
                    "no_route", f"{out.to!r} accepts <{target.spec.tag}>, not {got} objects"
                )
        elif not is_payload(out.payload):
            raise _Failure(
                "invalid_response",
                f"{route.name!r} answered with a {type(out.payload).__name__}, not a @payload "
                "object",
            )
        if xml is not None:
            return xml if self._history else None
        try:
            if self._history:  # to_xml checks each value as check_payload does: one pass
                return to_xml(out.payload)
            check_payload(out.payload)
            return None
        except SchemaViolation as exc:
            raise _Failure("schema_violation", f"{route.name!r} sent {exc.message}") from None

    async def _respond(
        self, hop: _Hop, responder: str, payload: object, xml: bytes | None = None
    ) -> list[_Hop]:
        """Answer the caller of ``hop``: prune its thread and deliver to the caller."""
        caller, above = hop.callers
        # an answer leaving the organism ends the conversation, history and all: no entry
        entry = self._entry(responder, caller, payload, xml) if above is not None else None
        res = await self._registry.prune_for_response(hop.thread, entry)
        if res is None:
            self.stats.late_replies += 1
            conv = hop.conv
            if not conv.done and await self._registry.backend.get(conv.id) is None:
                await self._lost(conv, responder)
            return []
        if res.conversation_ended:
            await self._end(hop.conv, payload, retired=True)
            return []
        assert above is not None, "the registry said the conversation goes on"
        target = self._routes[res.caller]
        return [_Hop(target, res.caller_thread, responder, payload, hop.conv, above)]

    async def _fail(self, hop: _Hop, reason: str, message: str) -> list[_Hop]:
        """The run on ``hop`` failed: answer its caller with an ErrorReport, travelling up."""
        report = ErrorReport(reason=reason, message=xml_safe(message), listener=hop.route.name)
        failed = hop
        while True:
            nexts = await self._respond(failed, failed.route.name, report)
            if not nexts or nexts[0].route.def_.handles_errors:
                return nexts
            failed = nexts[0]  # the caller does not handle errors: its own run fails too

    async def _lost(self, conv: _Conversation, responder: str) -> None:
        """The backend no longer knows an open conversation: say so instead of waiting."""
        self.stats.lost += 1
        log.warning("conversation %s was lost by the backend", conv.id)
        await self._end(conv, DeliveryError(
            f"the backend no longer knows this conversation (its records expired after "
            f"thread_ttl_seconds, or the backend lost its data); the answer from {responder!r} "
            "was dropped",
            reason="backend_error", listener=responder, thread=conv.id,
        ), retired=True)  # fmt: skip

    async def _end(self, conv: _Conversation, outcome: object, *, retired: bool = False) -> None:
        """Finish a conversation once: deliver its outcome, free its ingress slot, retire it."""
        if conv.done:
            return
        conv.done = True
        del self._convs[conv.id]
        self._release()
        if not self._convs:
            self._idle.set()
        error = _as_error(outcome, conv)
        if error is None:
            self.stats.answered += 1
        else:
            self.stats.no_answer += error.reason == "no_answer"
            self.stats.failed += 1
        future = conv.future
        if future is not None and not future.done():
            if error is None:
                future.set_result(outcome)
            else:
                future.set_exception(error)
        elif error is not None and future is None:
            letter = DeadLetter(conv.id, error.reason, error.message, error.listener or "")
            self.dead_letters.append(letter)
            log.warning("conversation %s failed: %s", conv.id, error)
        if not retired:
            try:
                await self._registry.cleanup(conv.id)
            except Exception:  # the thread TTL is the backstop
                log.warning(
                    "could not retire conversation %s now; its records expire after "
                    "thread_ttl_seconds",
                    conv.id,
                    exc_info=True,
                )


def _as_error(outcome: object, conv: _Conversation) -> DeliveryError | None:
    if isinstance(outcome, DeliveryError):
        return outcome
    if isinstance(outcome, ErrorReport):
        return DeliveryError(outcome.message, reason=outcome.reason, listener=outcome.listener,
                             thread=conv.id)  # fmt: skip
    return None


def _shutdown(listener: str | None = None, thread: str | None = None) -> DeliveryError:
    return DeliveryError(
        "the organism is shutting down and did not finish this conversation",
        reason="shutdown", listener=listener, thread=thread,
    )  # fmt: skip
