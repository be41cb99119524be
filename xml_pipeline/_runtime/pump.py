"""StreamPump: routes payloads between listeners along opaque call chains.

One hop: the target's handler runs under the listener's concurrency limit; what it returns is
checked (peers, payload class, field spec) and routed: a call extends the chain, an answer
prunes it and goes to the caller, a failure travels up the chain as an `ErrorReport`.

The pump composes one module per job: the ingress gate (`ingress`), envelopes from outside
(`outside`), how conversations end (`outcomes`), handler runs and deadlines (`invocation`),
output checks (`outputs`), the transport that carries hops to listeners (`transport`), events
for observers (`hooks`), compensation of failed conversations (`compensation`), the runs people
list (`run_views`) and the registry, the one door to shared state (`registry`). What stays
here is routing: a hop's step and the *continuation* loop, kept together because that is where
a hop's time goes:
- the task that ran a handler runs the next hop itself when the target has a free slot, and
  takes over the next backlogged hop of the listener whose slot it frees; a new task is made
  only for fan-out. ``asyncio.create_task`` makes these (about 7 us) rather than
  ``TaskGroup.start_soon`` (about 35 us); the pump tracks them and cancels them on close.
- every call is a `Frame` that counts what may still happen on its thread (hops queued or
  running there, calls it made that are unanswered). A frame whose count drops to zero before
  it answered can never answer: the pump fails that call with ``no_answer`` at once, naming the
  callee, instead of letting its caller wait for the conversation's deadline.
- a request's deadline covers the whole call; it is an entry in the pump's deadline wheel
  (`deadlines`: a set operation, where a loop timer per request cost 2-3 us under uvloop).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from time import perf_counter
from typing import Any

import anyio

from xml_pipeline._errors import (
    BackendError,
    DeliveryError,
    PayloadTypeError,
    Reason,
    SchemaViolation,
    UnknownIdError,
    UsageError,
    XmlPipelineError,
)
from xml_pipeline._handlers import ErrorReport, HandlerMetadata, Listener
from xml_pipeline._runtime.compensation import compensate
from xml_pipeline._runtime.dead_letters import DeadLetterRecorder
from xml_pipeline._runtime.deadlines import DeadlineWheel
from xml_pipeline._runtime.hooks import ConversationEvent, Hooks, HopEvent
from xml_pipeline._runtime.hops import Conversation, Frame, Hop, ListenerState
from xml_pipeline._runtime.ingress import IngressGate
from xml_pipeline._runtime.invocation import CANCEL_GRACE, Invocation, Settled
from xml_pipeline._runtime.invoker import Invoker
from xml_pipeline._runtime.outbox import Outbox
from xml_pipeline._runtime.outcomes import Conversations, Counters, PumpStats
from xml_pipeline._runtime.outputs import Failure, check_outputs, no_route, wrong_class
from xml_pipeline._runtime.outside import OutsideEnvelopes
from xml_pipeline._runtime.pool import ProcessPool
from xml_pipeline._runtime.recovery import ListenerRecovery
from xml_pipeline._runtime.registry import ThreadRegistry, new_thread_id
from xml_pipeline._runtime.retry import AttemptFailure, NoRetry, RetryPolicy
from xml_pipeline._runtime.run_views import Finished, RunViews
from xml_pipeline._runtime.transport import LocalTransport, Transport
from xml_pipeline._settings import DeadLetterConfig, OrganismSettings, RunsConfig, defaults
from xml_pipeline._wire.codecs import xml_safe
from xml_pipeline._wire.envelope import Envelope
from xml_pipeline._wire.history import HistoryEntry
from xml_pipeline._wire.parsing import ParseLimits
from xml_pipeline._wire.payloads import check_payload, is_payload, to_xml

__all__ = ["PumpStats", "StreamPump"]

# the defaults of the settings the pump is given (written once, in _settings)
_DEFAULTS = {
    "outbox_size": defaults(OrganismSettings)["outbox_size"],
    "dead_letters_max": defaults(DeadLetterConfig)["max_entries"],
    "keep_finished": defaults(RunsConfig)["keep_finished"],
}

log = logging.getLogger("xml_pipeline.pump")
EXTERNAL = "_external"
_YIELD_EVERY = 64  # hops one task runs back to back before it lets the loop run others
# Retrying the retirement of a conversation whose opening outcome is unknown: capped backoff.
_RETIRE_ATTEMPTS = 6
_RETIRE_BACKOFF = (0.05, 2.0)
# How long closing waits for dead letters to reach the backend; the rest are logged and counted.
_DEAD_LETTER_FLUSH = 5.0

_new_event: Any = tuple.__new__  # builds a `HopEvent` from all its fields at once


class StreamPump:
    """Routes payloads between listeners; owned by an `Organism`, one per organism.

    Raises:
        UsageError: a listener is ``cpu_bound`` but no ``pool_invoker`` is given.
    """

    def __init__(
        self,
        listeners: Sequence[Listener],
        registry: ThreadRegistry,
        *,
        limits: ParseLimits,
        ingress_limit: int,
        ingress_wait_seconds: float,
        max_hops: int,
        pool_invoker: Invoker | None = None,
        pool_workers: int = 1,
        retry: RetryPolicy | None = None,
        outbox_size: int = _DEFAULTS["outbox_size"],
        dead_letters_max: int = _DEFAULTS["dead_letters_max"],
        keep_finished: int = _DEFAULTS["keep_finished"],
        process: str = "",
    ) -> None:
        policy = retry if retry is not None else NoRetry()
        self._states = {
            listener.name: ListenerState(listener, pool_workers, policy) for listener in listeners
        }
        needing_pool = [s.name for s in self._states.values() if s.listener.cpu_bound]
        if needing_pool and pool_invoker is None:
            raise UsageError(f"cpu_bound listeners {needing_pool} need a process pool invoker")
        self._registry = registry
        self._max_hops = max_hops
        self._counters = Counters()
        self._outside = OutsideEnvelopes(self._states, limits, self._counters)
        self._ingress = IngressGate(ingress_limit, ingress_wait_seconds)
        self._invocation = Invocation(
            pool=pool_invoker,
            registry=registry,
            counters=self._counters,
            tick=min([0.05, *(s.timeout / 4 for s in self._states.values())]),
            on_timeout=self._timed_out,
            on_abandon=self._free_slot,
        )
        self.outbox = Outbox(outbox_size)
        self.dead_letters = DeadLetterRecorder(registry, self._counters, dead_letters_max)
        self._conversations = Conversations(
            self._ingress,
            self._counters,
            self._invocation.settle,
            self.outbox,
            self.dead_letters.record_failure,
        )
        self._conversations.ended = self._conversation_ended
        self._transport: Transport = LocalTransport(self._states.values(), self._spawn)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retiring: set[asyncio.Task[Any]] = set()  # background retirements
        self._closing = False
        self.hooks = Hooks()
        self._watchdog: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines: DeadlineWheel[Conversation] | None = None  # requests' deadlines
        self._listeners = {name: state.listener for name, state in self._states.items()}
        self._history_reader = registry.history if registry.history_on else None
        # listeners with a compensation: their answers are remembered per conversation
        self._compensating = frozenset(s.name for s in self._states.values() if s.compensate)
        self._last_run = 0  # run ids are given in order: a smaller one has started already
        # finished runs, newest last: one append per run (None: none kept)
        self._finished: deque[Finished] | None = (
            deque(maxlen=keep_finished) if keep_finished else None
        )
        self.process = process  # the instance id run ids end with ("r12@3fa9c1")
        pool: ProcessPool | None = getattr(pool_invoker, "pool", None)
        self.run_views = RunViews(self._conversations, self._states, self._finished, pool, process)

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def listeners(self) -> dict[str, Listener]:
        """The listeners by name (do not change the dict)."""
        return self._listeners

    @property
    def stats(self) -> PumpStats:
        """A snapshot of the counters."""
        return self._counters.snapshot(self._ingress.overloaded, self.outbox.dropped)

    @property
    def open_conversations(self) -> int:
        """Conversations open now."""
        return len(self._conversations)

    def listener_load(self) -> list[tuple[str, int, int, int]]:
        """``(listener, busy, backlog, limit)`` of every listener now (slots in use, hops
        waiting, ``max_concurrency``): read by a metrics sampler, never per hop."""
        return [(s.name, s.busy, len(s.backlog), s.limit) for s in self._states.values()]

    def start(self) -> None:
        """Start the watchdog (a task the pump owns, so the organism may be left from any
        task or cancel scope, unlike a task group entered in ``__aenter__``)."""
        self._loop = asyncio.get_running_loop()
        self._invocation.start(self._loop)
        self.dead_letters.start(self._loop)
        self._watchdog = self._loop.create_task(self._invocation.watch())
        self._deadlines = DeadlineWheel(self._loop, self._expire)

    async def wait_idle(self) -> None:
        """Wait until no conversation is open."""
        await self._conversations.idle.wait()

    async def aclose(self, drain_timeout: float) -> None:
        """Refuse new work, let open conversations finish for ``drain_timeout`` seconds, then
        end the rest with ``shutdown`` (each one dead-lettered, its envelope included), cancel
        their handlers and wait at most ``CANCEL_GRACE`` seconds more. A handler that ignores
        cancellation is abandoned (logged), never waited for. Dead letters still on their way
        to the backend get `_DEAD_LETTER_FLUSH` seconds."""
        self._closing = True
        self._ingress.close(DeliveryError(
            "the organism is stopping or has stopped: it starts no new conversation (nothing "
            "is counted or kept as a dead letter); start it again with 'async with organism:'",
            reason="shutdown",
        ))  # fmt: skip
        loop = asyncio.get_running_loop()
        # shielded: leaving `async with` from a cancelled scope must still stop everything
        with anyio.CancelScope(shield=True):
            try:
                with anyio.move_on_after(drain_timeout):
                    await self._conversations.idle.wait()
                self._transport.close()  # freed slots no longer start backlogged hops
                convs = self._conversations.all()
                for conv in convs:  # stops their running hops
                    self._conversations.finish(conv, _shutdown(conv.started_by, conv.id))
                tasks = [t for t in self._tasks if not t.done()]
                for task in tasks:
                    task.cancel()
                stop_by = loop.time() + CANCEL_GRACE
                if tasks:
                    _, stuck = await asyncio.wait(tasks, timeout=CANCEL_GRACE)
                    for task in stuck:
                        hop = self._invocation.hop_of(task)
                        if hop is not None and not self._invocation.abandoned_at_close(hop):
                            continue  # the watchdog gave up on it during the grace: once only
                        self._counters.abandoned += 1
                        what = (
                            f"the handler of {hop.state.name!r} on thread {hop.frame.thread}"
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
                self.outbox.close()
                if self._deadlines is not None:
                    self._deadlines.close()
                if self._watchdog is not None:
                    self._watchdog.cancel()
                    await asyncio.wait([self._watchdog])
                await self.dead_letters.flush(_DEAD_LETTER_FLUSH)

    # -- ingress --------------------------------------------------------------------------------

    async def request(self, to: str, payload: object, timeout: float) -> object:
        """Start a conversation and wait for its answer (see `Organism.request`).

        ``timeout`` covers the whole call: waiting at ingress, the opening write, the answer.
        """
        _check_timeout(timeout)
        state, xml = self._state_for(to, payload)
        return await self._converse(Conversation(None, to), state, payload, EXTERNAL, xml, timeout)

    async def request_envelope(self, data: bytes | str, timeout: float) -> bytes:
        """Start a conversation from a raw envelope and answer with a raw envelope (see
        `Organism.request_envelope`)."""
        _check_timeout(timeout)
        state, obj, sender, traceparent = self._outside.read(data)
        conv = Conversation(None, state.name)
        conv.traceparent = traceparent
        sender = sender or EXTERNAL  # anonymous: the outside, as history records it
        answer = await self._converse(conv, state, obj, sender, None, timeout)
        return Envelope(conv.answered_by, sender, conv.id, answer).to_bytes()

    async def _converse(
        self,
        conv: Conversation,
        state: ListenerState,
        payload: object,
        sender: str,
        xml: bytes | None,
        timeout: float,
    ) -> object:
        """Open ``conv`` with ``state``'s listener and wait ``timeout`` seconds at most for its
        outcome."""
        to = state.name
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        conv.future = future
        task = asyncio.current_task(loop)  # with the loop: no get_running_loop() inside
        conv.requester = task
        conv.timeout = timeout
        conv.deadline = loop.time() + timeout
        deadlines = self._deadlines
        if deadlines is None:  # a pump used without start(): a wheel on the running loop
            deadlines = self._deadlines = DeadlineWheel(loop, self._expire)
        conv.due = due = deadlines.add(conv, conv.deadline)
        try:
            first = await self._open(conv, state, payload, sender, xml)
        except asyncio.CancelledError:
            due.discard(conv)
            if conv.expired and task is not None and task.uncancel() == 0:
                raise _request_timeout(to, timeout, "before it could start") from None
            self._counters.cancelled += 1
            raise
        except BaseException:
            due.discard(conv)
            raise
        # Not run in the requester's own task, though it waits anyway: a handler that ignores
        # cancellation would then hold the requester, who must get its failure at once.
        self._transport.deliver(first)
        try:
            return await future
        finally:
            if not conv.done:  # the caller gave up (cancelled): end it, stop its work
                self._counters.cancelled += 1
                self._spawn_call(self._end(conv, DeliveryError(
                    "the requester stopped waiting (cancelled)", reason="cancelled",
                    listener=to, thread=conv.id,
                )))  # fmt: skip

    async def send(self, to: str, payload: object) -> str:
        """Start a conversation without waiting; returns its first thread id."""
        state, xml = self._state_for(to, payload)
        conv = Conversation(None, to)
        self._transport.deliver(await self._open(conv, state, payload, EXTERNAL, xml))
        return conv.id

    async def inject(self, data: bytes | str) -> str:
        """Start a conversation from a raw envelope; returns its first thread id."""
        state, obj, sender, traceparent = self._outside.read(data, "inject()")
        conv = Conversation(None, state.name)
        conv.traceparent = traceparent
        self._transport.deliver(await self._open(conv, state, obj, sender or EXTERNAL))
        return conv.id

    def _state_for(self, to: str, payload: object) -> tuple[ListenerState, bytes | None]:
        """The listener a request or send goes to, and the payload's XML when history needs
        it (written and checked in one pass).

        Raises:
            UsageError, PayloadTypeError, DeliveryError (``no_route``), SchemaViolation.
        """
        state = self._states.get(to) if type(to) is str else None
        if state is not None and type(payload) is state.payload_class:  # the usual case
            try:
                if self._registry.history_on:
                    return state, to_xml(payload)
                check_payload(payload)
                return state, None
            except XmlPipelineError:
                self._counters.rejected += 1
                raise
        try:
            if not isinstance(to, str):
                raise UsageError(f"the target must be a listener name (str), not {to!r}")
            if not is_payload(payload) or isinstance(payload, type):
                what = "a class" if isinstance(payload, type) else type(payload).__name__
                raise PayloadTypeError(
                    f"the payload sent to {to!r} must be a @payload object, not {what} "
                    f"({_short(payload)}); build one of the listener's payload class"
                )
            state = self._states.get(to)
            if state is None:
                raise no_route(to, self._states)
            if type(payload) is not state.listener.payload_class:
                raise DeliveryError(
                    wrong_class(to, state.listener.payload_class, payload, "the request"),
                    reason="no_route",
                    listener=to,
                )
            if self._registry.history_on:
                xml: bytes | None = to_xml(payload)
            else:
                check_payload(payload)
                xml = None
        except XmlPipelineError:
            self._counters.rejected += 1
            raise
        return state, xml

    async def _open(
        self,
        conv: Conversation,
        state: ListenerState,
        payload: object,
        sender: str,
        xml: bytes | None = None,
    ) -> Hop:
        """Admit ``conv`` and make its opening call; on any failure nothing is left behind.

        Returns:
            the conversation's first hop, for the caller to run or deliver.
        """
        if not self._ingress.try_admit():
            await self._ingress.admit()
        conv.id = new_thread_id()
        try:
            rec = await self._registry.open(conv.id, state.name, sender, payload, xml)
        except BaseException as exc:
            self._ingress.release()
            # the opening write may have happened (cancelled or failed mid-call): undo it
            self._retire_soon(conv.id)
            if isinstance(exc, BackendError):
                raise DeliveryError(
                    f"the conversation to {state.name!r} could not start: {exc.message}",
                    reason=exc.reason, listener=state.name, thread=conv.id,
                ) from exc  # fmt: skip
            raise
        conv.opening = False
        conv.payload, conv.sender = payload, sender  # a dead letter's envelope, if it fails
        self._conversations.opened(conv)
        if self.hooks.events:
            self.hooks.emit(ConversationEvent(
                "opened", conv.id, state.name, perf_counter(), None, conv.traceparent or None
            ))  # fmt: skip
        root = Frame(sender, self._registry.root_id, None)
        first = Frame(state.name, rec.thread_id, root)
        if self.hooks.active:
            first.maker = None  # observed: every frame has it (no AttributeError when read)
        return Hop(state, first, sender, payload, conv)

    def _expire(self, conv: Conversation) -> None:
        """A request's deadline: fail it, whichever phase it is in."""
        if conv.done:
            return
        self._counters.timeouts += 1
        timeout, task = conv.timeout, conv.requester
        if conv.opening:
            if not conv.expired and task is not None:
                conv.expired = True
                task.cancel()  # balanced in request()
            return
        self._spawn_call(self._end(conv, _request_timeout(conv.started_by, timeout, "", conv.id)))

    # -- seeing and steering running work ------------------------------------------------------

    def cancel_run(self, run_id: str) -> None:
        """Cancel a running handler: its caller gets ``cancelled`` (see `Organism.cancel_run`).

        Raises:
            UnknownIdError: no run of this process has that id.
            UsageError: the run has finished, or the id is not a run id.
        """
        hop = self.run_views.running_hop(run_id, self._last_run)
        self._invocation.settle(hop, "cancelled")
        self._spawn_call(self._report_cancel(hop))

    async def _report_cancel(self, hop: Hop) -> None:
        if hop.conv.done:
            return
        run = self.run_views.run_id(hop.run)
        message = f"run {run} of {hop.state.name!r} was cancelled (cancel_run)"
        for nxt in await self._failed_run(hop, Reason.CANCELLED, message):
            self._transport.deliver(nxt)

    def has_conversation(self, conversation: str) -> bool:
        """Whether a conversation with this id is open in this process."""
        return any(conv.id == conversation for conv in self._conversations.all())

    async def cancel_conversation(self, conversation: str) -> None:
        """End an open conversation with ``cancelled`` (see `Organism.cancel_conversation`).

        Raises:
            UnknownIdError: no conversation with that id is open here.
        """
        for conv in self._conversations.all():
            if conv.id == conversation:
                self._counters.cancelled += 1
                await self._end(conv, DeliveryError(
                    "the conversation was cancelled (cancel_conversation)", reason="cancelled",
                    listener=conv.started_by, thread=conv.id,
                ))  # fmt: skip
                return
        raise UnknownIdError(
            f"no open conversation {conversation!r}: it ended already or never existed",
            kind="conversation",
            id=str(conversation),
        )

    def recovery_status(self) -> dict[str, ListenerRecovery]:
        """Each listener's recovery counters and circuit state, by name."""
        return {
            name: state.recovery.snapshot(None if state.circuit is None else state.circuit.state)
            for name, state in self._states.items()
        }

    def _conversation_ended(self, conv: Conversation, error: DeliveryError | None) -> None:
        if conv.calls is not None:  # meta.calls nobody will answer: free their awaiting tasks
            for callee in conv.calls:
                if callee.waiter is not None:
                    callee.waiter.cancel()
                    callee.waiter = None
            conv.calls = None
        if error is not None and conv.answers:
            answers, conv.answers = conv.answers, None
            self._spawn_call(compensate(conv.id, answers, error, self.dead_letters))
        if self.hooks.events:
            outcome = None if error is None else str(error.reason)
            self.hooks.emit(
                ConversationEvent("ended", conv.id, conv.started_by, perf_counter(), outcome)
            )

    # -- hops -----------------------------------------------------------------------------------

    def _spawn(self, hop: Hop) -> None:
        """Start a task that runs ``hop`` (which holds its slot), then what follows it."""
        loop = self._loop or asyncio.get_running_loop()
        task = hop.task = loop.create_task(self._chain(hop))
        self._tasks.add(task)  # the chain removes its own task when it ends (no callback)

    def _spawn_call(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the pump tracks (and cancels on close)."""
        loop = self._loop or asyncio.get_running_loop()
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _chain(self, first: Hop) -> None:
        """Run ``first`` (which holds its slot), then what follows it in this task: one of the
        hops it produced, whose slot is free, and the next backlogged hop of the listener whose
        slot it freed."""
        task = first.task
        try:
            transport = self._transport
            hop: Hop | None = first
            ran = 0
            while hop is not None:
                hop.task = task
                try:
                    nexts = await self._step(hop)
                except asyncio.CancelledError:  # shutdown: give the slot back, then go
                    if not hop.abandoned:
                        self._free_slot(hop)
                    raise
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # the backend or the pump failed under this hop
                    nexts = []
                    log.error(
                        "hop to %r on thread %s failed", hop.state.name, hop.frame.thread,
                        exc_info=exc,
                    )  # fmt: skip
                    reason = exc.reason if isinstance(exc, BackendError) else Reason.INTERNAL_ERROR
                    await self._end(hop.conv, DeliveryError(
                        f"delivery to {hop.state.name!r} failed: {type(exc).__name__}: {exc}",
                        reason=reason, listener=hop.state.name, thread=hop.frame.thread,
                    ))  # fmt: skip
                if hop.abandoned:
                    return  # its slot was given back when it was abandoned
                waiting = transport.release(hop.state) if hop.holds_slot else None
                ran += 1
                if ran % _YIELD_EVERY == 0:
                    # a chain of handlers that never suspend must not starve the loop (the
                    # watchdog, timers, other conversations)
                    await asyncio.sleep(0)
                hop = None
                for nxt in nexts:
                    if hop is None and transport.claim(nxt):
                        hop = nxt
                    else:
                        transport.deliver(nxt)
                if waiting is not None:  # the freed slot's next hop: run it here when idle
                    if hop is None:
                        hop = waiting
                    else:
                        transport.start(waiting)
        finally:
            if task is not None:
                self._tasks.discard(task)  # the task ends: no done-callback needed

    def _free_slot(self, hop: Hop) -> None:
        """Give ``hop``'s slot back (if it holds it), starting the next waiting hop."""
        if not hop.holds_slot:
            return
        hop.holds_slot = False
        waiting = self._transport.release(hop.state)
        if waiting is not None:
            self._transport.start(waiting)

    async def _step(self, hop: Hop) -> list[Hop]:
        state, conv, frame = hop.state, hop.conv, hop.frame
        if conv.done:  # ended while this hop waited: do not run it
            return []
        conv.hops += 1
        if conv.hops > self._max_hops:
            await self._end(conv, DeliveryError(
                f"the conversation made more than {self._max_hops} hops (a call cycle?); it "
                f"was stopped at {state.name!r}; raise organism.max_hops if that is intended",
                reason="hop_limit", listener=state.name, thread=frame.thread,
            ))  # fmt: skip
            return []
        circuit = state.circuit
        if circuit is not None and circuit.state != "closed" and not circuit.allow(self._now()):
            return await self._circuit_open(hop)
        counters = self._counters
        counters.hops += 1
        state.recovery.attempts += 1
        self._last_run += 1
        hop.run = self._last_run
        hop.started = time.time()
        hooks = self.hooks.active
        started = self._emit_started(hop) if hooks else 0.0
        registry = self._registry
        meta = HandlerMetadata._for_hop(
            frame.thread, hop.sender, state.name, self._history_reader, conv.id, self, hop
        )
        finished = self._finished
        try:
            result = await self._invocation.run(hop, meta)
            outputs = check_outputs(state, result, self._states, registry.history_on)
        except Settled:
            if circuit is not None and hop.settled == "ended":
                circuit.released()  # no verdict: a half-open circuit may probe again
            if hooks:
                self._emit_finished(hop, started, _SETTLED.get(hop.settled or "", "timeout"))
            if finished is not None:
                finished.append((hop, hop.settled or "ended", "", time.time()))
            return []  # the watchdog or the conversation's end decided this hop's outcome
        except Failure as exc:
            if exc.reason == Reason.HANDLER_ERROR:
                counters.handler_errors += 1
            elif exc.reason == Reason.TIMEOUT:
                counters.timeouts += 1
            if hooks:
                self._emit_finished(hop, started, str(exc.reason))
            if finished is not None:
                finished.append((hop, str(exc.reason), exc.message, time.time()))
            return await self._failed_run(hop, exc.reason, exc.message, exc.error)
        except asyncio.CancelledError:
            if finished is not None:
                finished.append((hop, Reason.SHUTDOWN, "the organism stopped", time.time()))
            raise
        if finished is not None:
            finished.append((hop, "ok", "", time.time()))
        if circuit is not None and (circuit.failures_in_row or circuit.state != "closed"):
            circuit.succeeded()  # only when there is something to reset: a closed circuit stays
        if hop.attempt > 1:
            state.recovery.recovered += 1
        nexts: list[Hop] = []
        for out, xml in outputs:
            if out.to is None:
                nexts.extend(await self._respond(conv, frame, state.name, out.payload, xml))
                continue
            rec = await registry.call(
                frame.thread, out.to, state.name, out.payload, xml, frame.scope
            )
            if rec is None:  # this thread was retired meanwhile (answered, timed out, lost)
                counters.late_replies += 1
                if not conv.done and not await registry.exists(conv.id):
                    await self._lost(conv, state.name)
                continue
            frame.live += 1
            callee = Frame(out.to, rec.thread_id, frame)
            if hooks:
                callee.maker = started
            nexts.append(Hop(self._states[out.to], callee, state.name, out.payload, conv))
        if hooks:
            self._emit_finished(hop, started, None)
        frame.live -= 1
        if frame.live == 0 and not frame.answered and not conv.done:
            failed = await self._fail(conv, frame, Reason.NO_ANSWER, _no_answer(frame), state.name)
            nexts.extend(failed)
        return nexts

    def _emit_started(self, hop: Hop) -> float:
        now = perf_counter()
        hop.began = now
        hooks = self.hooks
        if hooks.starters:  # somebody wants started events (metrics alone do not)
            frame = hop.frame
            hooks.emit_started(HopEvent(
                "started", hop.conv.id, frame.thread, hop.sender, hop.state.name, hop.payload,
                hop.attempt, now, None, None, frame.caller_thread, getattr(frame, "maker", None),
            ))  # fmt: skip
        return now

    def _emit_finished(self, hop: Hop, started: float, outcome: str | None) -> None:
        now = perf_counter()
        hooks = self.hooks
        tally = hooks.tally
        if tally is not None:  # counted where it happens (metrics alone): no event to build
            tally(hop.state.name, hop.sender, hop.attempt, now - started, outcome)
            if not hooks.hop_events:
                return
        frame = hop.frame
        # tuple.__new__ with every field: a third of the time of the named tuple's own __new__
        hooks.emit_hop(_new_event(HopEvent, (
            "finished", hop.conv.id, frame.thread, hop.sender, hop.state.name, hop.payload,
            hop.attempt, now, now - started, outcome, frame.caller_thread,
            getattr(frame, "maker", None),
        )))  # fmt: skip

    async def read_history(self, conversation: str) -> list[HistoryEntry]:
        """The recorded hops of a conversation, oldest first."""
        return await self._registry.history(conversation)

    async def _failed_run(
        self, hop: Hop, reason: str, message: str, error: AttemptFailure | None = None
    ) -> list[Hop]:
        """A run of ``hop`` failed: roll the attempt back and run it again if its listener's
        retry policy says so and the request's deadline leaves time, else answer its caller
        with the failure."""
        state, conv = hop.state, hop.conv
        recovery = state.recovery
        recovery.error(reason, message)
        now = self._now()
        if state.circuit is not None and reason != Reason.CANCELLED and state.circuit.failed(now):
            log.warning(
                "circuit of %r opened after %d failed runs in a row (last: [%s] %s); hops to it "
                "fail with circuit_open for %gs",
                state.name, state.circuit.failures_in_row, reason, message,
                state.circuit.settings.reset_seconds,
            )  # fmt: skip
        if hop.calls is not None:
            await self._roll_back(hop)
        if error is None or error.reason != reason:
            error = AttemptFailure(reason)
        delay = state.retry.next_delay(hop.attempt, error)
        if delay is not None and not conv.done:
            if now + delay < conv.deadline:
                self._counters.retries += 1
                recovery.retries += 1
                again = Hop(state, hop.frame, hop.sender, hop.payload, conv)
                again.attempt = hop.attempt + 1
                loop = self._loop or asyncio.get_running_loop()
                loop.call_later(delay, self._transport.deliver, again)
                return []
            recovery.exhausted += 1
            message += (
                f" (attempt {hop.attempt}; not retried: the retry, due in {delay:.3g}s, "
                "could not start before the request's deadline)"
            )
        elif hop.attempt > 1:
            recovery.exhausted += 1
            message += f" (after {hop.attempt} attempts)"
        return await self._fail(conv, hop.frame, reason, message, state.name, hop.attempt)

    async def _circuit_open(self, hop: Hop) -> list[Hop]:
        """Fail a hop at once: its listener's circuit is open."""
        state = hop.state
        circuit = state.circuit
        assert circuit is not None
        state.recovery.circuit_rejections += 1
        message = (
            f"the circuit of {state.name!r} is {circuit.state.replace('_', '-')} after "
            f"{circuit.failures_in_row} failed runs in a row; it lets a probe through in "
            f"{circuit.retry_in(self._now()):.3g}s"
        )
        return await self._fail(hop.conv, hop.frame, Reason.CIRCUIT_OPEN, message, state.name)

    async def _roll_back(self, hop: Hop) -> None:
        """Withdraw what a failed attempt left in flight: its ``meta.call``s not answered yet
        are failed in its handler's place (their awaiting tasks cancelled), the hops running
        under them stopped, and their threads retired; answers to them are late replies. The
        history entries of all its calls, answered or not, and of what ran under them, are
        marked rolled back: history no longer shows them (`ThreadRegistry.roll_back`)."""
        calls, hop.calls = hop.calls or [], None
        conv = hop.conv
        for callee in calls:
            waiter = callee.waiter
            if waiter is None:
                continue  # answered, failed or timed out already
            callee.waiter = None
            callee.answered = True
            hop.frame.live -= 1
            waiter.cancel()
            for running in list(conv.running):
                if _under(running.frame, callee):
                    self._invocation.settle(running, "ended")
            try:
                await self._registry.withdraw(callee.thread)
            except Exception:  # the conversation's retirement and the TTL are the backstop
                log.warning("could not retire the withdrawn call %s", callee.thread, exc_info=True)
        try:
            await self._registry.roll_back(
                hop.frame.thread, hop.state.name, [callee.thread for callee in calls]
            )
        except Exception:
            log.warning(
                "could not mark the calls of a failed attempt of %r as rolled back in history",
                hop.state.name, exc_info=True,
            )  # fmt: skip

    def _now(self) -> float:
        loop = self._loop or asyncio.get_running_loop()
        return loop.time()

    async def _respond(
        self,
        conv: Conversation,
        frame: Frame,
        responder: str,
        payload: object,
        xml: bytes | None = None,
    ) -> list[Hop]:
        """Answer the call of ``frame``: prune its thread and deliver to the caller's frame."""
        if frame.answered:  # answered (or failed) already: a second answer has nowhere to go
            self._counters.late_replies += 1
            return []
        frame.answered = True
        caller = frame.parent
        assert caller is not None, "the root frame is never answered"
        res = await self._registry.answer(
            frame.thread, responder, caller.listener, payload, xml,
            leaves=caller.parent is None, scope=frame.scope,
        )  # fmt: skip
        if res is None:
            self._counters.late_replies += 1
            if not conv.done and not await self._registry.exists(conv.id):
                await self._lost(conv, responder)
            return []
        if res.conversation_ended:  # answered: its records went with the answer's step
            conv.answered_by = responder
            self._conversations.finish(conv, payload)
            return []
        if responder in self._compensating and type(payload) is not ErrorReport:
            if conv.answers is None:
                conv.answers = []
            conv.answers.append((self._states[responder], payload))
        waiter = frame.waiter
        if waiter is not None:  # a meta.call: the answer goes to the handler awaiting it
            frame.waiter = None
            caller.live -= 1
            if self.hooks.events:
                self.hooks.emit(HopEvent(
                    "answered", conv.id, caller.thread, responder, caller.listener, payload, 1,
                    perf_counter(), caller_thread=caller.caller_thread,
                ))  # fmt: skip
            if not waiter.done():
                if type(payload) is ErrorReport:
                    waiter.set_exception(_call_failed(payload, frame))
                else:
                    waiter.set_result(payload)
            return []
        return [Hop(self._states[res.caller], caller, responder, payload, conv)]

    async def _fail(
        self,
        conv: Conversation,
        frame: Frame,
        reason: str,
        message: str,
        listener: str,
        attempts: int = 1,
    ) -> list[Hop]:
        """The call of ``frame`` failed (after ``attempts`` runs): answer its caller with an
        ErrorReport, travelling up through callers that do not handle errors."""
        conv.failed = (frame, attempts)  # for a dead letter's chain, should the conversation fail
        report = ErrorReport(reason=Reason(reason), message=xml_safe(message), listener=listener)
        while True:
            nexts = await self._respond(conv, frame, frame.listener, report)
            if not nexts or nexts[0].state.handles_errors:
                return nexts
            frame = nexts[0].frame  # the caller does not handle errors: its call fails too

    async def call(self, hop: Hop, peer: str, payload: object, timeout: float | None) -> object:
        """``meta.call``: a call from ``hop``'s handler to ``peer``, awaited for its answer.

        The call is made as a returned ``HandlerResponse(payload, to=peer)`` is (a fresh thread
        id, peers enforced, history recorded); the hop gives its listener's slot up while it
        waits and takes one again, first in line, before its handler goes on.

        Raises:
            DeliveryError: the call failed (``peer_denied``, ``no_route``, ``schema_violation``,
                ``timeout``, or the callee's failure with its reason).
            PayloadTypeError: ``payload`` is not a ``@payload`` object.
            UsageError: the conversation has ended, the handler has returned already,
                ``peer`` is not a str, or ``timeout`` is not a number of seconds above 0.
        """
        state, conv, frame = hop.state, hop.conv, hop.frame
        if type(peer) is not str:
            raise UsageError(
                f"meta.call from {state.name!r}: the peer must be a listener name (str), "
                f"not {_short(peer)}"
            )
        if timeout is not None:  # checked before the call is made: nothing left in flight
            _check_timeout(timeout, f"meta.call({peer!r}) from {state.name!r}: ")
        if hop.finished or hop.settled is not None or conv.done:
            why = "its handler returned" if hop.finished else "the conversation has ended"
            raise UsageError(
                f"meta.call({peer!r}) from {state.name!r}: {why} (conversation {conv.id}); "
                "call peers while the handler runs, and await the calls it makes"
            )
        target = self._states.get(peer)
        if target is None:
            raise no_route(peer, self._states)
        if peer not in state.peers:
            raise DeliveryError(
                f"{state.name!r} may not call {peer!r}: it is not among its peers "
                f"{sorted(state.peers)}; add it to peers in organism.yaml",
                reason="peer_denied", listener=peer, thread=frame.thread,
            )  # fmt: skip
        if not is_payload(payload) or isinstance(payload, type):
            raise PayloadTypeError(
                f"meta.call({peer!r}) from {state.name!r} needs a @payload object, not "
                f"{type(payload).__name__} ({_short(payload)})"
            )
        if type(payload) is not target.payload_class:
            sent = f"{state.name!r} called it"
            raise DeliveryError(
                wrong_class(peer, target.payload_class, payload, sent),
                reason="no_route", listener=peer, thread=frame.thread,
            )  # fmt: skip
        registry = self._registry
        try:
            xml = to_xml(payload) if registry.history_on else None
            if xml is None:
                check_payload(payload)
        except SchemaViolation as exc:
            raise DeliveryError(
                f"{state.name!r} sent {exc.message}", reason="schema_violation", listener=peer
            ) from None
        thread = new_thread_id()  # named in its own scope: a rollback of it takes it along
        scope = f"{frame.scope} {thread}" if frame.scope else thread
        rec = await registry.call(frame.thread, peer, state.name, payload, xml, scope, thread)
        if rec is None:
            raise UsageError(
                f"meta.call({peer!r}) from {state.name!r}: the thread was retired meanwhile "
                f"(conversation {conv.id} ended or was lost)"
            )
        loop = self._loop or asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        callee = Frame(peer, rec.thread_id, frame)
        callee.scope = scope
        callee.waiter = answer
        if self.hooks.active:
            callee.maker = getattr(hop, "began", None)
        if hop.calls is None:
            hop.calls = []
        hop.calls.append(callee)
        if conv.calls is None:
            conv.calls = []
        conv.calls.append(callee)
        frame.live += 1
        self._transport.deliver(Hop(target, callee, state.name, payload, conv))
        timer = None
        if timeout is not None:
            timer = loop.call_later(timeout, self._call_expired, callee, peer, timeout)
        hop.waits += 1
        self._free_slot(hop)  # no slot held while waiting: call cycles cannot deadlock
        cancelled = False
        try:
            return await answer
        except asyncio.CancelledError:
            cancelled = True  # the handler is being stopped: it takes no slot again
            raise
        finally:
            if timer is not None:
                timer.cancel()
            hop.waits -= 1
            if (
                not cancelled
                and hop.waits == 0
                and not hop.holds_slot
                and hop.settled is None
                and not hop.finished  # an orphaned call (its handler returned) takes no slot
            ):
                await self._resume(hop)

    def _call_expired(self, callee: Frame, peer: str, timeout: float) -> None:
        waiter = callee.waiter
        if waiter is None or waiter.done():
            return
        callee.waiter = None
        callee.answered = True  # its answer, should one come, is a late reply
        if callee.parent is not None:
            callee.parent.live -= 1
        waiter.set_exception(DeliveryError(
            f"no answer from {peer!r} within the call's timeout of {timeout:g}s",
            reason="timeout", listener=peer, thread=callee.thread,
        ))  # fmt: skip

    async def _resume(self, hop: Hop) -> None:
        """Take a slot again for a handler that waited without one (first in line)."""
        granted = self._transport.resume(hop.state)
        if granted is not None:
            try:
                await granted
            except BaseException:
                if granted.done() and not granted.cancelled():
                    hop.holds_slot = True  # handed over as we left: pass it on
                    self._free_slot(hop)
                raise
        hop.holds_slot = True

    def _timed_out(self, hop: Hop) -> None:
        """The invocation settled ``hop`` at its deadline: report it, in a task of its own."""
        self._spawn_call(self._report_timeout(hop))

    async def _report_timeout(self, hop: Hop) -> None:
        self._counters.timeouts += 1
        if hop.conv.done:
            return
        state = hop.state
        message = f"{state.name!r} took longer than {state.timeout}s"
        for nxt in await self._failed_run(hop, Reason.TIMEOUT, message):
            self._transport.deliver(nxt)

    async def _lost(self, conv: Conversation, responder: str) -> None:
        """The backend no longer knows an open conversation: say so instead of waiting."""
        log.warning("conversation %s was lost by the backend", conv.id)
        await self._end(conv, DeliveryError(
            f"the backend no longer knows this conversation (its records expired after "
            f"thread_ttl_seconds, or the backend lost its data); the answer from {responder!r} "
            "was dropped",
            reason="backend_error", listener=responder, thread=conv.id,
        ), retired=True)  # fmt: skip

    async def _end(self, conv: Conversation, outcome: object, *, retired: bool = False) -> None:
        """Finish a conversation once; then retire its records unless that happened already."""
        if self._conversations.finish(conv, outcome) and not retired:
            await self._retire(conv.id)

    async def _retire(self, conversation: str) -> None:
        try:
            await self._registry.retire(conversation)
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
                await self._registry.abandon(conversation)
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


_SETTLED = {"ended": "ended", "timeout": "timeout", "cancelled": "cancelled"}


def _under(frame: Frame | None, ancestor: Frame) -> bool:
    """Whether ``frame`` is ``ancestor`` or a call made under it."""
    while frame is not None:
        if frame is ancestor:
            return True
        frame = frame.parent
    return False


def _call_failed(report: ErrorReport, callee: Frame) -> DeliveryError:
    return DeliveryError(
        report.message, reason=report.reason, listener=report.listener, thread=callee.thread
    )


def _check_timeout(timeout: float, where: str = "") -> None:
    kind = type(timeout)  # float and int first: the usual case, with no isinstance calls
    if kind is not float and kind is not int and not _seconds(timeout):
        raise UsageError(f"{where}timeout must be a number of seconds, not {timeout!r}")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise UsageError(
            f"{where}timeout must be a finite number of seconds above 0, not {timeout!r}"
        )


def _seconds(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _no_answer(frame: Frame) -> str:
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


def _shutdown(listener: str | None = None, thread: str | None = None) -> DeliveryError:
    return DeliveryError(
        "the organism is shutting down and did not finish this conversation",
        reason="shutdown", listener=listener, thread=thread,
    )  # fmt: skip
