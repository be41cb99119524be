"""The outbox: outcomes of conversations nobody awaits (``send``/``inject``), for the outside.

A bounded queue between the pump, which puts the outcome of every ``send``/``inject``
conversation as it ends, and readers iterating `Organism.outcomes`. When nobody reads, the
oldest outcomes are dropped to make room and counted (``stats.outcomes_dropped``): the pump
never waits for a reader, as a broker's bounded queue with drop-head overflow does.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from xml_pipeline._errors import DeliveryError

__all__ = ["Outbox", "Outcome"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one ``send``/``inject`` conversation ended (read from `Organism.outcomes`).

    Attributes:
        conversation: the conversation id ``send``/``inject`` returned.
        listener: the listener the conversation was started with.
        answer: the answer payload object, or ``None`` when it failed.
        error: the failure (``.reason`` one of `Reason`), or ``None`` when it was answered.
        answered_by: the listener whose answer ended it (``None`` when it failed).
    """

    conversation: str
    listener: str
    answer: Any = None
    error: DeliveryError | None = None
    answered_by: str | None = None

    @property
    def ok(self) -> bool:
        """True when the conversation was answered."""
        return self.error is None


class Outbox:
    """A bounded FIFO of `Outcome` objects with drop-oldest overflow; closed with its pump.

    Each outcome goes to one reader. Iterating waits for the next outcome and ends once the
    outbox is closed and empty.
    """

    def __init__(self, size: int) -> None:
        self._items: deque[Outcome] = deque()
        self._size = size
        self._readers: deque[asyncio.Future[None]] = deque()
        self.closed = False
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, outcome: Outcome) -> None:
        """Add ``outcome``, dropping the oldest one when the outbox is full."""
        if len(self._items) >= self._size:
            self._items.popleft()
            self.dropped += 1
        self._items.append(outcome)
        self._wake()

    def close(self) -> None:
        """No more outcomes: readers take what is left, then their iteration ends."""
        self.closed = True
        while self._readers:
            self._wake()

    def _wake(self) -> None:
        while self._readers:
            reader = self._readers.popleft()
            if not reader.done():
                reader.set_result(None)
                return

    async def get(self) -> Outcome | None:
        """The oldest outcome, waiting for one; ``None`` once closed and empty."""
        while not self._items:
            if self.closed:
                return None
            reader = asyncio.get_running_loop().create_future()
            self._readers.append(reader)
            try:
                await reader
            except BaseException:
                if reader.done() and not reader.cancelled():
                    self._wake()  # woken and cancelled at once: pass the wake-up on
                raise
        return self._items.popleft()

    async def __aiter__(self) -> AsyncIterator[Outcome]:
        while (outcome := await self.get()) is not None:
            yield outcome
