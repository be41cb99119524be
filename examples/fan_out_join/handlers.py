"""Handlers of the fan_out_join example: two ways of calling a peer, side by side.

``desk`` returns its call (``HandlerResponse(..., to="planner")``) and is called again with
the answer, or with an `ErrorReport` since it declares ``handles_errors``. ``planner`` awaits
its calls (``meta.call``) and runs two of them at once with ``asyncio.gather``.
"""

from __future__ import annotations

import asyncio
import operator
from dataclasses import dataclass

from xml_pipeline import DeliveryError, ErrorReport, HandlerMetadata, HandlerResponse, payload


@payload
@dataclass
class Question:
    """What the outside asks the desk: a sum to work out and a city to find."""

    expr: str
    key: str


@payload
@dataclass
class Answer:
    """The desk's answer, in words; ``detail``: what failed, when something did."""

    text: str
    detail: str | None = None


@payload
@dataclass
class Plan:
    """What the desk asks the planner."""

    expr: str
    key: str


@payload
@dataclass
class PlanAnswer:
    """The planner's joined answer; ``note`` says what went wrong on the way, if anything."""

    expr: str
    value: float
    found: str
    note: str = ""


@payload
@dataclass
class Calculate:
    """A sum for the calculator: ``a op b``."""

    expression: str


@payload
@dataclass
class Total:
    """The calculator's answer."""

    value: float


@payload
@dataclass
class Lookup:
    """A key for the lookup."""

    key: str


@payload
@dataclass
class City:
    """The lookup's answer."""

    name: str


CITIES = {"oslo": "Oslo", "lima": "Lima", "kyiv": "Kyiv"}
OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


async def desk(msg: Question | PlanAnswer | ErrorReport, meta: HandlerMetadata) -> HandlerResponse:
    """The classic style: return the call; the answer (or the failure) calls us again."""
    if isinstance(msg, Question):
        return HandlerResponse(Plan(expr=msg.expr, key=msg.key), to="planner")
    if isinstance(msg, ErrorReport):  # the planner failed: handles_errors brings it here
        text = f"sorry, no answer: the {msg.listener} failed ({msg.reason})"
        return HandlerResponse.respond(Answer(text=text, detail=msg.message))
    text = f"{msg.expr} = {msg.value:g}, and the city is {msg.found}"
    return HandlerResponse.respond(Answer(text=f"{text} ({msg.note})" if msg.note else text))


async def plan(msg: Plan, meta: HandlerMetadata) -> HandlerResponse:
    """The awaiting style: ask both peers at once, wait for both answers, answer once.

    A failed lookup is caught (in `find_city`) and answered around; a failed calculation is
    not: it raises `DeliveryError` out of this handler, which then fails with
    ``handler_error``, and the desk gets that as an `ErrorReport`.
    """
    total, (found, note) = await asyncio.gather(
        meta.call("calculator", Calculate(expression=msg.expr)),  # returns the answer payload
        find_city(msg.key, meta),
    )
    return HandlerResponse.respond(
        PlanAnswer(expr=msg.expr, value=total.value, found=found, note=note)
    )


async def find_city(key: str, meta: HandlerMetadata) -> tuple[str, str]:
    """The city under ``key``, or ``"unknown"`` and why the lookup failed."""
    try:
        city = await meta.call("lookup", Lookup(key=key), timeout=5)
    except DeliveryError as err:  # err.reason: one code of xml_pipeline.Reason
        return "unknown", f"the lookup failed with {err.reason}"
    return str(city.name), ""


async def calculate(msg: Calculate, meta: HandlerMetadata) -> HandlerResponse:
    """Work out ``a op b``; dividing by zero raises, like any handler bug would."""
    for symbol, apply in OPERATORS.items():
        left, found, right = msg.expression.partition(symbol)
        if found:
            value = apply(float(left), float(right))  # ZeroDivisionError for x/0
            return HandlerResponse.respond(Total(value=value))
    raise ValueError(f"{msg.expression!r} is not 'a op b' with op one of + - * /")


async def lookup(msg: Lookup, meta: HandlerMetadata) -> HandlerResponse:
    """Find the city under the key; an unknown key raises."""
    await asyncio.sleep(0.01)  # a little I/O: the calculator answers first, which is fine
    if msg.key not in CITIES:
        raise LookupError(f"no city under the key {msg.key!r}")
    return HandlerResponse.respond(City(name=CITIES[msg.key]))
