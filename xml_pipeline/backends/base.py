"""The shared-state protocol: thread records, conversation history and dead letters.

A *thread record* is one call: the listener that handles messages on an opaque thread id, and
the id of the thread its caller was on (its parent). The organism's root record (no parent)
stands for the world outside; a conversation starts when the root calls a listener, and every
record below that first call belongs to the conversation named by that first call's id.

Every method is one atomic step against the shared state (a Lua script in Redis, a lock in the
manager server), so that several processes can extend and prune the same chains concurrently.
The registry (`xml_pipeline._runtime.registry`) builds its vocabulary on this protocol.

The *run registry* is one snapshot per organism process: its runs as opaque bytes (JSON),
stamped with the backend's own clock when written (so ages never depend on the clocks of the
processes), and a queue of commands other processes left for it (cancel a run). A process
writes its snapshot and takes its commands in one step per heartbeat; a snapshot not written
again within its ``forget_after_seconds`` is removed with its commands.

A *dead letter* is a conversation the organism could not deliver, kept with the envelope that
started it so that it can be replayed. Each backend keeps them where it keeps everything else
(memory: this process; manager: its state server; Redis: a stream under the prefix), bounded
by a number of entries given per append: the oldest go first, and are counted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = [
    "TOMBSTONE_SECONDS",
    "Backend",
    "DeadLetter",
    "DeadLetterCounts",
    "ImmediateBackend",
    "PruneResult",
    "RunSnapshot",
    "ThreadRecord",
]

# How long `Backend.abandon` refuses a late opening call: longer than a call can take to reach
# the shared state with every retry (Redis: about 25 s at most; manager: its reply timeout).
TOMBSTONE_SECONDS = 120.0


class ThreadRecord(NamedTuple):
    """One live call (a named tuple: backends make one per hop, and it is built in C).

    Attributes:
        thread_id: the opaque id of this call.
        parent_id: the caller's thread id; ``None`` only for the root.
        listener: the listener that handles messages on this thread (the root: organism name).
        conversation: the id of the conversation's first thread; ``None`` for the root.
    """

    thread_id: str
    parent_id: str | None
    listener: str
    conversation: str | None


class PruneResult(NamedTuple):
    """Where a response on a pruned thread goes (a named tuple, like `ThreadRecord`).

    Attributes:
        caller: the listener of the parent thread (the root's name when the answer leaves).
        caller_thread: the parent thread id; the response is delivered on it.
        conversation: the conversation the pruned thread belonged to.
        conversation_ended: the parent is the root, so the conversation was answered and
            every record and the history of the conversation were retired in the same step.
    """

    caller: str
    caller_thread: str
    conversation: str
    conversation_ended: bool


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A conversation the organism could not deliver, kept to be inspected and replayed.

    Read them with `Organism.dead_letters` (or ``organism dlq list FILE``). Replaying one
    injects ``envelope`` again as a new conversation.

    Attributes:
        conversation: the id of the conversation that failed.
        reason: why (a `Reason` code: ``handler_error``, ``timeout``, ``shutdown``...).
        message: what went wrong, as the error said it.
        listener: the listener the failure came from ("" when none was involved).
        id: the entry's id, assigned when it is kept (``"<ms>-<seq>"``, as a Redis stream
            id: ids sort by the time they were kept); "" before that.
        time: when it was kept, in seconds since the epoch (the backend's clock: Redis's own
            for Redis); 0.0 before that.
        envelope: the v1 envelope that started the conversation (UTF-8 bytes, empty
            ``<thread/>``): what a replay injects.
        chain: the listener names from the one the conversation started with down to the one
            that failed.
        attempts: how many times the failing hop was run (retries included).
    """

    conversation: str
    reason: str
    message: str
    listener: str
    id: str = ""
    time: float = 0.0
    envelope: bytes = b""
    chain: tuple[str, ...] = ()
    attempts: int = 1


class RunSnapshot(NamedTuple):
    """The runs one organism process last wrote (`Backend.run_snapshots`).

    Attributes:
        process: the process's instance id.
        age_seconds: how long ago it wrote them, by the backend's clock.
        snapshot: what it wrote (opaque bytes; JSON from the organism).
    """

    process: str
    age_seconds: float
    snapshot: bytes


class DeadLetterCounts(NamedTuple):
    """How many dead letters are kept, and how many of the oldest were dropped to keep
    within ``dead_letters.max_entries`` (since the backend's data began)."""

    kept: int
    dropped: int


@runtime_checkable
class ImmediateBackend(Protocol):
    """A backend whose ``extend`` and ``prune`` complete at once, with no I/O (the memory
    backend): the registry calls these twins instead of awaiting a coroutine per hop.

    ``extend_now``/``prune_now`` are ``None`` on a class that overrides ``extend`` or
    ``prune`` without its twin, so that a subclass's own ``extend`` is never bypassed.
    """

    extend_now: Callable[[str, str, str, bytes | None], ThreadRecord | None] | None
    prune_now: Callable[[str, bytes | None], PruneResult | None] | None


@runtime_checkable
class Backend(Protocol):
    """Shared state for one organism: thread records and per-conversation history.

    Implementations: `MemoryBackend` (default, one process), `ManagerBackend` (a
    ``multiprocessing`` manager server shared by local processes), `RedisBackend`.
    History entries are opaque bytes (XML); no backend pickles them.

    Every implementation takes ``thread_ttl_seconds`` (sliding: refreshed whenever a record or
    history is touched; a backstop for abandoned conversations, the root excepted) and
    ``history_max_entries`` (oldest entries trimmed past it) at construction.
    """

    async def open(self) -> None:
        """Connect and prepare (load scripts, check reachability).

        Raises:
            BackendError: the backend is unreachable; the message names the address and cause.
        """

    async def aclose(self) -> None:
        """Release connections. Data in shared backends stays (other processes may use it)."""

    async def put_root(self, thread_id: str, name: str) -> None:
        """Create (or keep, if present) the root record; the root has no TTL."""

    async def extend(
        self, parent_id: str, child_id: str, listener: str, history_entry: bytes | None = None
    ) -> ThreadRecord | None:
        """Create ``child_id`` under ``parent_id`` for ``listener``, in one atomic step.

        When ``history_entry`` is given it is appended to the conversation's history in the
        same step (one round trip per hop). Refreshes the TTL of the parent and the child.

        Returns:
            the new record, or ``None`` when the parent is unknown (retired or expired).
        """

    async def prune(self, thread_id: str, history_entry: bytes | None = None) -> PruneResult | None:
        """Retire ``thread_id`` (the responder's entry) and tell where the response goes.

        When the parent is the root, the whole conversation (records and history) is retired
        in the same step. Otherwise ``history_entry`` (if given) is appended to the history.

        Returns:
            where to deliver, or ``None`` when the thread or its parent is unknown (a late
            reply); the thread's record is removed in that case too.
        """

    async def get(self, thread_id: str) -> ThreadRecord | None:
        """The record of ``thread_id`` (refreshing its TTL), or ``None``."""

    async def chain(self, thread_id: str) -> list[str] | None:
        """Listener names from the root down to ``thread_id``, or ``None`` when unknown."""

    async def retire_conversation(self, conversation: str) -> int:
        """Remove every record and the history of a conversation; returns records removed."""

    async def abandon(self, conversation: str) -> int:
        """Retire a conversation whose opening ``extend`` (from the root) may still be on its
        way: its caller was cancelled or the call failed, so whether it ran is unknown.

        Removes what exists, like `retire_conversation`, and leaves a tombstone so that the
        opening ``extend`` of that id, should it arrive later, creates nothing (it returns
        ``None``). Tombstones last `TOMBSTONE_SECONDS`, longer than any call can be delayed.

        Returns:
            records removed.
        """

    async def count(self) -> int:
        """Number of live thread records, the root included."""

    async def history(self, conversation: str) -> list[bytes]:
        """The conversation's history, oldest first (empty when none)."""

    async def add_dead_letters(
        self, letters: Sequence[DeadLetter], max_entries: int
    ) -> list[DeadLetter]:
        """Keep ``letters``, in their order, in one step; then drop (and count) the oldest
        entries beyond ``max_entries``.

        Returns:
            the letters as kept, with their ``id`` and ``time`` assigned (ids increase).
        """

    async def dead_letters(
        self,
        *,
        reason: str | None = None,
        listener: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        """The kept dead letters, oldest first: those with this ``reason``, this
        ``listener``, kept at or after ``since`` (seconds since the epoch), at most ``limit``.
        """

    async def get_dead_letter(self, letter_id: str) -> DeadLetter | None:
        """The dead letter with this id, or ``None`` (unknown, or not an id at all)."""

    async def delete_dead_letters(self, letter_ids: Sequence[str]) -> int:
        """Remove the dead letters with these ids (unknown ones are skipped); returns how
        many were removed."""

    async def dead_letter_counts(self) -> DeadLetterCounts:
        """How many dead letters are kept, and how many were dropped beyond the bound."""

    async def put_runs(
        self, process: str, snapshot: bytes, forget_after_seconds: float
    ) -> list[bytes]:
        """Keep ``snapshot`` as the runs of ``process`` (replacing what it wrote before),
        stamped now by the backend's clock and kept ``forget_after_seconds`` unless written
        again; take the commands queued for ``process``, in one step. Snapshots of other
        processes whose time ran out are removed, with their commands.

        Returns:
            the commands other processes queued for ``process`` since it last took them,
            oldest first (each taken once).
        """

    async def run_snapshots(self) -> list[RunSnapshot]:
        """The snapshot of every process whose snapshot has not been forgotten, oldest
        process first (in the order they first wrote)."""

    async def push_run_command(self, process: str, command: bytes) -> bool:
        """Queue ``command`` for ``process`` to take with its next `put_runs`.

        Returns:
            whether ``process`` has a snapshot (else nothing is queued: nobody would take it).
        """

    async def delete_runs(self, process: str) -> None:
        """Remove the snapshot of ``process`` and its queued commands (a process that stops)."""
