"""A listener whose runs take as long as asked, writing output lines: work to watch and stop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from xml_pipeline import HandlerMetadata, HandlerResponse, payload


@payload
@dataclass
class Job:
    """Run for ``seconds``, writing ``lines`` output lines first; then fail if ``fail``."""

    seconds: float
    lines: int = 0
    fail: bool = False


@payload
@dataclass
class Done:
    """The job's answer."""

    lines: int


async def work(msg: Job, meta: HandlerMetadata) -> HandlerResponse:
    """Write the lines, say how far it got, then sleep ``seconds``."""
    for i in range(msg.lines):
        meta.log(f"line {i + 1} of {msg.lines}")
    meta.progress(f"wrote {msg.lines} lines")
    await asyncio.sleep(msg.seconds)
    if msg.fail:
        raise RuntimeError("asked to fail")
    return HandlerResponse.respond(Done(lines=msg.lines))


async def boss(msg: Job, meta: HandlerMetadata) -> HandlerResponse:
    """Hand the job to the worker and pass on its answer (an edge for the graph)."""
    done = await meta.call("worker", msg, expect=Done)
    return HandlerResponse.respond(done)
