"""Handlers for the process-pool tests: module-level, so worker processes import them by path."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, Optional

from tests.pool_tasks import raise_kind, wait_for_release
from xml_pipeline import HandlerMetadata, HandlerResponse, payload


@payload
@dataclass
class Job:
    mode: str = "ok"
    n: int = 0
    marker: str = ""


@payload
@dataclass
class Result:
    pid: int
    value: int = 0


@payload
@dataclass
class Seen:
    """What a cpu_bound handler saw: pid, loop id and the history tags."""

    pid: int
    loop: int = 0
    tags: list[str] = field(default_factory=list)


def crunch(msg: Job | Result, meta: HandlerMetadata) -> object:
    """Sync handler covering every pool scenario, chosen by ``mode``."""
    if isinstance(msg, Result):  # an answer from the inline peer: pass it up
        return HandlerResponse.respond(msg)
    if msg.mode == "always-crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if msg.mode == "crash-once" and not Path(msg.marker).exists():
        Path(msg.marker).write_text("crashed once")
        os.kill(os.getpid(), signal.SIGKILL)
    if msg.mode == "hang":
        time.sleep(60)
    if msg.mode == "count":  # an innocent call: count the run, then wait to be released
        with open(msg.marker, "a") as runs:
            runs.write("run\n")
        wait_for_release(msg.marker)
    if msg.mode.startswith("raise:"):
        raise_kind(msg.mode.removeprefix("raise:"))
    if msg.mode == "sleep":
        time.sleep(msg.n / 1000)
    if msg.mode == "garbage":
        return "<Result><pid>1</pid></Result>"
    if msg.mode == "bad-field":
        return HandlerResponse.respond(Result(pid="not a number"))  # type: ignore[arg-type]
    if msg.mode == "call-peer":
        return HandlerResponse(Job(mode="ok", n=msg.n), to="helper")
    if msg.mode == "call-stranger":  # quick is a listener, but not among crunch's peers
        return HandlerResponse(Job(mode="ok", n=msg.n), to="quick")
    total = sum(i * i for i in range(msg.n))
    return HandlerResponse.respond(Result(pid=os.getpid(), value=total))


async def looper(msg: Job, meta: HandlerMetadata) -> HandlerResponse:
    """Async handler: reports which event loop ran it, and what history it was given."""
    await asyncio.sleep(0)
    history = await meta.history()
    loop = id(asyncio.get_running_loop())
    return HandlerResponse.respond(
        Seen(
            pid=os.getpid(), loop=loop, tags=[f"{h.sender}>{h.to}:{h.payload_tag}" for h in history]
        )
    )


async def helper(msg: Job, meta: HandlerMetadata) -> HandlerResponse:
    """Inline peer of the cpu_bound listener."""
    return HandlerResponse.respond(Result(pid=os.getpid(), value=msg.n * 2))


async def front(msg: Job | Seen, meta: HandlerMetadata) -> HandlerResponse:
    """Inline front that calls the async cpu_bound looper (so history has hops)."""
    if isinstance(msg, Job):
        return HandlerResponse(msg, to="looper")
    return HandlerResponse.respond(msg)


async def quick(msg: Job, meta: HandlerMetadata) -> HandlerResponse:
    """Inline listener used to check latency while the pool is saturated."""
    return HandlerResponse.respond(Result(pid=os.getpid(), value=msg.n))


@payload
@dataclass
class Bulk:
    """A payload as large as a test needs: many list items, or one long text."""

    items: list[int] = field(default_factory=list)
    text: str = ""


def bulk_echo(msg: Bulk, meta: HandlerMetadata) -> HandlerResponse:
    """Answer with what arrived, plus as many items again (answers may outgrow requests)."""
    return HandlerResponse.respond(Bulk(items=msg.items + msg.items, text=msg.text + msg.text))


def _nested_classes(depth: int) -> list[type]:
    """``Level1`` .. ``Level<depth>``, each holding the one below: ``depth`` levels of nested
    elements. Module-level names, so a worker imports them by path like any payload class."""
    levels: list[type] = []
    below: type | None = None
    for i in range(1, depth + 1):
        fields: list[Any] = [("value", int, field(default=0))]
        if below is not None:
            fields.append(("inner", Optional[below], field(default=None)))  # noqa: UP045
        cls = make_dataclass(f"Level{i}", fields, namespace={"__module__": __name__})
        globals()[cls.__name__] = cls
        levels.append(cls)
        below = cls
    payload(levels[-1])  # the top one travels; the ones below are its nested fields
    return levels


LEVELS = _nested_classes(80)  # past the 64 levels XML from outside may nest


def nest(depth: int) -> Any:
    """A ``Level<depth>`` object nested ``depth`` deep, values counting down."""
    obj: Any = None
    for i in range(depth):
        obj = LEVELS[i](value=i) if obj is None else LEVELS[i](value=i, inner=obj)
    return obj


def nested_echo(msg: Any, meta: HandlerMetadata) -> HandlerResponse:
    """Answer with the nested object that arrived."""
    return HandlerResponse.respond(msg)


async def inline(msg: Any, meta: HandlerMetadata) -> object:
    """The same handlers as inline listeners: the sync handler named by ``meta.own_name``."""
    return HANDLERS[meta.own_name.partition("-")[0]](msg, meta)


HANDLERS = {"bulk": bulk_echo, "nested": nested_echo}


async def araise(msg: Job, meta: HandlerMetadata) -> HandlerResponse:
    """Async handler: raises what ``raise:<kind>`` names, else answers with ``n``."""
    await asyncio.sleep(0)
    if msg.mode.startswith("raise:"):
        raise_kind(msg.mode.removeprefix("raise:"))
    return HandlerResponse.respond(Result(pid=os.getpid(), value=msg.n))


def fails_first_attempt(msg: Job, meta: HandlerMetadata) -> HandlerResponse:
    """Fails on a first attempt, answers the attempt number on the next (for retry tests)."""
    if meta.attempt == 1:
        raise ConnectionError("the peer hung up")
    return HandlerResponse.respond(Result(pid=os.getpid(), value=meta.attempt))


def chatty(msg: Job, meta: HandlerMetadata) -> HandlerResponse:
    """Prints ``msg.n`` lines to stdout and one to stderr, reports progress, then waits for
    ``msg.marker`` to exist (a file the test creates), or answers at once without a marker."""
    import sys

    for i in range(msg.n):
        print(f"out {i}")
    print("err line", file=sys.stderr)
    meta.log("logged line")
    meta.progress("halfway")
    deadline = time.monotonic() + 30
    while msg.marker and not Path(msg.marker).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    print("done", end="")  # no newline: still a line of output
    return HandlerResponse.respond(Result(pid=os.getpid(), value=msg.n))
