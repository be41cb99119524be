"""Helpers for testing organisms: run one in memory, wait until idle, capture what flowed.

from xml_pipeline.testing import run_organism, capture

async def test_greeting():
    async with run_organism("organisms/hello/organism.yaml") as org:
        with capture(org) as seen:
            reply = await org.request("greeter", Greeting(name="Ada"))
        assert [e.to for e in seen] == ["greeter", "shouter", "greeter"]
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace

import anyio

from xml_pipeline._config import load_config
from xml_pipeline._organism import Organism
from xml_pipeline._runtime.hooks import Event, HopEvent
from xml_pipeline._wire.envelope import Envelope

__all__ = ["Capture", "capture", "drain", "run_organism"]


@dataclass
class Capture:
    """The hops that flowed while capturing, in order, as envelopes (payloads as objects)."""

    envelopes: list[Envelope] = field(default_factory=list)

    def __iter__(self) -> Iterator[Envelope]:
        return iter(self.envelopes)

    def __len__(self) -> int:
        return len(self.envelopes)

    def route(self) -> list[tuple[str, str]]:
        """``(sender, to)`` of every hop, in order."""
        return [(e.sender, e.to) for e in self.envelopes]

    def payloads(self, cls: type | None = None) -> list[object]:
        """The payload objects, optionally only those of class ``cls``."""
        return [e.payload for e in self.envelopes if cls is None or isinstance(e.payload, cls)]


@contextmanager
def capture(org: Organism) -> Iterator[Capture]:
    """Record every payload delivered to a handler while the block runs: each hop, and each
    answer a handler awaited with ``meta.call`` (nests with others)."""
    seen = Capture()

    def observe(event: Event) -> None:
        if type(event) is HopEvent and event.kind != "finished":
            seen.envelopes.append(
                Envelope(event.sender, event.listener, event.thread, event.payload)
            )

    unsubscribe = org.hooks.subscribe(observe)
    try:
        yield seen
    finally:
        unsubscribe()


@asynccontextmanager
async def run_organism(
    source: Organism | str | os.PathLike[str], *, in_memory: bool = True
) -> AsyncIterator[Organism]:
    """Start an organism for a test and stop it afterwards.

    ``source`` is an `Organism` or the path of an ``organism.yaml``. With ``in_memory`` (the
    default) a file's backend is replaced by the memory backend, so tests need no server.
    """
    if isinstance(source, Organism):
        org = source
    else:
        config = load_config(source)
        if in_memory:  # keep the file's TTL and history settings, drop the server
            config = replace(config, backend=replace(config.backend, type="memory"))
        org = Organism.from_config(config)
    async with org:
        yield org


async def drain(org: Organism, timeout: float = 5.0) -> None:
    """Wait until no conversation is open.

    Raises:
        TimeoutError: conversations were still open after ``timeout`` seconds.
    """
    with anyio.fail_after(timeout):
        await org.wait_idle()
