"""The records a running organism keeps per listener, conversation, call and hop.

Plain ``__slots__`` classes, not dataclasses: one of each is made per hop or per call, and a
slots class costs about a quarter of a frozen dataclass to build (measured on the hop path).
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections import deque
from typing import Any

from xml_pipeline._handlers import Listener
from xml_pipeline._runtime.circuit import CircuitBreaker
from xml_pipeline._runtime.recovery import RecoveryCounters
from xml_pipeline._runtime.retry import RetryPolicy, policy_for
from xml_pipeline._runtime.runs import RunOutput
from xml_pipeline._wire.payloads import PayloadSpec, payload_spec

__all__ = ["Conversation", "Frame", "Hop", "ListenerState"]


class ListenerState:
    """A listener's runtime state: its definition, free slots and backlog.

    ``limit`` is ``max_concurrency``, and for a ``cpu_bound`` listener at most the pool's
    workers: the rest wait in its backlog, where no timeout runs, rather than queued inside
    the pool, where it would.
    """

    __slots__ = (
        "backlog", "busy", "circuit", "compensate", "cpu_bound", "handler", "handles_errors",
        "is_async", "limit", "listener", "name", "payload_class", "peers", "recovery", "resumers",
        "retry", "spec", "timeout",
    )  # fmt: skip

    def __init__(self, listener: Listener, pool_workers: int, retry: RetryPolicy) -> None:
        self.listener = listener
        self.name = listener.name
        # the listener's fields the hop path reads, one attribute lookup away
        self.handler = listener.handler
        self.payload_class = listener.payload_class
        self.cpu_bound = listener.cpu_bound
        self.spec: PayloadSpec = payload_spec(listener.payload_class)
        self.peers = frozenset(listener.peers)
        self.timeout = listener.timeout_seconds
        self.handles_errors = listener.handles_errors
        self.is_async = inspect.iscoroutinefunction(listener.handler)
        self.limit = listener.max_concurrency
        if listener.cpu_bound:
            self.limit = min(self.limit, pool_workers)
        # the listener's own policy, else the pump's default
        self.retry = retry if listener.retry is None else policy_for(listener.retry)
        self.circuit = None if listener.circuit is None else CircuitBreaker(listener.circuit)
        self.compensate = listener.compensate
        self.recovery = RecoveryCounters()
        self.busy = 0
        self.backlog: deque[Hop] = deque()
        # handlers that waited in meta.call without their slot and want it back, first served
        self.resumers: deque[asyncio.Future[None]] = deque()


class Conversation:
    """One conversation: its outcome's future (``None`` for ``send``/``inject``), its request's
    deadline, and the hops whose handlers run for it now (stopped when it ends).

    ``payload`` and ``sender`` are what opened it (references, kept so that a dead letter can
    hold its envelope); ``failed`` is the call whose failure last travelled up, with the runs
    its hop took, for the dead letter's chain and attempts.
    """

    __slots__ = (
        "answered_by", "answers", "calls", "deadline", "done", "due", "expired", "failed",
        "future", "hops", "id", "opening", "payload", "requester", "running", "sender",
        "started_by", "timeout", "traceparent",
    )  # fmt: skip

    def __init__(self, future: asyncio.Future[Any] | None, to: str) -> None:
        self.id = ""  # set when its opening call is made
        self.future = future
        # the set holding it in the pump's deadline wheel until it ends (requests only)
        self.due: set[Conversation] | None = None
        self.requester: asyncio.Task[Any] | None = None  # the task awaiting a request
        self.timeout = math.inf  # the request's timeout (seconds), for its error
        self.hops = 0
        self.done = False
        self.opening = True
        self.expired = False  # the deadline passed while the conversation was opening
        self.started_by = to
        self.running: set[Hop] = set()
        self.answered_by = ""  # the listener whose answer ended it
        self.deadline = math.inf  # the request's deadline (loop time); none for send/inject
        # (listener state, payload) of answers given by listeners with a compensation, in order
        self.answers: list[tuple[ListenerState, object]] | None = None
        # the frames of meta.calls made in it: waiters still pending when it ends are cancelled
        self.calls: list[Frame] | None = None
        self.payload: object = None  # set when its opening call is made
        self.sender = ""
        self.failed: tuple[Frame, int] | None = None
        self.traceparent = ""  # the W3C trace context its envelope carried (checked), or ""


class Frame:
    """One call: the listener handling it, its opaque thread id and its caller's frame.

    ``live`` counts what may still run on this thread: hops queued or running on it, and calls
    made from it that are not answered yet. When it drops to 0 before the call was answered,
    nothing can answer the call any more. The root frame (the outside sender) has no parent.
    """

    # "maker": the loop time the hop that made this call started, set only while somebody
    # observes the hooks (traces tell which of a thread's hops made a call by it)
    __slots__ = ("answered", "listener", "live", "maker", "parent", "scope", "thread", "waiter")
    maker: float | None  # unset unless observed: read with getattr(frame, "maker", None)

    def __init__(self, listener: str, thread: str, parent: Frame | None) -> None:
        self.listener = listener
        self.thread = thread
        self.parent = parent
        self.live = 1  # the hop that delivers the call
        self.answered = False
        # the meta.call threads this call is made under, space-separated ("" under none): its
        # history entries name them, so that rolling one back takes them along
        self.scope: str = "" if parent is None else parent.scope
        # a call made with meta.call: its answer (or failure) resolves this future instead of
        # running the caller's handler again
        self.waiter: asyncio.Future[Any] | None = None

    @property
    def caller_thread(self) -> str | None:
        """The caller's thread, or ``None`` for a call from outside (the root frame's)."""
        parent = self.parent
        return None if parent is None or parent.parent is None else parent.thread


class Hop:
    """One delivery to a handler, on the thread of ``frame``.

    ``settled`` is set when the watchdog or the conversation's end takes the hop over
    (``"timeout"`` or ``"ended"``); ``cancels`` counts the ``task.cancel()`` calls made for it
    (each balanced when its handler ends); ``abandoned`` is set when its handler ignored them.
    ``attempt`` counts runs of this hop (a retry policy may run it again). While its handler
    waits in ``meta.call`` the hop gives its slot up (``holds_slot`` is false), so that call
    cycles through a listener with one slot cannot deadlock.
    """

    # "began": the loop time its started event was emitted, set only while somebody observes
    __slots__ = (
        "abandoned", "attempt", "began", "calls", "cancels", "conv", "finished", "frame",
        "holds_slot", "output", "payload", "progress", "run", "sender", "settled", "started",
        "state", "task", "waits", "worker_pid",
    )  # fmt: skip
    began: float  # unset unless observed: read with getattr(hop, "began", None)
    # set only for a cpu_bound run once its worker reported its start: read with getattr
    worker_pid: int

    def __init__(
        self, state: ListenerState, frame: Frame, sender: str, payload: object, conv: Conversation
    ) -> None:
        self.state = state
        self.frame = frame
        self.sender = sender
        self.payload = payload
        self.conv = conv
        self.task: asyncio.Task[Any] | None = None
        self.settled: str | None = None
        self.cancels = 0
        self.abandoned = False
        self.attempt = 1
        self.holds_slot = True  # its listener's concurrency slot (given up while it waits)
        self.waits = 0  # meta.call answers its handler waits for now
        self.finished = False  # its handler returned: its metadata may no longer call
        self.calls: list[Frame] | None = None  # the frames of its meta.calls (made lazily)
        self.run = 0  # its run id, given when its handler starts (`Organism.runs`)
        self.started = 0.0  # when its handler started (time.time())
        self.progress = ""  # what its handler said with meta.progress()
        self.output: RunOutput | None = None  # what it wrote with meta.log() (made lazily)

    def log(self, line: str) -> None:
        """Keep a line of its handler's output (``meta.log``, a worker's prints): the output
        is made on the first line, so a hop that writes none pays nothing."""
        output = self.output
        if output is None:
            output = self.output = RunOutput()
        output.write(line)
