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


async def greet(msg: Greeting | Shout, meta: HandlerMetadata) -> HandlerResponse:
    """First hop: ask the shouter. Second hop (its answer comes back): answer our caller."""
    if isinstance(msg, Greeting):
        return HandlerResponse(Shout(text=f"hello, {msg.name}!"), to="shouter")
    return HandlerResponse.respond(Reply(message=msg.text))


async def shout(msg: Shout, meta: HandlerMetadata) -> HandlerResponse:
    """Upper-case the text and answer whoever called."""
    return HandlerResponse.respond(Shout(text=msg.text.upper()))
