"""Module-level handlers for the fault tests, so that worker processes can import them."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from xml_pipeline import HandlerMetadata, HandlerResponse, payload


@payload
@dataclass
class Work:
    seconds: float = 0.0
    marker: str = ""  # a file the worker touches when it starts and when it finishes


@payload
@dataclass
class Done:
    pid: int


def sleepy(msg: Work, meta: HandlerMetadata) -> HandlerResponse:
    """Sleeps ``seconds`` in a worker; leaves ``marker.started``/``marker.finished`` behind."""
    if msg.marker:
        Path(msg.marker + ".started").write_text(str(os.getpid()))
    time.sleep(msg.seconds)
    if msg.marker:
        Path(msg.marker + ".finished").write_text(str(os.getpid()))
    return HandlerResponse.respond(Done(pid=os.getpid()))


def fails(msg: Work, meta: HandlerMetadata) -> None:
    """Raises from a library call, as handlers do (the line that called it is the user's)."""
    import json

    json.loads(msg.marker or "{")  # the line the error names


async def calls_a_peer(msg: Work, meta: HandlerMetadata) -> HandlerResponse:
    """Tries meta.call, which a cpu_bound handler cannot use."""
    answer = await meta.call("other", Work())
    return HandlerResponse.respond(answer)
