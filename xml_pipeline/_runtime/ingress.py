"""The ingress gate: how many conversations may be open at once, and who waits for a slot.

Backpressure applies here and only here (hops between listeners never wait, so call cycles
cannot deadlock). A caller beyond ``limit`` waits up to ``wait_seconds`` for a finishing
conversation to hand its slot over, then fails with ``overloaded``.
"""

from __future__ import annotations

import asyncio
from collections import deque

from xml_pipeline._errors import DeliveryError

__all__ = ["IngressGate"]


class IngressGate:
    """Counts open conversations against ``limit``; hands slots to waiters in arrival order.

    ``overloaded`` counts callers refused for lack of a slot.
    """

    def __init__(self, limit: int, wait_seconds: float) -> None:
        self.limit = limit
        self.wait_seconds = wait_seconds
        self.open = 0
        self.overloaded = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._dead = 0  # waiters in the deque that gave up
        self._closed: DeliveryError | None = None

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot (those that gave up included until they are dropped)."""
        return len(self._waiters)

    def try_admit(self) -> bool:
        """Take a slot if one is free now (no await: the usual case costs no coroutine).

        Raises:
            DeliveryError: the close error (``shutdown``) once the gate is closed.
        """
        if self._closed is not None:
            raise self._refusal(self._closed)
        if self.open < self.limit:
            self.open += 1
            return True
        return False

    async def admit(self) -> None:
        """Take a slot, waiting for one up to ``wait_seconds``.

        Raises:
            DeliveryError: ``overloaded`` when none came free in time; the close error
                (``shutdown``) once the gate is closed.
        """
        if self._closed is not None:
            raise self._refusal(self._closed)
        if self.open < self.limit:
            self.open += 1
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)  # done waiters are skipped by release: no O(n) removal
        timer = loop.call_later(self.wait_seconds, self._overloaded, waiter)
        try:
            await waiter  # a finishing conversation hands its slot over (see release)
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()  # we were handed a slot but are leaving: pass it on
            else:
                self._forget_waiter()
            raise
        finally:
            timer.cancel()

    def release(self) -> None:
        """Give a slot back: to the oldest waiter still waiting, else to the pool."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # hand the slot over
                return
            self._dead = max(0, self._dead - 1)
        self.open -= 1

    def close(self, error: DeliveryError) -> None:
        """Refuse every caller from now on with ``error``, those waiting included."""
        self._closed = error
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(self._refusal(error))

    @staticmethod
    def _refusal(closed: DeliveryError) -> DeliveryError:
        """A fresh copy of the close error for each caller refused (one exception object
        raised again and again would gather every caller's traceback)."""
        return DeliveryError(
            closed.message, reason=closed.reason, listener=closed.listener, thread=closed.thread
        )

    def _forget_waiter(self) -> None:
        """A waiter gave up: drop the dead ones once they are half the queue (amortized O(1))."""
        self._dead += 1
        if self._dead * 2 > len(self._waiters):
            self._waiters = deque(w for w in self._waiters if not w.done())
            self._dead = 0

    def _overloaded(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done():
            return
        self.overloaded += 1
        waiter.set_exception(DeliveryError(
            f"the organism is full ({self.limit} conversations open) and none finished within "
            f"{self.wait_seconds}s; retry later or raise organism.ingress_limit",
            reason="overloaded",
        ))  # fmt: skip
