"""Handlers of the testing_your_organism example: a support desk with two outside services.

``desk`` asks the ``classifier`` which queue a ticket goes to and whether it is urgent, and
pages the on-call engineer through ``pager`` when it is. The classifier stands for a model
call and the pager for a paging service: slow, costly or noisy in real life, they are what
tests replace with fakes (``test_support_desk.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from xml_pipeline import DeliveryError, HandlerMetadata, HandlerResponse, payload

log = logging.getLogger(__name__)


@payload
@dataclass
class Ticket:
    """A customer's ticket, as it comes in."""

    customer: str
    text: str


@payload
@dataclass
class Routed:
    """The desk's answer: where the ticket went, and whether someone was paged."""

    queue: str
    paged: bool
    note: str = ""


@payload
@dataclass
class Classify:
    """What the desk asks the classifier."""

    text: str


@payload
@dataclass
class Category:
    """The classifier's answer."""

    queue: str
    urgent: bool


@payload
@dataclass
class Page:
    """What the desk asks the pager: wake someone up about this."""

    customer: str
    summary: str


@payload
@dataclass
class Paged:
    """The pager's answer: the id of the page it raised."""

    page_id: str


async def triage(msg: Ticket, meta: HandlerMetadata) -> HandlerResponse:
    """Route a ticket to its queue; page on-call when it is urgent. A pager that fails does
    not lose the ticket: it is routed anyway, with a note."""
    category = await meta.call("classifier", Classify(text=msg.text))
    if not category.urgent:
        return HandlerResponse.respond(Routed(queue=category.queue, paged=False))
    page = Page(customer=msg.customer, summary=msg.text[:60])
    try:
        await meta.call("pager", page, timeout=5)
    except DeliveryError as err:
        note = f"paging failed ({err.reason}); page on-call by hand"
        return HandlerResponse.respond(Routed(queue=category.queue, paged=False, note=note))
    return HandlerResponse.respond(Routed(queue=category.queue, paged=True))


async def classify(msg: Classify, meta: HandlerMetadata) -> HandlerResponse:
    """Stands for a model call: keyword rules here."""
    text = msg.text.lower()
    queue = "billing" if any(word in text for word in ("invoice", "refund")) else "support"
    urgent = any(word in text for word in ("down", "outage", "urgent"))
    return HandlerResponse.respond(Category(queue=queue, urgent=urgent))


async def page(msg: Page, meta: HandlerMetadata) -> HandlerResponse:
    """Stands for a paging service: here it logs the page; in real life it wakes someone."""
    log.warning("paging on-call about %s: %s", msg.customer, msg.summary)
    return HandlerResponse.respond(Paged(page_id=f"page-{meta.thread_id[:8]}"))
