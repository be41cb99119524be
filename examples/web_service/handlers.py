"""Handlers of the web_service example: a quoter that asks a catalog, and slow work.

Nothing here knows about HTTP. The app (``app.py``) turns JSON into these payloads and back
(``from_dict``, ``to_dict``), or hands a raw envelope to the organism; the listeners answer as
they would any caller.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from decimal import Decimal

from xml_pipeline import HandlerMetadata, HandlerResponse, payload


@payload
@dataclass
class QuoteRequest:
    """What a client asks the quoter: the price of ``quantity`` of ``item``."""

    item: str
    quantity: int


@payload
@dataclass
class Quote:
    """The quoter's answer. Decimals travel as strings in JSON (``"4.50"``): no digit lost."""

    item: str
    quantity: int
    unit_price: Decimal
    total: Decimal


@payload
@dataclass
class NotQuoted:
    """The quoter's answer when it cannot quote: ``why``, in words."""

    item: str
    why: str


@payload
@dataclass
class PriceQuery:
    """What the quoter asks the catalog."""

    item: str


@payload
@dataclass
class Price:
    """The catalog's answer; ``unit_price`` is ``None`` for an item it does not have."""

    item: str
    unit_price: Decimal | None = None


@payload
@dataclass
class Work:
    """Slow work: it takes ``seconds``. ``ticket`` comes back in the answer."""

    seconds: float
    ticket: int = 0


@payload
@dataclass
class Done:
    """The answer to `Work`."""

    ticket: int
    seconds: float


PRICES = {"tea": Decimal("4.50"), "coffee": Decimal("6.20"), "cocoa": Decimal("5.00")}


async def quote(msg: QuoteRequest, meta: HandlerMetadata) -> HandlerResponse:
    """Price ``msg``, asking the catalog for the unit price."""
    if msg.quantity < 1:
        return HandlerResponse.respond(
            NotQuoted(item=msg.item, why=f"the quantity must be 1 or more, not {msg.quantity}")
        )
    price = await meta.call("catalog", PriceQuery(item=msg.item), timeout=2)
    if price.unit_price is None:
        known = ", ".join(sorted(PRICES))
        why = f"the catalog has no {msg.item!r}; it has {known}"
        return HandlerResponse.respond(NotQuoted(item=msg.item, why=why))
    total = price.unit_price * msg.quantity
    return HandlerResponse.respond(
        Quote(item=msg.item, quantity=msg.quantity, unit_price=price.unit_price, total=total)
    )


async def price(msg: PriceQuery, meta: HandlerMetadata) -> HandlerResponse:
    """The unit price of an item, or none."""
    return HandlerResponse.respond(Price(item=msg.item, unit_price=PRICES.get(msg.item)))


async def work(msg: Work, meta: HandlerMetadata) -> HandlerResponse:
    """Stands for slow work (a model call, a long query): answers after ``msg.seconds``."""
    await asyncio.sleep(msg.seconds)
    return HandlerResponse.respond(Done(ticket=msg.ticket, seconds=msg.seconds))
