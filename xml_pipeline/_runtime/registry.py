"""ThreadRegistry: opaque call chains and conversation history, over a backend.

The registry is the one door of the runtime to shared state: the pump never calls the backend.
Every call gets a fresh opaque id (never "one id per chain string"), so two conversations that
follow the same path never share an id. The backend stores each id's parent and listener; a
chain is read by walking parents, so listener names may contain dots. Each hop is recorded in
the conversation's history (when the organism keeps history) in the same backend step that
extends or prunes the chain: one round trip per hop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from xml_pipeline._errors import BackendError
from xml_pipeline._wire.history import (
    ROLLBACK_SENDER,
    HistoryEntry,
    current_entries,
    decode_entry,
    encode_entry,
    rollback_entry,
)
from xml_pipeline._wire.payloads import to_xml
from xml_pipeline.backends.base import (
    Backend,
    DeadLetter,
    PruneResult,
    RunSnapshot,
    ThreadRecord,
)

__all__ = ["ThreadRegistry", "new_thread_id"]

log = logging.getLogger("xml_pipeline.registry")


_ID_BYTES = 12  # 96 random bits: no two ids of any organism ever meet
_IDS_PER_READ = 256
_random = b""  # random bytes read from the OS in bulk; the unused part starts at _next
_next = 0


def new_thread_id() -> str:
    """A fresh opaque thread id: 96 bits from the OS's cryptographic random source.

    The bytes are read 256 ids at a time (a third of the cost of ``os.urandom(12)`` per id,
    which is itself about 4x cheaper than ``uuid4()``); a forked child reads its own.
    """
    global _random, _next
    at = _next
    if at >= len(_random):
        _random, at = os.urandom(_ID_BYTES * _IDS_PER_READ), 0
    _next = at + _ID_BYTES
    return _random[at : at + _ID_BYTES].hex()


def _forget_random() -> None:
    global _random, _next
    _random, _next = b"", 0


os.register_at_fork(after_in_child=_forget_random)  # never hand the parent's ids out twice


class ThreadRegistry:
    """The organism's call chains and histories, kept in its backend.

    ``history`` says whether hops are recorded (``organism.history`` in organism.yaml). A
    payload's XML may be given when it was already written (``xml``), so it is not written twice.
    """

    def __init__(self, backend: Backend, organism_name: str, *, history: bool = True) -> None:
        self._backend = backend
        # an in-process backend's extend/prune, called without a coroutine (ImmediateBackend)
        self._extend_now = getattr(backend, "extend_now", None)
        self._prune_now = getattr(backend, "prune_now", None)
        self._name = organism_name
        self.root_id = f"root:{organism_name}"
        self.history_on = history

    @property
    def backend(self) -> Backend:
        """The backend the chains live in (for inspection; the runtime goes through here)."""
        return self._backend

    async def initialize_root(self) -> str:
        """Create the organism's root record (idempotent) and return its id."""
        await self._backend.put_root(self.root_id, self._name)
        return self.root_id

    def _entry(
        self, sender: str, to: str, payload: object, xml: bytes | None, scope: str = ""
    ) -> bytes | None:
        if not self.history_on:
            return None
        return encode_entry(sender, to, to_xml(payload) if xml is None else xml, scope)

    async def open(
        self,
        conversation: str,
        listener: str,
        sender: str,
        payload: object,
        xml: bytes | None = None,
    ) -> ThreadRecord:
        """Start a conversation: a call from ``sender`` outside to ``listener`` under the fresh
        id ``conversation`` (chosen by the caller, so that it can be undone with `abandon` when
        the outcome of this call is unknown).

        A root record that a shared backend lost (e.g. Redis restarted empty) is recreated.

        Raises:
            BackendError: the backend failed, or does not keep the root record.
        """
        entry = self._entry(sender, listener, payload, xml)
        rec = await self._backend.extend(self.root_id, conversation, listener, entry)
        if rec is None:  # a shared backend lost its data (e.g. Redis restarted empty)
            log.warning("the root record %s was missing; recreating it", self.root_id)
            await self.initialize_root()
            rec = await self._backend.extend(self.root_id, conversation, listener, entry)
        if rec is None:
            raise BackendError(
                f"the backend did not keep the root record {self.root_id!r}; check that nothing "
                "else deletes keys under this organism's prefix",
                reason="backend_error",
            )
        return rec

    async def call(
        self,
        parent: str,
        listener: str,
        sender: str,
        payload: object,
        xml: bytes | None = None,
        scope: str = "",
        thread_id: str | None = None,
    ) -> ThreadRecord | None:
        """Record a call from the thread ``parent`` (run by ``sender``) to ``listener`` under
        ``thread_id`` (a fresh one when not given).

        ``scope``: the ``meta.call`` thread ids the call is made under (its history entry names
        them, so that a rollback of one of them takes it along; see `_wire.history`).

        Returns:
            the new record, or ``None`` when ``parent`` was retired (the call is dropped).

        Raises:
            BackendError: the backend failed.
        """
        entry = self._entry(sender, listener, payload, xml, scope)
        child = thread_id or new_thread_id()
        if self._extend_now is not None:
            return self._extend_now(parent, child, listener, entry)  # type: ignore[no-any-return]
        return await self._backend.extend(parent, child, listener, entry)

    async def answer(
        self,
        thread: str,
        responder: str,
        receiver: str,
        payload: object,
        xml: bytes | None = None,
        *,
        leaves: bool = False,
        scope: str = "",
    ) -> PruneResult | None:
        """Retire the responder's thread and say where its answer goes.

        ``leaves``: the answer leaves the organism, which ends the conversation, history and
        all (nothing is recorded). ``scope``: as for `call`.

        Returns:
            the caller and the caller's thread id, or ``None`` for a late reply.

        Raises:
            BackendError: the backend failed.
        """
        entry = None if leaves else self._entry(responder, receiver, payload, xml, scope)
        if self._prune_now is not None:
            return self._prune_now(thread, entry)  # type: ignore[no-any-return]
        return await self._backend.prune(thread, entry)

    async def withdraw(self, thread: str) -> None:
        """Retire the thread of a call that will never be answered (the attempt that made it
        failed and is rolled back); an answer that comes later is a late reply.

        Raises:
            BackendError: the backend failed.
        """
        await self._backend.prune(thread, None)

    async def roll_back(self, thread: str, listener: str, calls: Sequence[str]) -> None:
        """Record that the ``meta.call``s with thread ids ``calls``, made by a failed attempt of
        ``listener`` on ``thread``, were rolled back: their history entries, and those of all
        that happened under them, are no longer read (`history`, `stored_history`). Nothing is
        recorded when history is off.

        Two backend steps (a short-lived record under ``thread`` carries the entry), on the
        rollback path only.

        Raises:
            BackendError: the backend failed.
        """
        if not self.history_on or not calls:
            return
        marker = new_thread_id()
        entry = rollback_entry(listener, calls)
        if await self._backend.extend(thread, marker, ROLLBACK_SENDER, entry) is not None:
            await self._backend.prune(marker, None)

    async def abandon(self, conversation: str) -> int:
        """Retire a conversation whose opening call may or may not have happened (the caller
        was cancelled or the backend failed mid-call); returns records removed.

        Raises:
            BackendError: the backend failed; the thread TTL remains the backstop.
        """
        return await self._backend.abandon(conversation)

    async def retire(self, conversation: str) -> int:
        """Retire a whole conversation (ended without its answer leaving); returns records
        removed.

        Raises:
            BackendError: the backend failed; the thread TTL remains the backstop.
        """
        return await self._backend.retire_conversation(conversation)

    async def exists(self, thread_id: str) -> bool:
        """Whether the backend still knows ``thread_id`` (refreshing its TTL)."""
        return await self._backend.get(thread_id) is not None

    async def history(self, conversation: str) -> list[HistoryEntry]:
        """The recorded hops of a conversation, oldest first (empty when history is off);
        the entries of rolled-back attempts are left out (see `roll_back`)."""
        return [decode_entry(entry) for entry in await self.stored_history(conversation)]

    async def stored_history(self, conversation: str) -> list[bytes]:
        """The stored entries of a conversation that are current, as they are kept (empty when
        history is off); the entries of rolled-back attempts are left out (see `roll_back`)."""
        if not self.history_on:
            return []
        return current_entries(await self._backend.history(conversation))

    async def lookup(self, thread_id: str) -> list[str] | None:
        """The chain of listener names from the root to ``thread_id``, or ``None``."""
        return await self._backend.chain(thread_id)

    async def keep_dead_letters(
        self, letters: Sequence[DeadLetter], max_entries: int
    ) -> list[DeadLetter]:
        """Append dead letters in their order, keeping at most ``max_entries`` (the oldest
        dropped).

        Raises:
            BackendError: the backend failed.
        """
        return await self._backend.add_dead_letters(letters, max_entries)

    async def size(self) -> int:
        """Live records, the root included."""
        return await self._backend.count()

    # -- every process's runs (the heartbeat's snapshots and commands) --------------------------

    async def put_runs(
        self, process: str, snapshot: bytes, forget_after_seconds: float
    ) -> list[bytes]:
        """Keep ``snapshot`` as the runs of ``process`` and take the commands queued for it, in
        one backend step (see `Backend.put_runs`).

        Raises:
            BackendError: the backend failed.
        """
        return await self._backend.put_runs(process, snapshot, forget_after_seconds)

    async def run_snapshots(self) -> list[RunSnapshot]:
        """Every process's latest snapshot of its runs (see `Backend.run_snapshots`).

        Raises:
            BackendError: the backend failed.
        """
        return await self._backend.run_snapshots()

    async def push_run_command(self, process: str, command: bytes) -> bool:
        """Queue ``command`` for ``process``; False when no such process writes snapshots.

        Raises:
            BackendError: the backend failed.
        """
        return await self._backend.push_run_command(process, command)

    async def delete_runs(self, process: str) -> None:
        """Remove the snapshot of ``process`` and its queued commands (it stops).

        Raises:
            BackendError: the backend failed.
        """
        await self._backend.delete_runs(process)
