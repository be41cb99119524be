"""The handler contract: `Handler`, what it sees (`HandlerMetadata`), what it returns
(`HandlerResponse`), what travels back on failure (`ErrorReport`), and `Listener`.

A handler is ``async def handler(payload, metadata: HandlerMetadata)`` (a plain function is
accepted). It returns ``None``, a `HandlerResponse`, or a list of them. Handlers never build
envelopes: the pump writes ``<from>`` and the thread ids.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, Union, overload

from xml_pipeline._errors import DeliveryError, Reason, UsageError
from xml_pipeline._settings import (  # noqa: F401 - Retry/CircuitSettings name Listener's fields
    LISTENER_NAME,
    CircuitSettings,
    ListenerSettings,
    RetrySettings,
    check_fields,
    defaults,
    values_of,
)
from xml_pipeline._wire.history import HistoryEntry
from xml_pipeline._wire.payloads import is_payload, payload

_A = TypeVar("_A")

__all__ = [
    "ErrorReport",
    "Handler",
    "HandlerMetadata",
    "HandlerResponse",
    "HandlerResult",
    "HistoryEntry",
    "Listener",
]


class HandlerMetadata:
    """Facts about the message a handler is handling (read-only).

    Attributes:
        thread_id: the opaque id of this call; it says nothing about who called.
        from_id: the listener (or outside sender) that sent this message.
        own_name: the name of the listener running the handler.
        attempt: 1 for a first run; 2, 3... when the listener's retry policy runs the same
            hop again.

    ``history`` is a zero-argument coroutine function returning the conversation's recorded
    hops (``None``: history is off). A plain ``__slots__`` class rather than a frozen
    dataclass: the pump makes one per hop, and this costs a third as much to build.
    """

    __slots__ = (
        "_attempt", "_conversation", "_from", "_hop", "_own", "_pump", "_reader", "_thread"
    )  # fmt: skip

    def __init__(
        self,
        thread_id: str,
        from_id: str,
        own_name: str,
        history: Callable[[], Awaitable[list[HistoryEntry]]] | None = None,
        attempt: int = 1,
    ) -> None:
        self._attempt = attempt
        self._thread = thread_id
        self._from = from_id
        self._own = own_name
        self._reader: Callable[..., Awaitable[list[HistoryEntry]]] | None = history
        self._conversation: str | None = None
        self._pump: Any = None  # the pump and hop a handler's calls go through (in process)
        self._hop: Any = None

    @classmethod
    def _for_hop(
        cls,
        thread_id: str,
        from_id: str,
        own_name: str,
        reader: Callable[[str], Awaitable[list[HistoryEntry]]] | None,
        conversation: str,
        pump: Any,
        hop: Any,
    ) -> HandlerMetadata:
        """The pump's constructor: ``reader(conversation)`` reads the history when asked, and
        ``pump.call(hop, ...)`` makes calls, so no closure is made per hop."""
        meta = cls.__new__(cls)
        meta._thread = thread_id
        meta._from = from_id
        meta._own = own_name
        meta._reader = reader
        meta._conversation = conversation
        meta._pump = pump
        meta._hop = hop
        return meta

    @property
    def thread_id(self) -> str:
        """The opaque id of this call; it says nothing about who called."""
        return self._thread

    @property
    def from_id(self) -> str:
        """The listener (or outside sender) that sent this message."""
        return self._from

    @property
    def own_name(self) -> str:
        """The name of the listener running the handler."""
        return self._own

    @property
    def attempt(self) -> int:
        """1 for a first run; 2, 3... when the retry policy runs the same hop again."""
        hop = self._hop
        return self._attempt if hop is None else int(hop.attempt)

    @overload
    async def call(
        self, peer: str, payload: object, *, timeout: float | None = ..., expect: type[_A]
    ) -> _A: ...
    @overload
    async def call(self, peer: str, payload: object, *, timeout: float | None = ...) -> Any: ...
    async def call(
        self,
        peer: str,
        payload: object,
        *,
        timeout: float | None = None,
        expect: type[Any] | None = None,
    ) -> Any:
        """Call the peer ``peer`` with ``payload`` and return its answer (a payload object of
        whatever class the peer answered with, or of ``expect`` when given).

        The call is made exactly as a returned ``HandlerResponse(payload, to=peer)`` is: a
        fresh opaque thread id, peers enforced, the pump writes ``<from>``, history recorded.
        While the handler waits it does not hold its listener's concurrency slot (a cycle
        through a listener with ``max_concurrency: 1`` cannot deadlock); its own
        ``timeout_seconds`` keeps running, and a conversation that ends cancels it. Fan out
        with ``asyncio.gather`` or an anyio task group.

        Args:
            timeout: seconds to wait for this answer (``None``: until the handler's own
                timeout or the conversation's end).
            expect: the payload class the answer must be (then the return type is that
                class, for type checkers too), as in `Organism.request`; an answer of another
                class raises ``invalid_response``.

        Raises:
            DeliveryError: the call failed, with its ``reason`` (``peer_denied``, ``no_route``,
                ``schema_violation``, ``timeout``, ``no_answer``, or the callee's failure);
                catch it to recover, or let it go: the handler fails with ``handler_error``.
            PayloadTypeError: ``payload`` is not a ``@payload`` object.
            UsageError: the handler runs in a worker process (``cpu_bound``), has returned
                already, or its conversation has ended; or ``peer`` is not a str, ``timeout`` is
                not a number of seconds above 0, or ``expect`` is not a ``@payload`` class.
        """
        if expect is not None:
            check_expect(expect, f"meta.call({peer!r}) from {self._own!r}")
        if self._pump is None:
            raise UsageError(
                f"meta.call({peer!r}) from {self._own!r}: a cpu_bound handler runs in a worker "
                "process, which has no event loop of the pump to carry the call; return "
                "HandlerResponse(payload, to=peer) instead, and take the answer when the "
                "handler is called with it"
            )
        result: Any = await self._pump.call(self._hop, peer, payload, timeout)
        if expect is not None:
            check_expected(result, expect, peer, "meta.call")
        return result

    def progress(self, text: str) -> None:
        """Say how far the run has got (``"fetched 3 of 10"``), shown by `Organism.runs`
        (from a ``cpu_bound`` handler too: its worker sends it to the organism's process)."""
        hop = self._hop
        if hop is not None:
            hop.progress = str(text)

    def log(self, line: str) -> None:
        """Write a line of live output to this run, shown by `Organism.runs` (the last 100
        lines are kept, older ones counted). A ``cpu_bound`` handler's lines, and what it
        prints to stdout or stderr, are sent from its worker as it runs."""
        hop = self._hop
        if hop is not None:
            hop.log(str(line))  # the run keeps it (the runtime's `Hop`, or a worker's stand-in)

    async def history(self) -> list[HistoryEntry]:
        """The conversation's recorded hops so far, oldest first (bounded by the backend)."""
        reader = self._reader
        if reader is None:
            return []
        if self._conversation is None:
            return await reader()
        return await reader(self._conversation)

    def __repr__(self) -> str:
        return (
            f"HandlerMetadata(thread_id={self._thread!r}, from_id={self._from!r}, "
            f"own_name={self._own!r})"
        )

    def __eq__(self, other: object) -> bool:
        if type(other) is not HandlerMetadata:
            return NotImplemented
        return (self._thread, self._from, self._own) == (other._thread, other._from, other._own)

    def __hash__(self) -> int:
        return hash((self._thread, self._from, self._own))


class HandlerResponse:
    """What a handler hands back: a call to a peer, or the answer to its caller.

    ``HandlerResponse(payload, to="peer")`` calls a peer (the call chain is extended);
    ``HandlerResponse.respond(payload)`` answers the caller (the chain is pruned).

    Raises:
        UsageError: neither ``to=`` nor ``.respond()`` was used.
    """

    __slots__ = ("payload", "to")

    def __init__(self, payload: object, to: str | None = None) -> None:
        if to is None:
            raise UsageError(
                "HandlerResponse needs to='<peer>' to call a peer; use "
                "HandlerResponse.respond(payload) to answer the caller"
            )
        self.payload = payload
        self.to: str | None = to

    @classmethod
    def respond(cls, payload: object) -> HandlerResponse:
        """Answer the caller of the current thread with ``payload`` (any @payload object)."""
        response = cls.__new__(cls)
        response.payload = payload
        response.to = None
        return response

    def __repr__(self) -> str:
        target = "respond" if self.to is None else f"to={self.to!r}"
        return f"HandlerResponse({self.payload!r}, {target})"


@payload(tag="huh")
@dataclass
class ErrorReport:
    """A failure travelling back up a call chain.

    A listener that declares ``handles_errors: true`` receives it as its payload; otherwise it
    keeps travelling up to whoever started the conversation, who gets a `DeliveryError`.
    ``reason`` is a `Reason` (text is converted; its XSD enumerates every code).

    Raises:
        ValueError: ``reason`` is not a reason code.
    """

    reason: Reason
    message: str
    listener: str = ""

    def __post_init__(self) -> None:
        if type(self.reason) is not Reason:
            self.reason = Reason(self.reason)


HandlerResult = Union["HandlerResponse", Sequence["HandlerResponse"], None]


class Handler(Protocol):
    """The contract of a handler: called with the payload it received and its metadata.

    ``async def handle(payload, metadata) -> HandlerResponse | list[HandlerResponse] | None``;
    a plain function is accepted too (for ``cpu_bound`` listeners, or very short work: it runs
    on the event loop). The payload is an instance of the listener's payload class, or of any
    payload class its peers answer with (or an `ErrorReport` when the listener handles errors).
    """

    def __call__(
        self, payload: Any, metadata: HandlerMetadata, /
    ) -> HandlerResult | Awaitable[HandlerResult]: ...


@dataclass(frozen=True, slots=True, repr=False)
class Listener(ListenerSettings):
    """One listener: a name, the payload class it accepts, and its handler.

    `Organism.from_yaml` builds these from ``organism.yaml``; embedders may build them
    directly and pass them to `Organism`. The settings after ``handler`` are keyword-only;
    their defaults and ranges are those of organism.yaml (`xml_pipeline._settings`).

    Attributes:
        name: unique name; may contain dots; names starting with ``_`` are reserved.
        payload_class: the ``@payload`` class of the requests it accepts (answers from its
            peers may be of any payload class).
        handler: a `Handler`: ``async def handler(payload, metadata)`` (a plain function is
            allowed; it runs on the event loop unless the listener is ``cpu_bound``).
        description: what it does, for people.
        peers: the listeners it may call; answering its caller is always allowed.
        max_concurrency: handler runs at once; more wait in the listener's own backlog.
        timeout_seconds: a run longer than this fails to the caller with ``timeout``.
        cpu_bound: run the handler in the organism's process pool.
        handles_errors: receive failures of its calls as `ErrorReport` payloads instead of
            passing them up the chain.
        retry: a `RetrySettings`: run a failed hop again, with backoff (none by default).
        circuit: a `CircuitSettings`: fail fast after failed runs in a row (none by default).
        compensate: a handler run, once, with each payload this listener answered in a
            conversation that then fails (in reverse order of the answers, across listeners);
            always run in process, as ``compensate(answer, metadata)``.

    Raises:
        UsageError: a field has the wrong type or an impossible value (the message names the
            listener and the field); ``peers`` may be any iterable of names but a string.
    """

    name: str = field(metadata=LISTENER_NAME)
    payload_class: type
    handler: Handler
    compensate: Handler | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        where = f"Listener {self.name!r}"
        check_fields(self, where)  # the name first, then the settings
        if self.compensate is not None and not callable(self.compensate):
            raise UsageError(f"{where}: compensate must be callable, not {self.compensate!r}")
        if not isinstance(self.payload_class, type) or not is_payload(self.payload_class):
            raise UsageError(
                f"{where}: payload_class must be a @payload class, not {self.payload_class!r}"
            )
        if not callable(self.handler):
            raise UsageError(f"{where}: handler must be callable, not {self.handler!r}")

    def __repr__(self) -> str:
        # as it would be written: the three positional fields, then the settings not at default
        usual = defaults(ListenerSettings)
        changed = [
            f"{key}={value!r}"
            for key, value in values_of(ListenerSettings, self).items()
            if value != usual[key]
        ]
        if self.compensate is not None:
            changed.append(f"compensate={self.compensate!r}")
        fields = [repr(self.name), self.payload_class.__qualname__, repr(self.handler), *changed]
        return f"Listener({', '.join(fields)})"


def check_expect(expect: object, caller: str) -> None:
    """Refuse an ``expect=`` that is not a ``@payload`` class, before anything is sent (an
    answer could never be of it).

    Raises:
        UsageError: naming ``caller`` and what was given.
    """
    if not (isinstance(expect, type) and is_payload(expect)):
        raise UsageError(
            f"{caller}: expect= takes a @payload class (like expect=Total), not {expect!r}"
        )


def check_expected(answer: object, expect: type, listener: str, caller: str) -> None:
    """Refuse an answer that is not of the class ``caller`` (``request``, ``meta.call``)
    said it expects.

    Raises:
        DeliveryError: ``invalid_response``, naming both classes.
    """
    if type(answer) is not expect:
        raise DeliveryError(
            f"{listener!r} answered a {type(answer).__qualname__}, not the "
            f"{expect.__qualname__} {caller} expected; drop expect= to take any answer",
            reason="invalid_response",
            listener=listener,
        )
