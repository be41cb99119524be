"""The behaviour every `Transport` must have; each subclass says how to build its transport.

A transport carries hops to their listeners under each listener's concurrency limit: run now
(in a task of its own, here recorded by ``spawn``), claimed by the calling task, or queued in
arrival order, and a freed slot passes to the oldest waiting hop of a conversation still open.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from xml_pipeline import HandlerMetadata, Listener, payload
from xml_pipeline._runtime.hops import Conversation, Frame, Hop, ListenerState
from xml_pipeline._runtime.retry import NoRetry
from xml_pipeline._runtime.transport import LocalTransport, Transport


@payload
@dataclass
class Note:
    text: str = ""


async def handle(msg: Note, meta: HandlerMetadata) -> None:
    return None


Make = Callable[[list[ListenerState], Callable[[Hop], None]], Transport]


class TransportContract:
    """Subclasses provide ``make``: (listener states, spawn) -> a transport."""

    @pytest.fixture
    def make(self) -> Make:
        raise NotImplementedError

    @pytest.fixture
    def state(self) -> ListenerState:
        return ListenerState(Listener("l", Note, handle, max_concurrency=2), 1, NoRetry())

    @staticmethod
    def hop(state: ListenerState, conv: Conversation | None = None, text: str = "") -> Hop:
        conv = conv or Conversation(None, state.name)
        return Hop(state, Frame(state.name, "t", None), "_external", Note(text=text), conv)

    def test_implements_the_protocol(self, make: Make, state: ListenerState) -> None:
        assert isinstance(make([state], lambda hop: None), Transport)

    def test_deliver_runs_hops_up_to_the_limit_then_queues_them_in_order(
        self, make: Make, state: ListenerState
    ) -> None:
        started: list[str] = []
        transport = make([state], lambda hop: started.append(hop.payload.text))  # type: ignore[attr-defined]
        for text in "abcde":
            transport.deliver(self.hop(state, text=text))
        assert started == ["a", "b"], "two slots: two run, three wait"
        order = []
        while (nxt := transport.release(state)) is not None:
            order.append(nxt.payload.text)  # type: ignore[attr-defined]
        assert order == ["c", "d", "e"], "a freed slot goes to the oldest waiting hop"

    def test_a_freed_slot_skips_hops_of_ended_conversations(
        self, make: Make, state: ListenerState
    ) -> None:
        transport = make([state], lambda hop: None)
        ended = Conversation(None, "l")
        for text in "ab":
            transport.deliver(self.hop(state, text=text))
        transport.deliver(self.hop(state, ended, "dropped"))
        transport.deliver(self.hop(state, text="kept"))
        ended.done = True
        nxt = transport.release(state)
        assert nxt is not None and nxt.payload.text == "kept"  # type: ignore[attr-defined]

    def test_claim_takes_a_free_slot_for_the_calling_task_and_release_frees_it(
        self, make: Make, state: ListenerState
    ) -> None:
        transport = make([state], lambda hop: None)
        assert transport.claim(self.hop(state))
        assert transport.claim(self.hop(state))
        assert not transport.claim(self.hop(state)), "no third slot"
        assert transport.release(state) is None
        assert transport.claim(self.hop(state)), "the released slot is free again"

    def test_start_runs_a_hop_that_holds_its_slot(self, make: Make, state: ListenerState) -> None:
        started: list[Hop] = []
        transport = make([state], started.append)
        hop = self.hop(state)
        assert transport.claim(hop)
        transport.start(hop)
        assert started == [hop]

    def test_close_drops_waiting_hops_and_starts_nothing_more(
        self, make: Make, state: ListenerState
    ) -> None:
        started: list[Hop] = []
        transport = make([state], started.append)
        for _ in range(4):
            transport.deliver(self.hop(state))
        transport.close()
        assert transport.release(state) is None, "the waiting hops were dropped"
        transport.deliver(self.hop(state))
        assert len(started) == 2, "nothing is delivered after close"

    @pytest.mark.anyio
    async def test_resume_takes_a_free_slot_at_once_else_waits_first_in_line(
        self, make: Make, state: ListenerState
    ) -> None:
        transport = make([state], lambda hop: None)
        assert transport.resume(state) is None, "a free slot is taken at once"
        transport.deliver(self.hop(state, text="running"))
        transport.deliver(self.hop(state, text="waiting"))
        gave_up = transport.resume(state)
        resumed = transport.resume(state)
        assert gave_up is not None and resumed is not None, "no slot free: both wait"
        gave_up.cancel()  # this handler stopped waiting (its conversation ended)
        assert transport.release(state) is None, "the slot went to a resumed handler..."
        assert resumed.done() and gave_up.cancelled()
        nxt = transport.release(state)
        assert nxt is not None and nxt.payload.text == "waiting", "...then to waiting hops"
        assert transport.release(state) is None and transport.claim(self.hop(state))


class TestLocalTransport(TransportContract):
    @pytest.fixture
    def make(self) -> Make:
        return LocalTransport
