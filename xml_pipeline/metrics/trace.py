"""A conversation's hops as a tree: built from hook events, records or history; rendered as text.

`build_tree` is the one builder: `Organism.trace` (events kept by the trace recorder), the
``organism trace`` command (records read back from a JSON Lines file or a Redis stream),
``organism run --trace`` (`LiveTraces`, hook events kept as they come) and anyone holding
`HopEvent`/`ConversationEvent` objects use it.

A hop's parent is the hop that sent its payload. Events name each hop's thread, the thread it
was called from (`HopEvent.parent`) and when the hop that made the call started
(`HopEvent.maker`), which places a call exactly: the first hop on a thread is a call, made by
that hop of its sender on the calling thread. A later hop on a thread is an
answer (or `ErrorReport`) coming back to the caller's listener; its parent is the hop of the
responder, on a thread called from this one, that finished last before it started (when two
answers from the same listener race, the one that finished first is taken first). A retry sits
beside the attempt it repeats. Built without recursion: a chain of 10,000 hops renders.
"""

from __future__ import annotations

import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from xml_pipeline._runtime.hooks import ConversationEvent, Event, HopEvent
from xml_pipeline._wire.history import HistoryEntry
from xml_pipeline.metrics.records import Row, payload_tag, process_name
from xml_pipeline.metrics.settings import TracingConfig

__all__ = [
    "LiveTraces",
    "Trace",
    "TraceHop",
    "TraceRecorder",
    "build_tree",
    "rows_from_records",
    "trace_from_history",
]

_EPSILON = 1e-6  # seconds: an answer starts after its responder finished, on the same clock


@dataclass(frozen=True, slots=True)
class TraceHop:
    """One hop of a trace: a payload delivered to a listener's handler, and what followed.

    Attributes:
        listener: whose handler ran.
        payload_tag: the payload's XML tag.
        sender: who sent it (a listener, or the outside sender).
        thread: the opaque thread id it ran on ("" when built from history).
        start: seconds after the conversation's first event (None from history).
        duration: seconds the handler ran (None while it runs, or from history).
        outcome: ``ok``, a reason code (``handler_error``, ``timeout``...), ``ended`` (the
            conversation ended while it ran), ``running``, or "" when unknown (history).
        attempt: 1, or more for a retry.
        process: ``host:pid`` that ran it (`` pool`` added for ``cpu_bound`` listeners).
        children: the hops it sent payloads to, in the order they started.
    """

    listener: str
    payload_tag: str
    sender: str
    thread: str
    start: float | None
    duration: float | None
    outcome: str
    attempt: int
    process: str
    children: tuple[TraceHop, ...] = ()


@dataclass(frozen=True, slots=True)
class Trace:
    """A conversation's hop tree.

    Attributes:
        conversation: its id.
        listener: the listener it was started at ("" when unknown).
        started_at: when its first event happened (seconds since the epoch), when known.
        outcome: ``answered``, the reason it failed, or None while it is open (or unknown).
        duration: seconds from its first event to its end, when known.
        hops: the tree's roots (the opening hop, normally one).
        source: ``trace`` (hops recorded with timings) or ``history`` (the hops the
            conversation's history holds: order and payloads, no timings or outcomes).
        truncated: the recorder kept only the first hops (``tracing.hops``).
    """

    conversation: str
    listener: str
    started_at: float | None
    outcome: str | None
    duration: float | None
    hops: tuple[TraceHop, ...]
    source: str = "trace"
    truncated: bool = False

    def walk(self) -> Iterator[tuple[int, TraceHop]]:
        """Every hop with its depth (0 for a root), depth first, in the order they started."""
        stack = [(0, hop) for hop in reversed(self.hops)]
        while stack:
            depth, hop = stack.pop()
            yield depth, hop
            stack.extend((depth + 1, child) for child in reversed(hop.children))

    def render(self) -> str:
        """The tree as indented text, one hop a line::

        conversation 3f2a... at greeter: answered in 1.204 ms (4 hops)
        greeter <Greeting> +0.000 ms 0.912 ms ok
        └── shouter <Shout> +0.120 ms 0.050 ms ok
        """
        count = sum(1 for _ in self.walk())
        end = "open" if self.outcome is None else self.outcome
        took = "" if self.duration is None else f" in {_ms(self.duration)}"
        at = f" at {self.listener}" if self.listener else ""
        note = " (from history: order and payloads only)" if self.source == "history" else ""
        cut = ", cut at the tracing.hops limit" if self.truncated else ""
        lines = [f"conversation {self.conversation}{at}: {end}{took} ({count} hops{cut}){note}"]
        processes = {hop.process for _, hop in self.walk()}
        # the prefix of each depth: "│   " while that level has siblings to come, else blanks
        stack: list[tuple[TraceHop, str, str]] = [
            (hop, "", "└── " if i == len(self.hops) - 1 else "├── ")
            for i, hop in reversed(list(enumerate(self.hops)))
        ]
        roots = set(map(id, self.hops))
        while stack:
            hop, indent, branch = stack.pop()
            shown = "" if id(hop) in roots else indent + branch
            lines.append(shown + _describe(hop, len(processes) > 1))
            child_indent = (
                "" if id(hop) in roots else indent + ("    " if branch == "└── " else "│   ")
            )
            last = len(hop.children) - 1
            for i in range(last, -1, -1):
                stack.append((hop.children[i], child_indent, "└── " if i == last else "├── "))
        return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def _describe(hop: TraceHop, processes: bool) -> str:
    parts = [f"{hop.listener} <{hop.payload_tag}>"]
    if hop.start is not None:
        parts.append(f"+{_ms(hop.start)}")
    if hop.duration is not None:
        parts.append(_ms(hop.duration))
    if hop.outcome:
        parts.append(hop.outcome)
    if hop.attempt > 1:
        parts.append(f"attempt {hop.attempt}")
    if processes and hop.process:
        parts.append(f"[{hop.process}]")
    return " ".join(parts)


class _Node:
    __slots__ = (
        "attempt", "caller", "children", "duration", "listener", "maker", "outcome", "parent",
        "process", "sender", "start", "tag", "thread",
    )  # fmt: skip

    def __init__(self, row: Sequence[Any], start: float, process: str) -> None:
        self.thread: str = row[2]
        self.sender: str = row[3]
        self.listener: str = row[4]
        tag = row[5]
        self.tag: str = tag if isinstance(tag, str) else payload_tag(tag)
        self.attempt: int = row[6]
        self.caller: str | None = row[10] if len(row) > 10 else None
        self.maker: float | None = row[11] if len(row) > 11 else None
        self.start = start
        self.duration: float | None = None
        self.outcome = "running"
        self.process: str = row[12] if len(row) > 12 and row[12] else process
        self.parent: _Node | None = None
        self.children: list[_Node] = []

    def finish(self, duration: float, outcome: str | None) -> None:
        self.duration = duration
        self.outcome = "ok" if outcome is None else outcome

    @property
    def end(self) -> float:
        return self.start + (self.duration or 0.0)


def build_tree(
    events: Iterable[Event | tuple[Any, ...]],
    *,
    conversation: str | None = None,
    wall: float = 0.0,
    process: str = "",
    processes: Mapping[str, str] | None = None,
    truncated: bool = False,
) -> Trace:
    """The hop tree of one conversation from its hook events (in the order they happened).

    ``events`` are `HopEvent` and `ConversationEvent` objects (or the collector's payload-free
    rows of them, or `rows_from_records` of stored records); events of other conversations are
    left out. ``wall`` is added to their clock for `Trace.started_at` (0: the events' clock is
    the wall clock). ``process`` names the process the hops ran in, ``processes`` the process
    of some listeners (``{listener: name}``, e.g. ``cpu_bound`` ones in the pool); a stored
    record's own ``process`` comes first.

    Raises:
        ValueError: ``events`` holds no event of ``conversation`` (or none at all).
    """
    nodes: list[_Node] = []
    running: dict[tuple[str, str, int], list[_Node]] = defaultdict(list)
    listener = ""
    first: float | None = None
    ended: float | None = None
    outcome: str | None = None
    for item in events:
        event: tuple[Any, ...] = item  # hook events and rows share their indices
        kind = event[0]
        at: float
        if conversation is None:
            conversation = event[1]
        elif event[1] != conversation:
            continue
        if kind == "opened" or kind == "ended":
            at = event[3]
            listener = listener or event[2]
            if kind == "ended":
                ended, outcome = at, event[4] or "answered"
        elif kind == "started" or kind == "finished":
            at = event[7]
            where = process if processes is None else processes.get(event[4], process)
            key = (event[2], event[4], event[6])
            if kind == "started":
                node = _Node(event, at, where)
                nodes.append(node)
                running[key].append(node)
            else:
                waiting = running.get(key)
                if waiting:
                    node = waiting.pop(0)
                else:  # its start was not seen (a record of the finish only)
                    node = _Node(event, at - event[8], where)
                    nodes.append(node)
                node.finish(event[8], event[9])
                at = node.start
        else:
            continue  # "answered": the callee's hop already shows the answer
        first = at if first is None else min(first, at)
    if conversation is None or first is None:
        raise ValueError(
            f"no event of conversation {conversation or '(any)'} to build a trace from"
        )
    roots = _link(nodes)
    base = first
    return Trace(
        conversation=conversation,
        listener=listener or (roots[0].listener if roots else ""),
        started_at=base + wall,
        outcome=outcome,
        duration=None if ended is None else ended - base,
        hops=_freeze(roots, base),
        truncated=truncated,
    )


def _link(nodes: list[_Node]) -> list[_Node]:
    """Give each node its parent (see the module docstring); return the roots."""
    nodes.sort(key=lambda n: n.start)
    by_thread: dict[str, list[_Node]] = defaultdict(list)
    # finished hops by (the thread they were called from, listener): answer candidates
    responders: dict[tuple[str | None, str], list[_Node]] = defaultdict(list)
    used: set[int] = set()
    roots: list[_Node] = []
    for node in nodes:
        same = by_thread[node.thread]
        parent: _Node | None = None
        if not same:  # the first hop on its thread: a call from the calling thread
            candidates = [
                c for c in by_thread.get(node.caller or "", ())
                if c.listener == node.sender and c.start <= node.start + _EPSILON
            ]  # fmt: skip
            maker = node.maker
            if maker is not None and candidates:  # the start of the hop that made the call
                parent = min(candidates, key=lambda c: abs(c.start - maker))
            elif candidates:
                parent = candidates[-1]
        elif node.attempt > 1:  # a retry: beside the attempt it repeats
            earlier = [n for n in same if n.listener == node.listener] or same
            parent = earlier[-1].parent
        else:  # an answer coming back to this thread's listener
            best = None
            for candidate in responders.get((node.thread, node.sender), ()):
                if id(candidate) in used or candidate.duration is None:
                    continue
                if candidate.end <= node.start + _EPSILON and (
                    best is None or candidate.end > best.end
                ):
                    best = candidate
            if best is not None:
                used.add(id(best))
                parent = best
            else:
                parent = same[-1]
        node.parent = parent
        if parent is None:
            roots.append(node)
        else:
            parent.children.append(node)
        same.append(node)
        responders[node.caller, node.listener].append(node)
    return roots


def _freeze(roots: list[_Node], base: float) -> tuple[TraceHop, ...]:
    """The nodes as frozen `TraceHop`s, children before parents (no recursion)."""
    done: dict[int, TraceHop] = {}
    stack: list[tuple[_Node, bool]] = [(root, False) for root in roots]
    while stack:
        node, expanded = stack.pop()
        if not expanded:
            stack.append((node, True))
            stack.extend((child, False) for child in node.children)
            continue
        done[id(node)] = TraceHop(
            listener=node.listener,
            payload_tag=node.tag,
            sender=node.sender,
            thread=node.thread,
            start=node.start - base,
            duration=node.duration,
            outcome=node.outcome,
            attempt=node.attempt,
            process=node.process,
            children=tuple(done[id(child)] for child in node.children),
        )
    return tuple(done[id(root)] for root in roots)


def trace_from_history(conversation: str, entries: Sequence[HistoryEntry]) -> Trace:
    """A trace of an open conversation from its history alone (tracing off): each entry's
    parent is the latest earlier entry delivered to its sender. No timings or outcomes, and
    the oldest hops may have been trimmed (``history_max_entries``).

    Raises:
        ValueError: ``entries`` is empty.
    """
    if not entries:
        raise ValueError(f"conversation {conversation} has no history to build a trace from")
    built: list[tuple[HistoryEntry, list[Any]]] = []
    roots: list[tuple[HistoryEntry, list[Any]]] = []
    for entry in entries:
        item: tuple[HistoryEntry, list[Any]] = (entry, [])
        parent = next((c for e, c in reversed(built) if e.to == entry.sender), None)
        (roots if parent is None else parent).append(item)
        built.append(item)

    def freeze(item: tuple[HistoryEntry, list[Any]]) -> TraceHop:
        entry, children = item
        return TraceHop(entry.to, entry.payload_tag, entry.sender, "", None, None, "", 1, "",
                        tuple(frozen[id(c)] for c in children))  # fmt: skip

    frozen: dict[int, TraceHop] = {}
    for item in reversed(built):  # children come after their parents in history
        frozen[id(item)] = freeze(item)
    return Trace(
        conversation=conversation,
        listener=entries[0].to,
        started_at=None,
        outcome=None,
        duration=None,
        hops=tuple(frozen[id(item)] for item in roots),
        source="history",
    )


def rows_from_records(records: Iterable[Mapping[str, Any]]) -> list[Row]:
    """Rows for `build_tree` from stored JSON records (``hop``, ``hop_started``,
    ``conversation``), with ``time`` (seconds since the epoch) as their clock; other records
    are skipped. The process a hop ran in is kept under index 12."""
    rows: list[Row] = []
    for record in records:
        kind = record.get("type")
        if kind in ("hop", "hop_started"):
            started = kind == "hop_started"
            rows.append((
                "started" if started else "finished", record["conversation"], record["thread"],
                record["sender"], record["listener"], record["payload"], record["attempt"],
                record["time"], record.get("duration_seconds"), record.get("outcome"),
                record.get("caller_thread"), record.get("maker"), record.get("process", ""),
            ))  # fmt: skip
        elif kind == "conversation":
            rows.append((
                record["event"], record["conversation"], record["listener"], record["time"],
                record.get("outcome"),
            ))  # fmt: skip
    return rows


class TraceRecorder:
    """The rows of the newest ``config.conversations`` conversations, for `Organism.trace`.

    Fed by the collector's flush (never on the hot path); at most ``config.hops`` hop rows are
    kept per conversation, and the conversation that was seen first goes when one too many is
    kept.
    """

    def __init__(self, config: TracingConfig, cpu_bound: frozenset[str]) -> None:
        self.config = config
        self._conversations: OrderedDict[str, list[Row]] = OrderedDict()
        self._cut: set[str] = set()
        self._wall: dict[str, float] = {}
        here = process_name()
        self._process = here
        self._pool = f"{here} pool"
        self._cpu_bound = cpu_bound

    def add(self, rows: Sequence[Row], wall: float) -> None:
        """Keep ``rows`` (payload-free hook events; samples are skipped)."""
        kept = self._conversations
        most = self.config.hops
        for row in rows:
            if row[0] == "sample":
                continue
            conversation = row[1]
            found = kept.get(conversation)
            if found is None:
                found = kept[conversation] = []
                self._wall[conversation] = wall
                if len(kept) > self.config.conversations:
                    gone, _ = kept.popitem(last=False)
                    self._cut.discard(gone)
                    self._wall.pop(gone, None)
            if len(found) >= 2 * most and row[0] in ("started", "finished", "answered"):
                self._cut.add(conversation)
                continue
            found.append(row)

    def trace(self, conversation: str) -> Trace | None:
        """The trace of ``conversation``, or None when it is not kept."""
        rows = self._conversations.get(conversation)
        if not rows:
            return None
        return build_tree(
            rows,
            conversation=conversation,
            wall=self._wall.get(conversation, time.time()),
            process=self._process,
            processes={name: self._pool for name in self._cpu_bound},
            truncated=conversation in self._cut,
        )

    def conversations(self) -> list[str]:
        """The ids of the conversations kept, oldest first."""
        return list(self._conversations)

    def __len__(self) -> int:
        return len(self._conversations)


class LiveTraces:
    """The hook events of the newest conversations, kept as they come and drawn with
    `build_tree` (``organism run --trace``): no collector, no flush, no tracing section.

    Subscribe `record`; after a conversation's answer, ``await settled(id)`` (a hop's last
    event may come just after the answer), take `trace(id)`, then `forget(id)`. At most
    ``keep`` conversations are kept: the oldest go first. Events keep their payloads until
    forgotten.

    ``traces = LiveTraces(); unsubscribe = org.hooks.subscribe(traces.record)``
    """

    def __init__(self, keep: int = 10_000) -> None:
        self._keep = keep
        self._events: OrderedDict[str, list[Event]] = OrderedDict()
        self._threads: dict[str, str] = {}  # thread id -> conversation id
        self._running: dict[str, int] = defaultdict(int)  # hops started and not finished
        self._ended: set[str] = set()
        self._waiting: dict[str, anyio.Event] = {}
        self._wall = time.time() - time.perf_counter()  # hook events use perf_counter

    def record(self, event: Event) -> None:
        """The `Hooks` subscriber: take one event."""
        conversation = event.conversation
        found = self._events.get(conversation)
        if found is None:
            found = self._events[conversation] = []
            if len(self._events) > self._keep:
                self.forget(next(iter(self._events)))
        found.append(event)
        if type(event) is HopEvent:
            if event.kind == "started":
                self._running[conversation] += 1
                self._threads[event.thread] = conversation
            elif event.kind == "finished":
                self._running[conversation] -= 1
        elif type(event) is ConversationEvent and event.kind == "ended":
            self._ended.add(conversation)
        waiter = self._waiting.get(conversation)
        if waiter is not None and self._settled(conversation):
            waiter.set()

    def _settled(self, conversation: str) -> bool:
        return conversation in self._ended and self._running.get(conversation, 0) <= 0

    def conversation_of(self, thread: str | None) -> str | None:
        """The conversation a thread id (of any of its calls) belongs to, if it was seen."""
        if thread is None:
            return None
        return thread if thread in self._events else self._threads.get(thread)

    def conversations(self) -> list[str]:
        """The ids of the conversations kept, oldest first."""
        return list(self._events)

    async def settled(self, conversation: str, timeout: float = 1.0) -> bool:
        """Wait until ``conversation`` ended and each of its hops finished, ``timeout``
        seconds at most.

        Returns:
            whether it settled; a tree drawn after ``False`` shows hops still ``running``.
        """
        if conversation not in self._events:
            return False
        if self._settled(conversation):
            return True
        waiter = self._waiting.setdefault(conversation, anyio.Event())
        with anyio.move_on_after(timeout):
            await waiter.wait()
            return True
        return False

    def trace(self, conversation: str) -> Trace | None:
        """The conversation's hop tree (`build_tree`), or None when none of its events was
        seen."""
        events = self._events.get(conversation)
        if not events:
            return None
        return build_tree(events, conversation=conversation, wall=self._wall)

    def forget(self, conversation: str) -> None:
        """Drop what is kept of ``conversation``."""
        events = self._events.pop(conversation, None) or []
        for event in events:
            if type(event) is HopEvent:
                self._threads.pop(event.thread, None)
        self._running.pop(conversation, None)
        self._ended.discard(conversation)
        self._waiting.pop(conversation, None)
