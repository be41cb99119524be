"""Payload classes and handlers named with non-ASCII letters, importable by pool workers.

The classes live at module level (a ``cpu_bound`` worker imports them by ``module:qualname``)
and the CLI test copies this file into an organism folder as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xml_pipeline import HandlerMetadata, HandlerResponse, payload


@payload
@dataclass
class Café:
    """Latin letters with accents, in the class and field names."""

    prénom: str
    größe: int
    ça_va: bool = True


@payload
@dataclass
class Ωμέγα:
    """Greek."""

    λέξη: str
    αριθμοί: list[int] = field(default_factory=list)


@payload
@dataclass
class 注文:
    """CJK, with a Cyrillic field name."""

    品名: str
    количество: int = 1


@payload
@dataclass
class Écho:
    """What the handler that reads the history answers with."""

    étiquettes: list[str]  # "sender>to:payload tag" of each history entry
    charges: list[str]  # the payload XML of each entry, as text


async def devant(msg: object, meta: HandlerMetadata) -> HandlerResponse:
    """The front listener: passes a request on to ``derrière``, and its answer up."""
    if isinstance(msg, Écho):
        return HandlerResponse.respond(msg)
    return HandlerResponse(msg, to="derrière")


async def derrière(msg: object, meta: HandlerMetadata) -> HandlerResponse:
    """Answers with the conversation's history as it reads it (inline or in a worker)."""
    entries = await meta.history()
    return HandlerResponse.respond(
        Écho(
            étiquettes=[f"{e.sender}>{e.to}:{e.payload_tag}" for e in entries],
            charges=[e.payload.decode() for e in entries],
        )
    )
