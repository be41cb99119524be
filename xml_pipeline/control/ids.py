"""Ids as people type them: a unique prefix of a conversation id or a run id, git-style.

`organism ps` cuts conversation ids to 12 characters and the console shows them short; the
control plane takes such a prefix wherever it takes an id (``/api/runs/{id}``, its ``cancel``,
``/api/conversations/{id}/cancel``, ``/api/trace/{id}``):

- a conversation id: the whole id, or a prefix of at least `MIN_PREFIX` hex digits naming one
  conversation among those the organism lists (the runs of every process sharing its backend,
  open or kept finished) or keeps a trace of;
- a run id (``r12@3fa9c1``): the whole id, a prefix of it (``r12@3f``), or the run number alone
  (``r12``): the run of the process serving the control plane, else the one other process's.

A prefix naming several is `Ambiguous` (HTTP 400, the candidates listed). A run id naming none
is `Missing` (404, one message for every route); a conversation id naming none is passed on
as given, for the organism to answer 404 saying what it keeps.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from xml_pipeline._errors import UsageError
from xml_pipeline.control.source import Missing, OrganismSource

__all__ = ["MIN_PREFIX", "Ambiguous", "resolve_conversation", "resolve_run"]

MIN_PREFIX = 8  # hex digits of a conversation id prefix (32 bits: a clash among live ids is rare)
_SHOWN = 10  # candidates named in an Ambiguous message


class Ambiguous(ValueError):
    """A prefix that names more than one id (HTTP 400): give more of it."""

    def __init__(self, kind: str, id: str, candidates: list[str]) -> None:
        shown = ", ".join(candidates[:_SHOWN])
        more = f" and {len(candidates) - _SHOWN} more" if len(candidates) > _SHOWN else ""
        message = (
            f"{id!r} is the start of {len(candidates)} {kind} ids: {shown}{more}; "
            "give more of the id"
        )
        super().__init__(message)
        self.kind, self.id, self.candidates, self.message = kind, id, candidates, message


def _one(kind: str, given: str, found: Iterable[str]) -> str:
    candidates = sorted(set(found))
    if len(candidates) > 1:
        raise Ambiguous(kind, given, candidates)
    return candidates[0] if candidates else given


async def resolve_run(source: OrganismSource, given: str) -> str:
    """The run id ``given`` names.

    Raises:
        Ambiguous: it names runs of several processes, or starts several run ids.
        Missing: it names no run listed (one message for every route that takes a run id).
    """
    ids = [run.run_id for run in await source.runs()]
    if given in ids:
        return given
    here = f"{given}@{_process(source)}"
    if here in ids:  # the number alone: this process's run first, as `Organism.cancel_run`
        return here
    if "@" in given:
        found = _one("run", given, (i for i in ids if i.startswith(given)))
    else:
        found = _one("run", given, (i for i in ids if i.partition("@")[0] == given))
    if found not in ids:
        raise Missing(
            "run",
            given,
            f"no run {given!r} in organism {source.name!r} or the processes sharing its "
            "backend; list them with GET /api/runs or organism ps",
        )
    return found


def _process(source: OrganismSource) -> str:
    """The instance id of the organism process serving the control plane ("" if stopped)."""
    try:
        return str(getattr(source.organism, "process", ""))
    except UsageError:  # stopped: its runs cannot be listed either
        return ""


async def resolve_conversation(source: OrganismSource, given: str) -> str:
    """The conversation id ``given`` names (itself when it names none, or is shorter than
    `MIN_PREFIX` or not hex: the organism answers 404).

    Raises:
        Ambiguous: it starts several conversation ids.
    """
    if len(given) < MIN_PREFIX or not set(given) <= set(string.hexdigits):
        return given
    known = {run.conversation for run in await source.runs()}
    collector = source.organism.metrics
    if collector is not None:
        known.update(collector.traced_conversations())
    if given in known:
        return given
    return _one("conversation", given, (c for c in known if c.startswith(given.lower())))
