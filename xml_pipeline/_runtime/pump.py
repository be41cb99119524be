"""StreamPump: routes payloads between listeners along opaque call chains.

One hop: the target's handler runs under the listener's concurrency limit; what it returns is
checked (peers, payload class, field spec) and routed: a call extends the chain, an answer
prunes it and goes to the caller, a failure travels up the chain as an `ErrorReport`.

Hot-path choices, each measured on the 2-core reference machine (see benchmarks/bench_pump.py):
- *Continuation*: the task that ran a handler runs the next hop itself when the target has a
  free slot; a new task is made only for fan-out or a backlogged hop. ``asyncio.create_task``
  is used for these hop tasks (about 7 us) rather than ``TaskGroup.start_soon`` (about 35 us);
  the pump tracks them and cancels them on close, so none outlives the organism.
- *One watchdog* checks handler deadlines a few times a second; a cancel scope per hop costs
  about 10 us. A request's deadline is one loop timer (``call_at``, about 1 us).
- Hops between listeners never wait: a busy listener's backlog is a deque, so cycles such as
  planner <-> adder cannot deadlock; backpressure applies only at ingress.

Who decides a hop's outcome. Normally the task running the hop. Two events take a running hop
over (*settle* it) from outside: its handler's deadline passing (the watchdog reports the
``timeout`` to the caller at once) and its conversation ending for any reason (answer,
failure, request timeout, requester cancelled, ``hop_limit``, lost, shutdown: nothing is left
to report). Either way the handler's task is cancelled, and again at every watchdog tick
while the handler runs (cancellation is level-triggered, as in trio: a handler that swallows one
cancel and awaits again gets another); every one of those cancels is balanced with
``Task.uncancel`` however the handler ends (raising, swallowing the cancel, answering late), so
the next hop the same task runs never mistakes its own ``CancelledError`` for a shutdown. What a
settled handler returns is dropped. A handler still running ``_CANCEL_GRACE`` seconds after
its first cancel ignores cancellation: it is *abandoned* (logged, counted in
``stats.abandoned``) and its concurrency slot given back.

Every call is a `_Frame` that counts what may still happen on its thread (hops queued or
running there, calls it made that are unanswered). A frame whose count drops to zero before it
answered can never answer: the pump fails that call with ``no_answer`` at once, naming the
callee, instead of letting its caller wait for the conversation's deadline.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import unicodedata
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from difflib import get_close_matches
from functools import partial
from typing import Any

import anyio

from xml_pipeline._errors import (
    BackendError,
    DeliveryError,
    PayloadTypeError,
    Reason,
    SchemaViolation,
    UsageError,
    XmlPipelineError,
    raised_at,
)
from xml_pipeline._handlers import (
    ErrorReport,
    HandlerMetadata,
    HandlerResponse,
    HistoryEntry,
    Listener,
)
from xml_pipeline._runtime.invoker import BoundOutputs, Invoker
from xml_pipeline._runtime.registry import ThreadRegistry, new_thread_id
from xml_pipeline._wire.codecs import xml_safe
from xml_pipeline._wire.envelope import Envelope
from xml_pipeline._wire.history import decode_entry, encode_entry
from xml_pipeline._wire.parsing import ParseLimits
from xml_pipeline._wire.payloads import (
    check_payload,
    from_element,
    is_payload,
    payload_spec,
    to_xml,
)

__all__ = ["DeadLetter", "PumpStats", "StreamPump"]

log = logging.getLogger("xml_pipeline.pump")
EXTERNAL = "_external"
_YIELD_EVERY = 64  # hops one task runs back to back before it lets the loop run others
# How long a cancelled handler may take to stop before it is abandoned. Cooperative handlers
# stop at their next await, within microseconds; cleanup in a `finally` gets this long.
_CANCEL_GRACE = 0.25
# Retrying the retirement of a conversation whose opening outcome is unknown: capped backoff.
_RETIRE_ATTEMPTS = 6
_RETIRE_BACKOFF = (0.05, 2.0)
# Conversations ending with these reasons were lost to the backend or to the pump itself.
_LOST = frozenset({Reason.BACKEND_ERROR, Reason.BACKEND_UNREACHABLE, Reason.INTERNAL_ERROR})


@dataclass
class PumpStats:
    """Counters since the organism started (read a copy with `Organism.stats`).

    Attributes:
        conversations: conversations started (requests, sends and injects that got in).
        answered: conversations that ended with an answer.
        failed: conversations that ended with a failure (every reason, ``no_answer`` included).
        no_answer: of those, the ones that ended because nothing could answer any more.
        hops: handler runs started.
        handler_errors: handler runs that raised (in process or in a worker).
        timeouts: handler runs over their ``timeout_seconds``, and requests over their
            ``timeout``.
        late_replies: answers and calls on a thread that was already retired, dropped.
        overloaded: ingress calls refused because the organism stayed full.
        lost: conversations ended by a backend or internal failure (each one logged).
        cancelled: requests whose requester stopped waiting (cancelled), before or after the
            conversation started.
        rejected: ingress calls refused for their input before a conversation started (no
            route, forged sender, not a payload, schema violation, bad XML); each logged.
        abandoned: handlers that went on running after the pump cancelled them; each logged,
            its concurrency slot given back.
    """

    conversations: int = 0
    answered: int = 0
    failed: int = 0
    no_answer: int = 0
    hops: int = 0
    handler_errors: int = 0
    timeouts: int = 0
    late_replies: int = 0
    overloaded: int = 0
    lost: int = 0
    cancelled: int = 0
    rejected: int = 0
    abandoned: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A failure that reached the outside world with nobody waiting for it (``send``/``inject``).

    Kept in `Organism.dead_letters` (bounded) and logged at WARNING.
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
        self.is_async = inspect.iscoroutinefunction(listener.handler)
        # a cpu_bound listener runs no more hops than the pool has workers: the rest wait in
        # its backlog, where no timeout runs, rather than queued inside the pool, where it does
        self.limit = listener.max_concurrency
        if listener.cpu_bound:
            self.limit = min(self.limit, pool_workers)
        self.busy = 0
        self.backlog: deque[_Hop] = deque()


class _Conversation:
    __slots__ = (
        "done", "expired", "future", "hops", "id", "opening", "running", "started_by", "timer"
    )  # fmt: skip

    def __init__(self, future: asyncio.Future[Any] | None, to: str) -> None:
        self.id = ""  # set when its opening call is made
        self.future = future
        self.timer: asyncio.TimerHandle | None = None  # the request's deadline
        self.hops = 0
        self.done = False
        self.opening = True
        self.expired = False  # the deadline passed while the conversation was opening
        self.started_by = to
        self.running: set[_Hop] = set()  # hops whose handlers run now (in process or pool)


class _Frame:
    """One call: the listener handling it, its opaque thread id and its caller's frame.

    ``live`` counts what may still run on this thread: hops queued or running on it, and calls
    made from it that are not answered yet. The root frame (the outside sender) has no parent.
    """

    __slots__ = ("answered", "listener", "live", "parent", "thread")

    def __init__(self, listener: str, thread: str, parent: _Frame | None) -> None:
        self.listener = listener
        self.thread = thread
        self.parent = parent
        self.live = 1  # the hop that delivers the call
        self.answered = False


class _Hop:
    """One delivery to a handler, on the thread of ``frame``.

    ``settled`` is set when the watchdog or the conversation's end takes the hop over
    (``"timeout"`` or ``"ended"``); ``abandoned`` when its handler ignored that cancel.
    """

    __slots__ = (
        "abandoned", "cancels", "conv", "frame", "payload", "route", "sender", "settled", "task"
    )  # fmt: skip

    def __init__(
        self, route: _Route, frame: _Frame, sender: str, payload: object, conv: _Conversation
    ) -> None:
        self.route = route
        self.frame = frame
        self.sender = sender
        self.payload = payload
        self.conv = conv
        self.task: asyncio.Task[Any] | None = None
        self.settled: str | None = None
        self.cancels = 0  # task.cancel() calls the pump made for this hop, to balance
        self.abandoned = False


class _Settled(Exception):
    """The hop was taken over while its handler ran; what the handler did is dropped."""


class _Failure(Exception):
    """The hop failed (its handler raised, or its output was refused) with this reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


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
        # sender names an envelope from outside may not claim: listener names as people and
        # terminals compare them (case, surrounding spaces, compatibility forms)
        self._reserved = {_normal_name(name) for name in self._routes}
        self._registry = registry
        self._limits = limits or ParseLimits()
        self._ingress = _Ingress(ingress_limit, ingress_wait_seconds)
        self._pool_invoker = pool_invoker
        self._history = history
        self._max_hops = max_hops
        self._convs: dict[str, _Conversation] = {}
        self._running: dict[_Hop, float] = {}  # in-process handler runs -> deadline
        self._abandoned: set[_Hop] = set()  # handlers that ignored cancellation, still running
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retiring: set[asyncio.Task[Any]] = set()  # background retirements
        self._closing = False
        self._cancelling = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._tick = min([0.05, *(r.timeout / 4 for r in self._routes.values())])
        self.stats = PumpStats()
        self.dead_letters: deque[DeadLetter] = deque(maxlen=1000)
        self.observer: Callable[[Envelope], None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def listeners(self) -> dict[str, Listener]:
        """The listeners by name."""
        return {name: r.def_ for name, r in self._routes.items()}

    def start(self) -> None:
        """Start the watchdog (a task the pump owns, so the organism may be left from any
        task or cancel scope, unlike a task group entered in ``__aenter__``)."""
        self._loop = asyncio.get_running_loop()
        self._watchdog = self._loop.create_task(self._watch())

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await anyio.sleep(self._tick)
            now = loop.time()
            for hop, deadline in list(self._running.items()):
                if now < deadline:
                    if hop.settled is not None:
                        self._cancel(hop)  # level-triggered, as in trio: until it stops
                elif hop.settled is None:
                    self._settle(hop, "timeout")
                    self._spawn_call(self._report_timeout(hop))
                else:
                    self._abandon(hop)
            for hop in self._abandoned:
                self._cancel(hop)

    async def wait_idle(self) -> None:
        """Wait until no conversation is open."""
        await self._idle.wait()

    async def aclose(self, drain_timeout: float) -> None:
        """Refuse new work, let open conversations finish for ``drain_timeout`` seconds, then
        end the rest with ``shutdown``, cancel their handlers and wait at most
        ``_CANCEL_GRACE`` seconds more. A handler that ignores cancellation is abandoned
        (logged), never waited for."""
        self._closing = True
        for waiter in self._ingress.waiters:
            if not waiter.done():
                waiter.set_exception(_shutdown())
        loop = asyncio.get_running_loop()
        # shielded: leaving `async with` from a cancelled scope must still stop everything
        with anyio.CancelScope(shield=True):
            try:
                with anyio.move_on_after(drain_timeout):
                    await self._idle.wait()
                self._cancelling = True  # freed slots no longer start backlogged hops
                for route in self._routes.values():
                    route.backlog.clear()
                convs = list(self._convs.values())
                for conv in convs:  # settles (and so cancels) their running hops
                    self._finish(conv, _shutdown(conv.started_by, conv.id))
                tasks = [t for t in self._tasks if not t.done()]
                for task in tasks:
                    task.cancel()
                stop_by = loop.time() + _CANCEL_GRACE
                if tasks:
                    _, stuck = await asyncio.wait(tasks, timeout=_CANCEL_GRACE)
                    hops = {hop.task: hop for hop in [*self._running, *self._abandoned]}
                    for task in stuck:
                        self.stats.abandoned += 1
                        hop = hops.get(task)
                        what = (
                            f"the handler of {hop.route.name!r} on thread {hop.frame.thread}"
                            if hop is not None
                            else f"a task of the organism ({task.get_name()})"
                        )
                        log.warning(
                            "%s did not stop when cancelled as the organism closed (it ignores "
                            "cancellation); abandoned, it may still be running. Let "
                            "CancelledError propagate from handlers.",
                            what,
                        )
                retire = [self._retire(conv.id) for conv in convs]
                if retire:
                    with anyio.move_on_after(max(0.0, stop_by - loop.time()) + 1.0):
                        await asyncio.gather(*retire)
                if self._retiring:
                    # conversations whose opening was cut short: undo them while we can
                    _, late = await asyncio.wait(
                        self._retiring, timeout=max(0.0, stop_by - loop.time()) + 1.0
                    )
                    for task in late:
                        task.cancel()
            finally:
                if self._watchdog is not None:
                    self._watchdog.cancel()
                    await asyncio.wait([self._watchdog])

    # -- ingress --------------------------------------------------------------------------------

    async def request(self, to: str, payload: object, timeout: float) -> object:
        """Start a conversation and wait for its answer (see `Organism.request`).

        ``timeout`` covers the whole call: waiting at ingress, the opening write, the answer.
        """
        _check_timeout(timeout)
        route = self._route_for(to, payload)
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        conv = _Conversation(future, to)
        task = asyncio.current_task()
        conv.timer = loop.call_at(loop.time() + timeout, self._expire, conv, task, timeout)
        try:
            await self._open(conv, route, payload, EXTERNAL)
        except asyncio.CancelledError:
            conv.timer.cancel()
            if conv.expired and task is not None and task.uncancel() == 0:
                raise _request_timeout(to, timeout, "before it could start") from None
            self.stats.cancelled += 1
            raise
        except BaseException:
            conv.timer.cancel()
            raise
        try:
            return await future
        finally:
            if not conv.done:  # the caller gave up (cancelled): end it, stop its work
                self.stats.cancelled += 1
                self._spawn_call(self._end(conv, DeliveryError(
                    "the requester stopped waiting (cancelled)", reason="cancelled",
                    listener=to, thread=conv.id,
                )))  # fmt: skip

    async def send(self, to: str, payload: object) -> str:
        """Start a conversation without waiting; returns its first thread id."""
        route = self._route_for(to, payload)
        conv = _Conversation(None, to)
        await self._open(conv, route, payload, EXTERNAL)
        return conv.id

    async def inject(self, data: bytes | str) -> str:
        """Start a conversation from a raw envelope; returns its first thread id."""
        if not isinstance(data, bytes | str):
            raise UsageError(
                f"inject() takes a v1 envelope as bytes or str, not {type(data).__name__}"
            )
        try:
            env = Envelope.from_bytes(data, self._limits)
            route = self._routes.get(env.to)
            if route is None:
                raise self._no_route(env.to)
            if env.payload_tag != route.spec.tag:
                raise DeliveryError(
                    f"{env.to!r} accepts <{route.spec.tag}>, not <{env.payload_tag}>",
                    reason="no_route", listener=env.to,
                )  # fmt: skip
            sender = env.sender
            if sender and self._is_reserved(sender):
                raise DeliveryError(
                    f"an envelope from outside claims to come from {sender!r}, a listener or "
                    "reserved name (names compare ignoring case, surrounding spaces and a "
                    "leading '_'); leave <from> empty or name the outside sender",
                    reason="forged_sender", listener=env.to,
                )  # fmt: skip
            obj: object = from_element(route.def_.payload_class, env.payload)
        except XmlPipelineError as exc:
            self.stats.rejected += 1
            log.warning("inject refused: %s", exc)
            raise
        conv = _Conversation(None, route.name)
        await self._open(conv, route, obj, sender or EXTERNAL)
        return conv.id

    def _is_reserved(self, sender: str) -> bool:
        name = _normal_name(sender)
        return name in self._reserved or name.startswith("_") or not name

    def _route_for(self, to: str, payload: object) -> _Route:
        try:
            if not isinstance(to, str):
                raise UsageError(f"the target must be a listener name (str), not {to!r}")
            if not is_payload(payload) or isinstance(payload, type):
                what = "a class" if isinstance(payload, type) else type(payload).__name__
                raise PayloadTypeError(
                    f"the payload sent to {to!r} must be a @payload object, not {what} "
                    f"({_short(payload)}); build one of the listener's payload class"
                )
            route = self._routes.get(to)
            if route is None:
                raise self._no_route(to)
            if type(payload) is not route.def_.payload_class:
                raise DeliveryError(
                    _wrong_class(to, route.def_.payload_class, payload, "the request"),
                    reason="no_route",
                    listener=to,
                )
            check_payload(payload)
        except XmlPipelineError:
            self.stats.rejected += 1
            raise
        return route

    def _no_route(self, to: str) -> DeliveryError:
        close = get_close_matches(to, list(self._routes), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; listeners: {sorted(self._routes)}"
        return DeliveryError(f"no listener named {to!r}{hint}", reason="no_route", listener=to)

    async def _open(self, conv: _Conversation, route: _Route, payload: object, sender: str) -> None:
        """Admit ``conv`` and make its opening call; on any failure nothing is left behind."""
        await self._admit()
        conv.id = new_thread_id()
        try:
            entry = self._entry(sender, route.name, payload)
            rec = await self._registry.open_conversation(conv.id, route.name, entry)
        except BaseException as exc:
            self._release()
            # the opening write may have happened (cancelled or failed mid-call): undo it
            self._retire_soon(conv.id)
            if isinstance(exc, BackendError):
                raise DeliveryError(
                    f"the conversation to {route.name!r} could not start: {exc.message}",
                    reason=exc.reason, listener=route.name, thread=conv.id,
                ) from exc  # fmt: skip
            raise
        conv.opening = False
        self._convs[conv.id] = conv
        self._idle.clear()
        self.stats.conversations += 1
        root = _Frame(sender, self._registry.root_id, None)
        first = _Frame(route.name, rec.thread_id, root)
        self._dispatch(_Hop(route, first, sender, payload, conv))

    def _expire(self, conv: _Conversation, task: asyncio.Task[Any] | None, timeout: float) -> None:
        """A request's deadline: fail it, whichever phase it is in."""
        if conv.done:
            return
        self.stats.timeouts += 1
        if conv.opening:
            if not conv.expired and task is not None:
                conv.expired = True
                task.cancel()  # balanced in request()
            return
        self._spawn_call(self._end(conv, _request_timeout(conv.started_by, timeout, "", conv.id)))

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
            except asyncio.CancelledError:  # shutdown: give the slot back, then go
                if not hop.abandoned:
                    self._free_slot(hop.route)
                raise
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # the backend or the pump failed under this hop
                nexts = []
                log.error(
                    "hop to %r on thread %s failed", hop.route.name, hop.frame.thread,
                    exc_info=exc,
                )  # fmt: skip
                reason = exc.reason if isinstance(exc, BackendError) else Reason.INTERNAL_ERROR
                await self._end(hop.conv, DeliveryError(
                    f"delivery to {hop.route.name!r} failed: {type(exc).__name__}: {exc}",
                    reason=reason, listener=hop.route.name, thread=hop.frame.thread,
                ))  # fmt: skip
            if hop.abandoned:
                return  # its slot was given back when it was abandoned
            self._free_slot(hop.route)
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
        backlog = route.backlog
        while backlog and not self._cancelling:
            hop = backlog.popleft()
            if not hop.conv.done:  # hops of conversations that ended are dropped here
                self._spawn(hop)  # the slot passes to the waiting hop
                return
        route.busy -= 1

    async def _step(self, hop: _Hop) -> list[_Hop]:
        route, conv, frame = hop.route, hop.conv, hop.frame
        if conv.done:  # ended while this hop waited: do not run it
            return []
        conv.hops += 1
        if conv.hops > self._max_hops:
            await self._end(conv, DeliveryError(
                f"the conversation made more than {self._max_hops} hops (a call cycle?); it "
                f"was stopped at {route.name!r}; raise organism.max_hops if that is intended",
                reason="hop_limit", listener=route.name, thread=frame.thread,
            ))  # fmt: skip
            return []
        self.stats.hops += 1
        if self.observer is not None:
            try:
                self.observer(Envelope(hop.sender, route.name, frame.thread, hop.payload))
            except Exception:
                log.exception("the hop observer raised; the hop goes on")
        history = partial(self.read_history, conv.id) if self._history else None
        meta = HandlerMetadata(frame.thread, hop.sender, route.name, history)
        try:
            result = await self._invoke(hop, meta)
            outputs = self._check_outputs(route, result)
        except _Settled:
            return []  # the watchdog or the conversation's end decided this hop's outcome
        except _Failure as exc:
            if exc.reason == Reason.HANDLER_ERROR:
                self.stats.handler_errors += 1
            elif exc.reason == Reason.TIMEOUT:
                self.stats.timeouts += 1
            return await self._fail(conv, frame, exc.reason, exc.message, route.name)
        nexts: list[_Hop] = []
        for out, xml in outputs:
            if out.to is None:
                nexts.extend(await self._respond(conv, frame, route.name, out.payload, xml))
                continue
            entry = self._entry(route.name, out.to, out.payload, xml)
            rec = await self._registry.extend_chain(frame.thread, out.to, entry)
            if rec is None:  # this thread was retired meanwhile (answered, timed out, lost)
                self.stats.late_replies += 1
                if not conv.done and not await self._registry.exists(conv.id):
                    await self._lost(conv, route.name)
                continue
            frame.live += 1
            callee = _Frame(out.to, rec.thread_id, frame)
            nexts.append(_Hop(self._routes[out.to], callee, route.name, out.payload, conv))
        frame.live -= 1
        if frame.live == 0 and not frame.answered and not conv.done:
            failed = await self._fail(conv, frame, Reason.NO_ANSWER, _no_answer(frame), route.name)
            nexts.extend(failed)
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
        return [decode_entry(e) for e in await self._registry.history(conversation)]

    async def _invoke(self, hop: _Hop, meta: HandlerMetadata) -> object:
        """Run the handler; return what it returned. Anything user code raises (any
        BaseException but a cancel of the pump's or KeyboardInterrupt) becomes `_Failure`.

        Raises:
            _Settled: the hop was taken over meanwhile; its result is dropped.
            _Failure: the handler failed.
            asyncio.CancelledError: the pump is shutting down.
        """
        route, conv = hop.route, hop.conv
        task = hop.task
        if route.def_.cpu_bound and self._pool_invoker is not None:
            stored = await self._registry.history(conv.id) if self._history else []
            if conv.done:
                raise _Settled  # it ended while the history was read: do not start the work
            call: Any = self._pool_invoker(route.def_, hop.payload, meta, route.timeout, stored)
        else:
            self._running[hop] = asyncio.get_running_loop().time() + route.timeout
            call = None
        conv.running.add(hop)
        caught: BaseException | None = None
        try:
            if call is not None:
                result = await call
            elif route.is_async:
                result = await route.def_.handler(hop.payload, meta)  # type: ignore[misc]
            else:
                result = route.def_.handler(hop.payload, meta)
                if inspect.isawaitable(result):  # an async callable object, a wrapped coroutine
                    result = await result
                else:
                    self._blocked(hop)
        except BaseException as exc:  # sorted below, once the hop's state is known
            caught = exc
            result = None
        finally:
            self._running.pop(hop, None)
            self._abandoned.discard(hop)
            conv.running.discard(hop)
        if hop.settled is not None:
            # the cancels the pump made, balanced however the handler ended
            pending = 0
            for _ in range(hop.cancels):
                pending = task.uncancel() if task is not None else 0
            if pending > 0:
                raise asyncio.CancelledError  # a shutdown cancel landed too
            raise _Settled
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
            raise _Failure(caught.reason, caught.message) from None
        log.debug("handler of %r raised", route.name, exc_info=caught)
        raise _Failure(
            Reason.HANDLER_ERROR,
            f"{route.name!r} raised {type(caught).__name__}: {_describe(caught)}"
            f"{raised_at(caught)}",
        ) from None

    def _blocked(self, hop: _Hop) -> None:
        """A plain function returned: nothing could interrupt it on the event loop, so an
        answer after its deadline is settled as a timeout here."""
        deadline = self._running.get(hop)
        if deadline is None or hop.settled is not None:
            return
        loop = self._loop or asyncio.get_running_loop()
        if loop.time() < deadline:
            return
        route = hop.route
        log.warning(
            "the plain (sync) handler of %r blocked the event loop past its %ss timeout; "
            "nothing could stop it there: make it async, or mark the listener cpu_bound",
            route.name, route.timeout,
        )  # fmt: skip
        hop.settled = "timeout"
        self._spawn_call(self._report_timeout(hop))

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
                Reason.INVALID_RESPONSE,
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
                    Reason.NO_ROUTE, f"{route.name!r} called {self._no_route(out.to).message}"
                )
            if out.to not in route.peers:
                raise _Failure(
                    Reason.PEER_DENIED,
                    f"{route.name!r} may not call {out.to!r}: it is not among its peers "
                    f"{sorted(route.peers)}; add it to peers in organism.yaml",
                )
            if type(out.payload) is not target.def_.payload_class:
                sent = f"{route.name!r} called it"
                raise _Failure(
                    Reason.NO_ROUTE,
                    _wrong_class(out.to, target.def_.payload_class, out.payload, sent),
                )
        elif not is_payload(out.payload):
            raise _Failure(
                Reason.INVALID_RESPONSE,
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
            raise _Failure(Reason.SCHEMA_VIOLATION, f"{route.name!r} sent {exc.message}") from None

    async def _respond(
        self,
        conv: _Conversation,
        frame: _Frame,
        responder: str,
        payload: object,
        xml: bytes | None = None,
    ) -> list[_Hop]:
        """Answer the call of ``frame``: prune its thread and deliver to the caller's frame."""
        if frame.answered:  # answered (or failed) already: a second answer has nowhere to go
            self.stats.late_replies += 1
            return []
        frame.answered = True
        caller = frame.parent
        assert caller is not None, "the root frame is never answered"
        # an answer leaving the organism ends the conversation, history and all: no entry
        leaves = caller.parent is None
        entry = None if leaves else self._entry(responder, caller.listener, payload, xml)
        res = await self._registry.prune_for_response(frame.thread, entry)
        if res is None:
            self.stats.late_replies += 1
            if not conv.done and not await self._registry.exists(conv.id):
                await self._lost(conv, responder)
            return []
        if res.conversation_ended:
            await self._end(conv, payload, retired=True)
            return []
        return [_Hop(self._routes[res.caller], caller, responder, payload, conv)]

    async def _fail(
        self, conv: _Conversation, frame: _Frame, reason: str, message: str, listener: str
    ) -> list[_Hop]:
        """The call of ``frame`` failed: answer its caller with an ErrorReport, travelling up
        through callers that do not handle errors."""
        report = ErrorReport(reason=Reason(reason), message=xml_safe(message), listener=listener)
        while True:
            nexts = await self._respond(conv, frame, frame.listener, report)
            if not nexts or nexts[0].route.def_.handles_errors:
                return nexts
            frame = nexts[0].frame  # the caller does not handle errors: its call fails too

    async def _report_timeout(self, hop: _Hop) -> None:
        """The watchdog settled ``hop`` at its deadline: answer its caller with ``timeout``."""
        self.stats.timeouts += 1
        route = hop.route
        if hop.conv.done:
            return
        message = f"{route.name!r} took longer than {route.timeout}s"
        nexts = await self._fail(hop.conv, hop.frame, Reason.TIMEOUT, message, route.name)
        for nxt in nexts:
            self._dispatch(nxt)

    def _settle(self, hop: _Hop, reason: str) -> None:
        """Take a running hop over: its outcome is decided here; cancel its handler once."""
        if hop.settled is not None:
            return
        hop.settled = reason
        loop = self._loop or asyncio.get_running_loop()
        self._running[hop] = loop.time() + _CANCEL_GRACE  # watched for abandonment
        self._cancel(hop)

    def _cancel(self, hop: _Hop) -> None:
        if hop.task is not None and not hop.task.done():
            hop.cancels += 1
            hop.task.cancel()

    def _abandon(self, hop: _Hop) -> None:
        """A settled handler ignored its cancel: stop waiting for it, give its slot back."""
        del self._running[hop]
        hop.conv.running.discard(hop)
        hop.abandoned = True
        self._abandoned.add(hop)  # cancelled again at every tick while it runs
        self.stats.abandoned += 1
        route = hop.route
        log.warning(
            "the handler of %r on thread %s did not stop within %ss of being cancelled "
            "(%s); it is abandoned and its slot given back, so %r may run over its "
            "max_concurrency while the handler goes on. Let CancelledError propagate.",
            route.name, hop.frame.thread, _CANCEL_GRACE, hop.settled, route.name,
        )  # fmt: skip
        self._free_slot(route)

    async def _lost(self, conv: _Conversation, responder: str) -> None:
        """The backend no longer knows an open conversation: say so instead of waiting."""
        log.warning("conversation %s was lost by the backend", conv.id)
        await self._end(conv, DeliveryError(
            f"the backend no longer knows this conversation (its records expired after "
            f"thread_ttl_seconds, or the backend lost its data); the answer from {responder!r} "
            "was dropped",
            reason="backend_error", listener=responder, thread=conv.id,
        ), retired=True)  # fmt: skip

    async def _end(self, conv: _Conversation, outcome: object, *, retired: bool = False) -> None:
        """Finish a conversation once; then retire its records unless that happened already."""
        if self._finish(conv, outcome) and not retired:
            await self._retire(conv.id)

    def _finish(self, conv: _Conversation, outcome: object) -> bool:
        """Deliver a conversation's outcome, stop its running work, free its ingress slot.

        Returns:
            False when it had finished already.
        """
        if conv.done:
            return False
        conv.done = True
        if conv.timer is not None:
            conv.timer.cancel()
        del self._convs[conv.id]
        self._release()
        if not self._convs:
            self._idle.set()
        for hop in list(conv.running):
            self._settle(hop, "ended")
        error = _as_error(outcome, conv)
        if error is None:
            self.stats.answered += 1
        else:
            self.stats.no_answer += error.reason == Reason.NO_ANSWER
            self.stats.lost += error.reason in _LOST
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
        return True

    async def _retire(self, conversation: str) -> None:
        try:
            await self._registry.cleanup(conversation)
        except Exception:  # the thread TTL is the backstop
            log.warning(
                "could not retire conversation %s now; its records expire after thread_ttl_seconds",
                conversation,
                exc_info=True,
            )

    def _retire_soon(self, conversation: str) -> None:
        """Undo a conversation whose opening call was cut short, in the background."""
        loop = self._loop or asyncio.get_running_loop()
        task = loop.create_task(self._abandon_open(conversation))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _abandon_open(self, conversation: str) -> None:
        delay = _RETIRE_BACKOFF[0]
        for attempt in range(1, _RETIRE_ATTEMPTS + 1):
            try:
                await self._registry.abandon_conversation(conversation)
                return
            except Exception as exc:
                if attempt == _RETIRE_ATTEMPTS:
                    log.warning(
                        "could not retire conversation %s, whose start was cut short, after %d "
                        "attempts (%s); its records expire after thread_ttl_seconds",
                        conversation, attempt, exc,
                    )  # fmt: skip
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETIRE_BACKOFF[1])


def _normal_name(name: str) -> str:
    """A name as people compare it: compatibility forms folded, case folded, spaces trimmed."""
    return unicodedata.normalize("NFKC", name).strip().casefold()


def _check_timeout(timeout: float) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise UsageError(f"timeout must be a number of seconds, not {timeout!r}")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise UsageError(f"timeout must be a finite number of seconds above 0, not {timeout!r}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return text if text else "(no message)"


def _wrong_class(to: str, accepted: type, payload: object, sent: str) -> str:
    """Why ``payload`` cannot go to ``to``; for two classes of one tag, which is which."""
    got = type(payload)
    tag, wanted = payload_spec(got).tag, payload_spec(accepted).tag
    if tag != wanted:
        return f"{to!r} accepts <{wanted}>, not <{tag}> ({sent} with <{tag}>)"
    return (
        f"{to!r} accepts <{wanted}> of class {_where(accepted)}, and {sent} with another class "
        f"of that name, {_where(got)}; build the payload from the listener's own class "
        f"(Organism.listeners gives each listener's payload_class)"
    )


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _no_answer(frame: _Frame) -> str:
    caller = frame.parent
    if caller is None or caller.parent is None:
        return (
            f"the conversation ended without an answer: {frame.listener!r} returned nothing "
            "and has no call in flight; answer with HandlerResponse.respond(payload)"
        )
    return (
        f"{frame.listener!r} returned nothing for the call from {caller.listener!r} and has no "
        "call in flight, so that call can never be answered; answer with "
        "HandlerResponse.respond(payload)"
    )


def _request_timeout(
    to: str, timeout: float, when: str, thread: str | None = None
) -> DeliveryError:
    phase = f" ({when})" if when else ""
    return DeliveryError(
        f"no answer from {to!r} within the request timeout of {timeout:g}s{phase}; raise the "
        "request's timeout, or look at what the conversation is waiting for",
        reason="timeout", listener=to, thread=thread,
    )  # fmt: skip


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
