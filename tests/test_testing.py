"""xml_pipeline.testing: the helpers users test their own organisms with."""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest

from xml_pipeline import (
    DeliveryError,
    HandlerMetadata,
    HandlerResponse,
    Listener,
    Organism,
    UsageError,
    load_config,
    payload,
    testing,
)
from xml_pipeline.testing import Fake, capture, drain, run_organism

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


# -- run_organism(replace=...) and Fake -------------------------------------------------------

HASHER = HELLO.parents[1] / "hasher" / "organism.yaml"


def _module_of(org: Organism, listener: str) -> ModuleType:
    """The handler module of an organism's listener (hello's and hasher's are both called
    ``handlers``; the one imported second lives under its folder's package)."""
    payload_class = next(x.payload_class for x in org.listeners if x.name == listener)
    return sys.modules[payload_class.__module__]


async def test_a_fake_stands_in_for_a_listener_and_its_answer_flows_back_through_the_chain() -> (
    None
):
    handlers = importlib.import_module("handlers")
    shouter = Fake(answer=handlers.Shout(text="HI"))
    async with run_organism(HELLO, replace={"shouter": shouter}) as org:
        with capture(org) as seen:
            reply = await org.request("greeter", handlers.Greeting(name="Ada"))
    assert reply == handlers.Reply(message="HI")  # the real greeter answered with the fake's
    assert seen.route() == [
        ("_external", "greeter"),
        ("greeter", "shouter"),
        ("shouter", "greeter"),
    ]
    shouter.assert_called_once_with(handlers.Shout(text="hello, Ada!"))
    assert [(m.from_id, m.own_name) for m in shouter.metas] == [("greeter", "shouter")]


async def test_a_fake_for_a_cpu_bound_listener_runs_in_the_test_process_and_no_pool_starts() -> (
    None
):
    ran_in: list[int] = []

    def hash_here(job: Any, meta: HandlerMetadata) -> HandlerResponse:  # a closure: no worker
        ran_in.append(os.getpid())  # could import it, so this proves it ran in process
        return HandlerResponse.respond(digest_class(hex=f"fake:{job.data}", rounds=job.rounds))

    hasher = Fake(hash_here)
    async with run_organism(HASHER, replace={"hasher": hasher}) as org:
        handlers = _module_of(org, "desk")
        digest_class = handlers.Digest
        assert org.process_pool is None  # the only cpu_bound listener was replaced
        reply = await org.request("desk", handlers.HashJob(data="abc", rounds=7))
        assert reply == handlers.Digest(hex="fake:abc", rounds=7)
    assert ran_in == [os.getpid()]
    assert hasher.calls == [handlers.HashJob(data="abc", rounds=7)]
    assert hasher.metas[0].from_id == "desk"
    replaced = next(x for x in org.listeners if x.name == "hasher")
    assert (replaced.cpu_bound, replaced.timeout_seconds, replaced.handler) == (False, 10, hasher)


async def test_a_fake_handler_may_call_a_real_peer_and_sees_every_payload_in_order() -> None:
    handlers = importlib.import_module("handlers")

    async def greet(msg: Any, meta: HandlerMetadata) -> HandlerResponse:
        loud = await meta.call("shouter", handlers.Shout(text=f"hi {msg.name}"))
        return HandlerResponse.respond(handlers.Reply(message=loud.text))

    greeter = Fake(greet)
    async with run_organism(HELLO, replace={"greeter": greeter}) as org:
        reply = await org.request("greeter", handlers.Greeting(name="Bo"))
        assert reply == handlers.Reply(message="HI BO")  # the real shouter ran
        await org.request("greeter", handlers.Greeting(name="Cy"))
    assert greeter.calls == [handlers.Greeting(name="Bo"), handlers.Greeting(name="Cy")]


async def test_the_peers_of_a_replaced_listener_are_still_enforced() -> None:
    handlers = importlib.import_module("handlers")
    sneaky = Fake(lambda msg, meta: HandlerResponse(handlers.Greeting(name="x"), to="greeter"))
    async with run_organism(HELLO, replace={"shouter": sneaky}) as org:
        with pytest.raises(DeliveryError) as caught:
            await org.request("shouter", handlers.Shout(text="a"))
    assert caught.value.reason == "peer_denied"
    assert "'shouter' may not call 'greeter'" in str(caught.value)


async def test_a_fake_that_answers_nothing_ends_a_request_with_no_answer() -> None:
    handlers = importlib.import_module("handlers")
    sink = Fake()
    async with run_organism(HELLO, replace={"shouter": sink}) as org:
        with pytest.raises(DeliveryError) as caught:
            await org.request("shouter", handlers.Shout(text="a"))
    assert caught.value.reason == "no_answer"
    sink.assert_called_once_with(handlers.Shout(text="a"))


async def test_replace_keeps_every_setting_of_the_file() -> None:
    """run_organism builds the organism itself when it swaps handlers: it must build what
    Organism.from_config does, but for the handler (and cpu_bound) of the swapped listener."""
    config = load_config(HASHER)
    fake = Fake()
    built = testing._organism_with(config, {"hasher": fake})
    usual = Organism.from_config(config)
    assert _state(built) == _state(usual)
    swapped = [dataclasses.replace(x, handler=fake, cpu_bound=False) for x in usual.listeners[1:]]
    assert built.listeners == (usual.listeners[0], *swapped)


def _state(org: Organism) -> dict[str, object]:
    # objects of each organism's own, built from the settings compared here (the memory backend
    # an organism keeps from run to run is built from _backend_spec; its dead-letter queue from
    # that and its name)
    own = ("listeners", "hooks", "_backend", "_dead_letters")
    return {k: v for k, v in vars(org).items() if k not in own}


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        ({"shoutr": Fake()}, "has no listener named 'shoutr'; did you mean 'shouter'?"),
        ({"zzz": Fake()}, "has no listener named 'zzz'; its listeners: greeter, shouter"),
        ({"shouter": "fake"}, "the stand-in for 'shouter' is not callable (it is of type str)"),
        (
            {"shouter": lambda msg: None},
            "the stand-in for 'shouter': tests.test_testing.<lambda> (",  # then where it is
        ),
        (["shouter"], "takes a mapping of listener names to handlers"),
    ],
    ids=["unknown", "unknown-far", "not-callable", "signature", "not-a-mapping"],
)
async def test_a_wrong_replace_is_a_usage_error_naming_the_listener(
    replace: Any, message: str
) -> None:
    with pytest.raises(UsageError) as caught:
        async with run_organism(HELLO, replace=replace):
            pass
    assert message in str(caught.value)
    assert "run_organism(replace=...)" in str(caught.value)


async def test_every_wrong_replacement_is_listed_at_once() -> None:
    with pytest.raises(UsageError) as caught:
        async with run_organism(HELLO, replace={"gretter": Fake(), "shouter": 3}):  # type: ignore[dict-item]
            pass
    lines = str(caught.value).splitlines()
    assert len(lines) == 3 and "'gretter'" in lines[1] and "'shouter'" in lines[2]


async def test_replace_with_an_organism_object_is_refused_with_what_to_do() -> None:
    org = Organism([Listener("echo", Note, Fake())])
    with pytest.raises(UsageError, match=r"needs the path of an organism\.yaml.*handler=fake"):
        async with run_organism(org, replace={"echo": Fake()}):
            pass


def test_a_fake_is_built_from_a_handler_or_an_answer_and_says_what_is_wrong() -> None:
    with pytest.raises(UsageError, match="a handler or answer=, not both"):
        Fake(lambda m, meta: None, answer=Note(text="x"))
    with pytest.raises(UsageError, match=r"takes a @payload object, not str"):
        Fake(answer="x")
    with pytest.raises(UsageError, match=r"Fake\(handler\): is not callable"):
        Fake(42)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"write Fake\(answer=Note\(text='x'\)\)"):
        Fake(Note(text="x"))  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="takes no positional arguments"):
        Fake(lambda: None)  # type: ignore[arg-type]
    assert repr(Fake(answer=Note(text="x"))) == "Fake(answer=Note(text='x'))"


async def test_the_assertions_of_a_fake_list_its_calls_when_they_fail() -> None:
    echo = Fake(answer=Note(text="ok"))
    async with run_organism(Organism([Listener("echo", Note, echo)])) as org:
        echo.assert_not_called()
        with pytest.raises(AssertionError, match="it was not called"):
            echo.assert_called_once_with(Note(text="a"))
        await org.request("echo", Note(text="a"))
        echo.assert_called_once_with(Note(text="a"))
        await org.request("echo", Note(text="b"))
    with pytest.raises(AssertionError) as caught:
        echo.assert_called_once_with(Note(text="a"))
    assert str(caught.value) == (
        "expected one call with Note(text='a'); it was called 2 times: "
        "Note(text='a') from '_external', Note(text='b') from '_external'"
    )
    with pytest.raises(AssertionError, match="expected no call; it was called 2 times"):
        echo.assert_not_called()
