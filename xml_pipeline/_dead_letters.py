"""The dead-letter queue as users see it: `Organism.dead_letters` (list, get, replay, purge).

The entries live in the organism's backend (memory: this process, kept from one run of the
`Organism` to the next; manager: its state server; Redis: a stream under the prefix, shared by
the organism's processes and kept across restarts). Which conversations become dead letters is
written in `xml_pipeline._runtime.dead_letters`.

Replaying an entry injects its envelope again, as a new conversation whose outcome goes to
`Organism.outcomes`; the entry is removed once that conversation has started. If it fails
again it comes back as a new dead letter, with a new id. An entry whose envelope cannot start
a conversation (its listener is gone: ``no_route``; its payload no longer fits the class:
``schema_violation``) is kept, and its result says why; so is a ``compensation_failed`` entry,
which records an answer that was not undone, for a person to act on.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from xml_pipeline._errors import BackendError, Reason, UsageError, XmlPipelineError
from xml_pipeline._runtime.pump import StreamPump
from xml_pipeline._settings import did_you_mean
from xml_pipeline.backends.base import Backend, DeadLetter, DeadLetterCounts

__all__ = ["DeadLetters", "ReplayResult"]

log = logging.getLogger("xml_pipeline.dead_letters")

_REASONS = frozenset(str(reason) for reason in Reason)


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What became of one dead letter that `DeadLetters.replay` was asked to replay.

    Attributes:
        id: the dead letter's id.
        conversation: the new conversation its envelope started (its outcome goes to
            `Organism.outcomes`), or ``None`` when it could not start.
        error: why it could not start (``.reason``: ``no_route`` when its listener is gone,
            ``schema_violation``, ``malformed``, ``overloaded``...); the entry is then kept.
    """

    id: str
    conversation: str | None = None
    error: XmlPipelineError | None = None

    @property
    def ok(self) -> bool:
        """True when the envelope started a new conversation (and the entry was removed)."""
        return self.error is None


class DeadLetters:
    """The organism's dead-letter queue: what it could not deliver, kept in its backend.

    Get it from `Organism.dead_letters`. Every method is a coroutine. Reading (`list`, `get`,
    `counts`) and `purge` work whether or not the organism runs (a stopped organism opens its
    backend for the call); `replay` needs it running.

    Filters, wherever they are taken: ``reason`` (a `Reason` code), ``listener`` (the listener
    the failure came from) and ``since`` (kept at or after: seconds since the epoch, or a
    `datetime`; a naive one is local time). ``ids`` and filters do not mix.
    """

    _organism: str
    _running: Callable[[], tuple[StreamPump, Backend] | None]
    _open_backend: Callable[[], AbstractAsyncContextManager[Backend]]
    _durable: bool
    _where: str

    def __init__(self) -> None:
        raise UsageError(
            "DeadLetters is not built directly: use the queue of an organism, organism.dead_letters"
        )

    @classmethod
    def _of(
        cls,
        organism: str,
        *,
        running: Callable[[], tuple[StreamPump, Backend] | None],
        open_backend: Callable[[], AbstractAsyncContextManager[Backend]],
        durable: bool,
        where: str,
    ) -> DeadLetters:
        """The queue of the organism named ``organism``: ``running()`` gives its pump and
        backend while it runs, ``open_backend()`` its backend, opened, while it does not."""
        self = object.__new__(cls)
        self._organism = organism
        self._running = running
        self._open_backend = open_backend
        self._durable = durable
        self._where = where
        return self

    def __repr__(self) -> str:
        return f"<DeadLetters of organism {self._organism!r} in {self._where}>"

    @property
    def durable(self) -> bool:
        """Whether the entries outlive this process (Redis, or a manager server of its own
        address); a memory backend keeps them only while this process runs."""
        return self._durable

    async def list(
        self,
        *,
        reason: str | None = None,
        listener: str | None = None,
        since: float | datetime | None = None,
        limit: int | None = None,
    ) -> builtins.list[DeadLetter]:
        """The dead letters kept, oldest first, filtered; at most ``limit`` of them.

        Raises:
            UsageError: ``reason`` is no reason code, ``limit`` is below 1, or ``since`` is
                not a time.
            BackendError: the backend is unreachable or failed.
        """
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise UsageError(f"dead_letters.list(limit=) takes an int, not {limit!r}")
        if limit is not None and limit < 1:
            raise UsageError(f"dead_letters.list(limit=) must be at least 1, found {limit}")
        after = _since(since, "list")
        _check_reason(reason, "list")
        async with self._backend() as backend:
            return await backend.dead_letters(
                reason=reason, listener=listener, since=after, limit=limit
            )

    async def get(self, letter_id: str) -> DeadLetter | None:
        """The dead letter with this id, or ``None`` when there is none.

        Raises:
            BackendError: the backend is unreachable or failed.
        """
        async with self._backend() as backend:
            return await backend.get_dead_letter(letter_id)

    async def counts(self) -> DeadLetterCounts:
        """How many dead letters are kept, and how many of the oldest were dropped beyond
        ``dead_letters.max_entries``.

        Raises:
            BackendError: the backend is unreachable or failed.
        """
        async with self._backend() as backend:
            return await backend.dead_letter_counts()

    async def replay(
        self,
        ids: Sequence[str] | None = None,
        *,
        reason: str | None = None,
        listener: str | None = None,
        since: float | datetime | None = None,
    ) -> builtins.list[ReplayResult]:
        """Inject the envelopes of the dead letters named by ``ids`` (or every one the filters
        select; all of them when nothing is given) again, each as a new conversation, oldest
        first. Their outcomes go to `Organism.outcomes`.

        An entry is removed once its conversation has started (if that fails too, it comes
        back as a new dead letter); one that cannot start is kept and its result says why, as
        is a ``compensation_failed`` one (a `UsageError`: undo it by hand, then purge it).

        Returns:
            one result per entry, in the order replayed.

        Raises:
            UsageError: the organism is not running; an id names no dead letter (every
                unknown id is named, and nothing is replayed); ``ids`` and filters both
                given; a filter is invalid.
            BackendError: the backend is unreachable or failed.
        """
        run = self._running()
        if run is None:
            raise UsageError(
                f"dead_letters.replay() of organism {self._organism!r}: the organism is not "
                "running; replay inside `async with organism:` (or run `organism dlq replay "
                "FILE`)"
            )
        pump = run[0]
        async with self._backend() as backend:
            letters = await self._select(backend, ids, reason, listener, since, "replay")
            results: builtins.list[ReplayResult] = []
            for letter in letters:
                if letter.reason == Reason.COMPENSATION_FAILED:
                    results.append(ReplayResult(letter.id, None, _not_replayable(letter)))
                    continue
                try:
                    conversation = await pump.inject(letter.envelope)
                except XmlPipelineError as exc:
                    results.append(ReplayResult(letter.id, None, exc))
                    continue
                try:
                    await backend.delete_dead_letters([letter.id])
                except BackendError as exc:
                    log.warning(
                        "dead letter %s was replayed as conversation %s but could not be "
                        "removed (%s); purge it, or a later replay runs it again",
                        letter.id, conversation, exc,
                    )  # fmt: skip
                results.append(ReplayResult(letter.id, conversation, None))
            return results

    async def purge(
        self,
        ids: Sequence[str] | None = None,
        *,
        reason: str | None = None,
        listener: str | None = None,
        since: float | datetime | None = None,
    ) -> int:
        """Remove the dead letters named by ``ids``, or every one the filters select (all of
        them when nothing is given).

        Returns:
            how many were removed.

        Raises:
            UsageError: an id names no dead letter (every unknown id is named, and nothing
                is removed); ``ids`` and filters both given; a filter is invalid.
            BackendError: the backend is unreachable or failed.
        """
        async with self._backend() as backend:
            letters = await self._select(backend, ids, reason, listener, since, "purge")
            return await backend.delete_dead_letters([letter.id for letter in letters])

    # -- internals ----------------------------------------------------------------------------

    @asynccontextmanager
    async def _backend(self) -> AsyncIterator[Backend]:
        """The running organism's backend, its dead letters written; or, when it is stopped,
        the configured backend opened for the call."""
        run = self._running()
        if run is not None:
            pump, backend = run
            await pump.dead_letters.flush()  # this process reads what it wrote
            yield backend
            return
        async with self._open_backend() as backend:
            yield backend

    async def _select(
        self,
        backend: Backend,
        ids: Sequence[str] | None,
        reason: str | None,
        listener: str | None,
        since: float | datetime | None,
        what: str,
    ) -> builtins.list[DeadLetter]:
        after = _since(since, what)
        _check_reason(reason, what)
        if ids is None:
            return await backend.dead_letters(reason=reason, listener=listener, since=after)
        if isinstance(ids, str) or not all(isinstance(i, str) for i in ids):
            raise UsageError(
                f"dead_letters.{what}() takes a list of dead letter ids, not {ids!r}"
                + (f"; did you mean [{ids!r}]?" if isinstance(ids, str) else "")
            )
        if reason is not None or listener is not None or since is not None:
            raise UsageError(
                f"dead_letters.{what}() takes ids or filters (reason, listener, since), not "
                "both; filter with list() first and pass the ids you chose"
            )
        letters = [await backend.get_dead_letter(letter_id) for letter_id in ids]
        unknown = [i for i, letter in zip(ids, letters, strict=True) if letter is None]
        if unknown:
            names = ", ".join(repr(i) for i in unknown)
            raise UsageError(
                f"dead_letters.{what}(): no dead letter with id {names} in organism "
                f"{self._organism!r} ({self._where}); nothing was done. List the ids with "
                "dead_letters.list() or `organism dlq list FILE`"
            )
        return [letter for letter in letters if letter is not None]


def _not_replayable(letter: DeadLetter) -> UsageError:
    return UsageError(
        f"dead letter {letter.id} records a compensation of {letter.listener!r} that failed "
        f"(conversation {letter.conversation}): its envelope holds the answer that was not "
        "undone, not a conversation to start again; undo it by hand, then purge it"
    )


def _since(since: float | datetime | None, what: str) -> float | None:
    if since is None:
        return None
    if isinstance(since, datetime):
        return since.timestamp()
    if isinstance(since, int | float) and not isinstance(since, bool):
        return float(since)
    raise UsageError(
        f"dead_letters.{what}(since=) takes seconds since the epoch or a datetime, not {since!r}"
    )


def _check_reason(reason: str | None, what: str) -> None:
    if reason is None or reason in _REASONS:
        return
    hint = did_you_mean(str(reason), _REASONS) or f"; reasons: {', '.join(sorted(_REASONS))}"
    raise UsageError(f"dead_letters.{what}(reason=) names no reason code: {reason!r}{hint}")
