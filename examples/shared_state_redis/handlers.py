"""Handlers of the shared_state_redis example: a desk and a worker that says where it ran."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from xml_pipeline import HandlerMetadata, HandlerResponse, payload


@payload
@dataclass
class Task:
    """Work for the desk; ``hold``: the worker waits for `released` before it answers."""

    text: str
    hold: bool = False


@payload
@dataclass
class Done:
    """A finished task, with the id of the process whose worker did it."""

    text: str
    pid: int


# Stands in for a slow call (a model, a person, a remote service) that keeps a conversation
# open: process A's main.py sets it once process B has looked at that conversation.
released = asyncio.Event()


async def desk(msg: Task | Done, meta: HandlerMetadata) -> HandlerResponse:
    """Pass a task to the worker; pass its answer back to whoever asked."""
    if isinstance(msg, Task):
        return HandlerResponse(msg, to="worker")
    return HandlerResponse.respond(msg)


async def work(msg: Task, meta: HandlerMetadata) -> HandlerResponse:
    """Do the task, after waiting for `released` when asked to hold it."""
    if msg.hold:
        await released.wait()
    return HandlerResponse.respond(Done(text=msg.text.upper(), pid=os.getpid()))
