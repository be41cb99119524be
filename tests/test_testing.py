"""xml_pipeline.testing: the helpers users test their own organisms with."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from xml_pipeline import HandlerMetadata, Listener, Organism, payload
from xml_pipeline.testing import capture, drain, run_organism

pytestmark = pytest.mark.anyio


@payload
@dataclass
class Note:
    text: str


HELLO = Path(__file__).resolve().parents[1] / "organisms" / "hello" / "organism.yaml"


async def test_run_organism_from_yaml_captures_every_hop_with_the_users_own_classes() -> None:
    async with run_organism(HELLO) as org:
        handlers = importlib.import_module("handlers")  # what a user's test would import
        with capture(org) as seen:
            reply = await org.request("greeter", handlers.Greeting(name="Ada"))
        assert reply == handlers.Reply(message="HELLO, ADA!")
        assert [(e.sender, e.to) for e in seen] == [
            ("_external", "greeter"),
            ("greeter", "shouter"),
            ("shouter", "greeter"),  # the answer greet awaited with meta.call
        ]
        assert seen.payloads(handlers.Shout) == [
            handlers.Shout(text="hello, Ada!"),
            handlers.Shout(text="HELLO, ADA!"),
        ]


async def test_drain_waits_for_fire_and_forget_work() -> None:
    async with run_organism(HELLO) as org:
        handlers = importlib.import_module("handlers")
        for i in range(10):
            await org.send("greeter", handlers.Greeting(name=str(i)))
        await drain(org)
        assert org.stats.answered == 10


async def test_drain_raises_timeout_error_while_a_conversation_is_stuck() -> None:
    gate = anyio.Event()

    async def stuck(msg: Note, meta: HandlerMetadata) -> None:
        await gate.wait()

    async with run_organism(Organism([Listener("stuck", Note, stuck)])) as org:
        await org.send("stuck", Note(text="x"))
        with pytest.raises(TimeoutError):
            await drain(org, timeout=0.2)
        gate.set()
        await drain(org)


async def test_captures_nest_and_stop_at_the_end_of_their_block() -> None:
    async with run_organism(HELLO) as org:
        handlers = importlib.import_module("handlers")
        with capture(org) as outer:
            with capture(org) as inner:
                await org.request("greeter", handlers.Greeting(name="a"))
            await org.request("greeter", handlers.Greeting(name="b"))
        await org.request("greeter", handlers.Greeting(name="c"))
        assert (len(inner), len(outer)) == (3, 6)
