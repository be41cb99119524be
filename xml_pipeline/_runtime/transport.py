"""The transport: what carries a hop to its listener and runs it under its concurrency limit.

In one process (`LocalTransport`) a hop is a Python object handed to a task: to a new one when
its listener has a free slot, to the listener's backlog (a deque) otherwise. Hops between
listeners never wait for room (backpressure applies at ingress only), so call cycles cannot
deadlock. The pump keeps the measured *continuation* path: the task that ran a handler claims
the next hop's slot and runs it itself, and takes over the next backlogged hop of a listener
whose slot it frees, instead of a task per hop.

This is the seam for an organism spread over processes: a transport on Redis Streams will
deliver a hop to the process that hosts its listener (``claim`` then fails for listeners that
live elsewhere). Every transport is held to tests/runtime/test_transport_contract.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

from xml_pipeline._runtime.hops import Hop, ListenerState

__all__ = ["LocalTransport", "Transport"]


@runtime_checkable
class Transport(Protocol):
    """Carries hops to their listeners' handlers."""

    def deliver(self, hop: Hop) -> None:
        """Run ``hop`` when its listener has a free slot: now in a task of its own, or later
        in arrival order. Never waits."""
        ...

    def claim(self, hop: Hop) -> bool:
        """Take a slot of ``hop``'s listener for the calling task to run ``hop`` itself.

        Returns:
            False when no slot is free (or the listener runs elsewhere): then `deliver` it.
        """
        ...

    def release(self, state: ListenerState) -> Hop | None:
        """A run of ``state``'s listener ended: its slot passes to the oldest waiting hop whose
        conversation is still open (hops of ended conversations are dropped here).

        Returns:
            that hop, now holding the slot, for the caller to run (itself or via `start`);
            ``None`` when nobody waited and the slot is free.
        """
        ...

    def start(self, hop: Hop) -> None:
        """Run a hop that already holds its slot (from `claim` or `release`) in a new task."""
        ...

    def resume(self, state: ListenerState) -> asyncio.Future[None] | None:
        """A slot for a handler that gave its own up while it waited (``meta.call``).

        Returns:
            ``None`` when a slot was free and is taken; else a future that resolves when
            `release` hands one over (resumed handlers are served before waiting hops). A
            caller that stops waiting on it must pass a slot it was handed on.
        """
        ...

    def close(self) -> None:
        """Drop every waiting hop; from now on `release` frees slots and starts nothing."""
        ...


class LocalTransport:
    """Hops run in tasks of this process; ``spawn(hop)`` starts the task that runs one.

    ``states`` are the listeners it serves (their slot counts and backlogs live on them).
    """

    __slots__ = ("_closed", "_spawn", "_states")

    def __init__(self, states: Iterable[ListenerState], spawn: Callable[[Hop], None]) -> None:
        self._states = tuple(states)
        self._spawn = spawn
        self._closed = False

    def deliver(self, hop: Hop) -> None:
        """Run ``hop`` in a new task if its listener has a free slot, else queue it (once
        closed: drop it, its conversation was ended with ``shutdown``)."""
        if self._closed:
            return
        state = hop.state
        if state.busy < state.limit:
            state.busy += 1
            self._spawn(hop)
        else:
            state.backlog.append(hop)

    def claim(self, hop: Hop) -> bool:
        """Take a free slot of ``hop``'s listener for the calling task, if there is one."""
        state = hop.state
        if state.busy < state.limit:
            state.busy += 1
            return True
        return False

    def release(self, state: ListenerState) -> Hop | None:
        """Pass the slot to a resumed handler, else to the oldest waiting hop of an open
        conversation, else free it."""
        resumers = state.resumers
        while resumers:
            resumer = resumers.popleft()
            if not resumer.done():
                resumer.set_result(None)  # it holds the slot now
                return None
        backlog = state.backlog
        while backlog and not self._closed:
            hop = backlog.popleft()
            if not hop.conv.done:
                return hop  # it holds the slot now
        state.busy -= 1
        return None

    def start(self, hop: Hop) -> None:
        """Run a hop that holds its slot in a new task."""
        self._spawn(hop)

    def resume(self, state: ListenerState) -> asyncio.Future[None] | None:
        """Take a free slot for a resumed handler, or queue it first in line for one."""
        if state.busy < state.limit:
            state.busy += 1
            return None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        state.resumers.append(future)
        return future

    def close(self) -> None:
        """Drop every waiting hop; freed slots start nothing from now on."""
        self._closed = True
        for state in self._states:
            state.backlog.clear()
