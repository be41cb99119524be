"""Handlers of the hello organism."""

from __future__ import annotations

from dataclasses import dataclass

from xml_pipeline import HandlerMetadata, HandlerResponse, payload


@payload
@dataclass
class Greeting:
    """Ask for a greeting."""

    name: str


@payload
@dataclass
class Shout:
    """Text to upper-case."""

    text: str


@payload
@dataclass
class Reply:
    """The finished greeting."""

    message: str


async def greet(msg: Greeting, meta: HandlerMetadata) -> HandlerResponse:
    """Ask the shouter, await its answer, and answer our caller with it."""
    loud = await meta.call("shouter", Shout(text=f"hello, {msg.name}!"), expect=Shout)
    return HandlerResponse.respond(Reply(message=loud.text))


async def shout(msg: Shout, meta: HandlerMetadata) -> HandlerResponse:
    """Upper-case the text and answer whoever called."""
    return HandlerResponse.respond(Shout(text=msg.text.upper()))
