"""ThreadRegistry: opaque call chains over a backend.

Every call gets a fresh opaque id (never "one id per chain string"), so two conversations that
follow the same path never share an id. The registry stores each id's parent and listener;
a chain is read by walking parents, so listener names may contain dots.
"""

from __future__ import annotations

import logging
import os

from xml_pipeline._errors import BackendError
from xml_pipeline.backends.base import Backend, PruneResult, ThreadRecord

__all__ = ["ThreadRegistry", "new_thread_id"]

log = logging.getLogger("xml_pipeline.registry")


def new_thread_id() -> str:
    """A fresh opaque thread id (96 random bits; about 4x cheaper than ``uuid4()``)."""
    return os.urandom(12).hex()


class ThreadRegistry:
    """The organism's call chains, kept in its backend.

    Use `initialize_root` once; conversations then start with ``extend_chain(root_id, ...)``.
    Late replies (a response on an id that was already retired) are dropped and counted in
    `late_replies`.
    """

    def __init__(self, backend: Backend, organism_name: str) -> None:
        self._backend = backend
        self._name = organism_name
        self.root_id = f"root:{organism_name}"
        self.late_replies = 0

    @property
    def backend(self) -> Backend:
        """The backend the chains live in."""
        return self._backend

    async def initialize_root(self) -> str:
        """Create the organism's root record (idempotent) and return its id."""
        await self._backend.put_root(self.root_id, self._name)
        return self.root_id

    async def open_conversation(
        self, conversation: str, listener: str, history_entry: bytes | None = None
    ) -> ThreadRecord:
        """Start a conversation: a call from the root to ``listener`` under the fresh id
        ``conversation`` (chosen by the caller, so that it can be retired when the outcome of
        this call is unknown: see `abandon_conversation`).

        A root record that a shared backend lost (e.g. Redis restarted empty) is recreated.

        Raises:
            BackendError: the backend failed, or does not keep the root record.
        """
        rec = await self._backend.extend(self.root_id, conversation, listener, history_entry)
        if rec is None:  # a shared backend lost its data (e.g. Redis restarted empty)
            log.warning("the root record %s was missing; recreating it", self.root_id)
            await self.initialize_root()
            rec = await self._backend.extend(self.root_id, conversation, listener, history_entry)
        if rec is None:
            raise BackendError(
                f"the backend did not keep the root record {self.root_id!r}; check that nothing "
                "else deletes keys under this organism's prefix",
                reason="backend_error",
            )
        return rec

    async def abandon_conversation(self, conversation: str) -> int:
        """Retire a conversation whose opening call may or may not have happened (the caller
        was cancelled or the backend failed mid-call); returns records removed.

        Raises:
            BackendError: the backend failed; the thread TTL remains the backstop.
        """
        return await self._backend.abandon(conversation)

    async def exists(self, thread_id: str) -> bool:
        """Whether the backend still knows ``thread_id`` (refreshing its TTL)."""
        return await self._backend.get(thread_id) is not None

    async def history(self, conversation: str) -> list[bytes]:
        """The stored history entries of a conversation, oldest first."""
        return await self._backend.history(conversation)

    async def extend_chain(
        self, parent_id: str, listener: str, history_entry: bytes | None = None
    ) -> ThreadRecord | None:
        """Open a call from the thread ``parent_id`` to ``listener`` under a fresh id.

        Returns:
            the new record, or ``None`` when ``parent_id`` was retired (the call is dropped).
        """
        return await self._backend.extend(parent_id, new_thread_id(), listener, history_entry)

    async def prune_for_response(
        self, thread_id: str, history_entry: bytes | None = None
    ) -> PruneResult | None:
        """Retire the responder's entry and say where its response goes.

        Returns:
            the caller and the caller's thread id, or ``None`` for a late reply (counted).
        """
        result = await self._backend.prune(thread_id, history_entry)
        if result is None:
            self.late_replies += 1
        return result

    async def lookup(self, thread_id: str) -> list[str] | None:
        """The chain of listener names from the root to ``thread_id``, or ``None``."""
        return await self._backend.chain(thread_id)

    async def cleanup(self, conversation: str) -> int:
        """Retire a whole conversation (timed out or abandoned); returns records removed."""
        return await self._backend.retire_conversation(conversation)

    async def size(self) -> int:
        """Live records, the root included."""
        return await self._backend.count()
