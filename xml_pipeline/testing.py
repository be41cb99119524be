"""Helpers for testing organisms: run one in memory, stand fakes in for listeners, wait until
idle, capture what flowed.

Async tests need no marker: the pytest plugin installed with xml-pipeline runs them on asyncio
(`xml_pipeline.pytest_plugin`).

from xml_pipeline.testing import Fake, capture, run_organism

async def test_greeting():
    shouter = Fake(answer=Shout(text="HI"))
    async with run_organism("organisms/hello/organism.yaml", replace={"shouter": shouter}) as org:
        with capture(org) as seen:
            reply = await org.request("greeter", Greeting(name="Ada"))
    assert reply == Reply(message="HI")
    shouter.assert_called_once_with(Shout(text="hello, Ada!"))
    assert [e.to for e in seen] == ["greeter", "shouter", "greeter"]
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

from xml_pipeline._config import OrganismConfig, load_config
from xml_pipeline._errors import UsageError
from xml_pipeline._handlers import Handler, HandlerMetadata, HandlerResponse, HandlerResult
from xml_pipeline._loader import handler_signature_problem, load_organism
from xml_pipeline._organism import Organism
from xml_pipeline._runtime.hooks import Event, HopEvent
from xml_pipeline._settings import OrganismSettings, did_you_mean, values_of
from xml_pipeline._wire.envelope import Envelope
from xml_pipeline._wire.payloads import is_payload

__all__ = ["Capture", "Fake", "capture", "drain", "run_organism"]


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


class Fake:
    """A stand-in handler that records every call; give it to `run_organism` (``replace=``).

    ``Fake()`` answers nothing (a request to it alone ends with ``no_answer``);
    ``Fake(answer=City(name="Paris"))`` answers every call with that payload;
    ``Fake(handler)`` runs ``handler(payload, metadata)``, sync or async, which returns what
    any handler returns: ``None``, a `HandlerResponse` or a list of them (peers are enforced
    on them as on the real handler's; it may ``await metadata.call(peer, payload)`` too).

    Attributes:
        calls: the payloads it was called with, in order: requests, and the answers of the
            peers it called (a listener's handler receives both).
        metas: the `HandlerMetadata` of each call, in the same order (``from_id`` says who
            sent it).

    Raises:
        UsageError: both ``handler`` and ``answer`` are given; ``handler`` cannot be called as
            ``handler(payload, metadata)``; ``answer`` is not a ``@payload`` object.
    """

    def __init__(self, handler: Handler | None = None, *, answer: object = None) -> None:
        if handler is not None and answer is not None:
            raise UsageError(
                "Fake() takes a handler or answer=, not both: answer from the handler instead"
            )
        if handler is not None:
            problem = (
                f"is not callable (it is of type {type(handler).__name__})"
                if not callable(handler)
                else handler_signature_problem(handler)
            )
            if problem and is_payload(type(handler)):  # the likeliest slip: the answer itself
                problem += f"; to answer every call with it, write Fake(answer={handler!r})"
            if problem:
                raise UsageError(f"Fake(handler): {problem}")
        if answer is not None and not is_payload(type(answer)):
            raise UsageError(
                f"Fake(answer=...) takes a @payload object, not {type(answer).__name__}; "
                f"to return something else, give a handler: Fake(handler)"
            )
        self._handler = handler
        self._answer = answer
        self.calls: list[Any] = []
        self.metas: list[HandlerMetadata] = []

    async def __call__(self, payload: Any, metadata: HandlerMetadata, /) -> HandlerResult:
        self.calls.append(payload)
        self.metas.append(metadata)
        if self._handler is not None:
            result = self._handler(payload, metadata)
            if inspect.isawaitable(result):
                result = await result
            return result
        if self._answer is not None:
            return HandlerResponse.respond(self._answer)
        return None

    def assert_called_once_with(self, payload: object) -> None:
        """Check that it was called exactly once, with ``payload`` (compared with ``==``).

        Raises:
            AssertionError: it was called another number of times, or with another payload;
                the message lists the calls.
        """
        if self.calls != [payload]:
            raise AssertionError(f"expected one call with {payload!r}; {self._calls_text()}")

    def assert_not_called(self) -> None:
        """Check that it was never called.

        Raises:
            AssertionError: it was called; the message lists the calls.
        """
        if self.calls:
            raise AssertionError(f"expected no call; {self._calls_text()}")

    def _calls_text(self) -> str:
        if not self.calls:
            return "it was not called"
        listed = ", ".join(
            f"{payload!r} from {meta.from_id!r}"
            for payload, meta in zip(self.calls, self.metas, strict=True)
        )
        count = "once" if len(self.calls) == 1 else f"{len(self.calls)} times"
        return f"it was called {count}: {listed}"

    def __repr__(self) -> str:
        if self._handler is not None:
            return f"Fake({self._handler!r})"
        if self._answer is not None:
            return f"Fake(answer={self._answer!r})"
        return "Fake()"


@asynccontextmanager
async def run_organism(
    source: Organism | str | os.PathLike[str],
    *,
    in_memory: bool = True,
    replace: Mapping[str, Handler] | None = None,
) -> AsyncIterator[Organism]:
    """Start an organism for a test and stop it afterwards.

    ``source`` is an `Organism` or the path of an ``organism.yaml``. With ``in_memory`` (the
    default) a file's backend is replaced by the memory backend, so tests need no server.

    ``replace`` maps listener names to handlers that stand in for theirs, typically a `Fake`:
    the listener keeps its name, payload class, peers and settings, and only its handler
    changes. A stand-in runs in the test's process, on the event loop, even for a
    ``cpu_bound`` listener (it is an object of the test, which a worker process could not
    import). It works with a path only: an `Organism` holds its handlers already, so build it
    with the stand-in instead (``dataclasses.replace(listener, handler=fake)``).

    Raises:
        UsageError: ``replace`` names a listener the file does not declare (with the closest
            name), gives one something that cannot be called as ``handler(payload, metadata)``,
            or comes with an `Organism`.
        ConfigError: the file's problems (see `Organism.from_yaml`).
    """
    if isinstance(source, Organism):
        if replace:
            raise UsageError(
                f"run_organism(replace=...) needs the path of an organism.yaml; organism "
                f"{source.name!r} is built already and holds its handlers: pass its file's "
                f"path, or build it with the stand-in as the listener's handler "
                f"(dataclasses.replace(listener, handler=fake))"
            )
        org = source
    else:
        config = load_config(source)
        if in_memory:  # keep the file's TTL and history settings, drop the server
            config = dataclasses.replace(
                config, backend=dataclasses.replace(config.backend, type="memory")
            )
        org = _organism_with(config, replace or {})
    async with org:
        yield org


def _organism_with(config: OrganismConfig, replace: Mapping[str, Handler]) -> Organism:
    """`Organism.from_config`, with the handlers of the listeners ``replace`` names swapped.

    Raises:
        UsageError: every problem of ``replace``, at once.
    """
    if not replace:
        return Organism.from_config(config)
    _check_replacements(config, replace)
    listeners = [
        dataclasses.replace(listener, handler=replace[listener.name], cpu_bound=False)
        if listener.name in replace
        else listener
        for listener in load_organism(config)
    ]
    # as Organism.from_config builds it (a test pins that the two agree)
    return Organism(
        listeners,
        name=config.name,
        backend=config.backend,
        process_pool=config.process_pool,
        **values_of(OrganismSettings, config),
    )


def _check_replacements(config: OrganismConfig, replace: object) -> None:
    if not isinstance(replace, Mapping):
        raise UsageError(
            f"run_organism(replace=...) takes a mapping of listener names to handlers, "
            f"such as {{'lookup': Fake()}}, not {type(replace).__name__}"
        )
    names = [listener.name for listener in config.listeners]
    where = f"organism {config.name!r} ({config.file})"
    problems: list[str] = []
    for name, handler in replace.items():
        if name not in names:
            hint = did_you_mean(str(name), names) or f"; its listeners: {', '.join(names)}"
            problems.append(f"{where} has no listener named {name!r}{hint}")
        elif not callable(handler):
            problems.append(
                f"the stand-in for {name!r} is not callable (it is of type "
                f"{type(handler).__name__}); give a handler function or a Fake"
            )
        elif problem := handler_signature_problem(handler):
            problems.append(f"the stand-in for {name!r}: {problem}")
    if len(problems) == 1:
        raise UsageError(f"run_organism(replace=...): {problems[0]}")
    if problems:
        raise UsageError("run_organism(replace=...):\n" + "\n".join(f"  {p}" for p in problems))


async def drain(org: Organism, timeout: float = 5.0) -> None:
    """Wait until no conversation is open.

    Raises:
        TimeoutError: conversations were still open after ``timeout`` seconds.
    """
    with anyio.fail_after(timeout):
        await org.wait_idle()
