"""An organism that fans out, and sinks that fail on purpose, for the metrics tests.

``plan`` calls ``left`` and ``right`` (return style, fan-out) and answers once both answered;
``left`` fails when the text is ``"fail"``. The sinks are implementations of the `Sink` seam
with the failure modes the collector must survive: failing for a while, failing for good,
never returning.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from xml_pipeline import HandlerMetadata, HandlerResponse, Listener, Organism, payload
from xml_pipeline.metrics.records import Batch, Row


@payload
@dataclass
class Plan:
    text: str


@payload
@dataclass
class Part:
    text: str
    side: str = ""


async def plan(
    msg: Plan | Part, meta: HandlerMetadata
) -> HandlerResponse | list[HandlerResponse] | None:
    if isinstance(msg, Plan):
        return [
            HandlerResponse(Part(text=msg.text, side="left"), to="left"),
            HandlerResponse(Part(text=msg.text, side="right"), to="right"),
        ]
    seen = [e for e in await meta.history() if e.payload_tag == "Part" and e.to == "plan"]
    if len(seen) < 2:
        return None  # the first answer: wait for the other one
    return HandlerResponse.respond(Plan(text="done"))


async def left(msg: Part, meta: HandlerMetadata) -> HandlerResponse:
    if msg.text == "fail":
        raise ValueError("left refuses")
    return HandlerResponse.respond(Part(text=msg.text.upper(), side="left"))


async def right(msg: Part, meta: HandlerMetadata) -> HandlerResponse:
    return HandlerResponse.respond(Part(text=msg.text.lower(), side="right"))


def organism(**options: Any) -> Organism:
    options.setdefault("name", "plan-org")
    return Organism(
        [
            Listener("plan", Plan, plan, peers=("left", "right"), handles_errors=False),
            Listener("left", Part, left),
            Listener("right", Part, right),
        ],
        **options,
    )


class ListSink:
    """Keeps every row it is given; fails while ``failing()`` says so."""

    aggregates = False

    def __init__(
        self,
        name: str = "list",
        *,
        fail_for: float = 0.0,
        fail_always: bool = False,
        retry_seconds: float = 30.0,
        required: bool = True,
        start_failures: int = 0,
    ) -> None:
        self.name = name
        self.rows: list[Row] = []
        self.retry_seconds = retry_seconds
        self.required = required
        self.writes = 0
        self._fail_for = fail_for
        self._fail_always = fail_always
        self._until: float | None = None
        self._start_failures = start_failures
        self.started = False

    @property
    def target(self) -> str:
        return f"memory:{self.name}"

    async def start(self) -> None:
        if self._start_failures:
            self._start_failures -= 1
            raise ConnectionError("the store is not up yet")
        self.started = True

    async def write(self, batch: Batch) -> None:
        self.writes += 1
        now = asyncio.get_running_loop().time()
        if self._until is None:
            self._until = now + self._fail_for
        if self._fail_always or now < self._until:
            raise ConnectionError("the store is down")
        assert batch.rows is not None
        self.rows.extend(batch.rows)

    async def aclose(self) -> None:
        pass

    def kinds(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for row in self.rows:
            found[row[0]] = found.get(row[0], 0) + 1
        return found


class BlockedSink:
    """A sink whose writes never return."""

    aggregates = False
    name = "blocked"
    target = "nowhere"

    def __init__(self) -> None:
        self.writes = 0

    async def start(self) -> None:
        pass

    async def write(self, batch: Batch) -> None:
        self.writes += 1
        await asyncio.Event().wait()  # never set

    async def aclose(self) -> None:
        pass
