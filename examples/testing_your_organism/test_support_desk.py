"""Tests of the support desk, written as in a project of your own.

They are plain ``async def`` functions with no marker: the pytest plugin installed with
xml-pipeline runs them on asyncio. Each starts the organism from its file with
``run_organism``, on the memory backend; ``replace=`` stands a `Fake` in for the classifier or
the pager, so no model is called and nobody is paged.
"""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from handlers import Category, Classify, Page, Paged, Routed, Ticket

from xml_pipeline import HandlerMetadata, Organism
from xml_pipeline.testing import Fake, capture, run_organism

ORGANISM = Path(__file__).parent / "organism.yaml"
OUTAGE = Ticket(customer="acme", text="Site down since 9:00, customers cannot log in")


async def test_an_urgent_ticket_pages_on_call() -> None:
    pager = Fake(answer=Paged(page_id="page-1"))
    async with run_organism(ORGANISM, replace={"pager": pager}) as org:
        with capture(org) as seen:
            routed = await org.request("desk", OUTAGE)
    assert routed == Routed(queue="support", paged=True)
    # what the fake received, and from whom
    pager.assert_called_once_with(Page(customer="acme", summary=OUTAGE.text[:60]))
    assert pager.metas[0].from_id == "desk"
    # every payload delivered to a handler, in order: the calls and the answers awaited
    assert seen.route() == [
        ("_external", "desk"),
        ("desk", "classifier"),
        ("classifier", "desk"),
        ("desk", "pager"),
        ("pager", "desk"),
    ]
    assert seen.payloads(Category) == [Category(queue="support", urgent=True)]


async def test_a_routine_ticket_pages_nobody() -> None:
    pager = Fake()  # answers nothing: a call to it would fail with no_answer
    async with run_organism(ORGANISM, replace={"pager": pager}) as org:
        routed = await org.request("desk", Ticket(customer="acme", text="How do I export?"))
    assert routed == Routed(queue="support", paged=False)
    pager.assert_not_called()


async def test_a_failing_pager_does_not_lose_the_ticket() -> None:
    def pager_down(page: Page, meta: HandlerMetadata) -> None:
        raise ConnectionError("the paging service is unreachable")

    pager = Fake(pager_down)
    async with run_organism(ORGANISM, replace={"pager": pager}) as org:
        routed = await org.request("desk", OUTAGE)
    assert routed == Routed(
        queue="support", paged=False, note="paging failed (handler_error); page on-call by hand"
    )
    assert len(pager.calls) == 1


async def test_the_desk_routes_where_the_classifier_says() -> None:
    """The model is faked too: the desk's own logic is what is tested."""
    classifier = Fake(answer=Category(queue="billing", urgent=True))
    pager = Fake(answer=Paged(page_id="page-2"))
    fakes = {"classifier": classifier, "pager": pager}
    async with run_organism(ORGANISM, replace=fakes) as org:
        routed = await org.request("desk", Ticket(customer="initech", text="Hello?"))
    assert routed == Routed(queue="billing", paged=True)
    classifier.assert_called_once_with(Classify(text="Hello?"))
    pager.assert_called_once_with(Page(customer="initech", summary="Hello?"))


@pytest.fixture
async def desk() -> AsyncIterator[Organism]:  # an async fixture needs no marker either
    async with run_organism(ORGANISM, replace={"pager": Fake(answer=Paged(page_id="p"))}) as org:
        yield org


@pytest.mark.parametrize(
    ("text", "queue", "paged"),
    [
        ("Please refund invoice 42", "billing", False),
        ("Invoice page is down", "billing", True),
        ("Where is the export button?", "support", False),
    ],
)
async def test_the_real_classifier_picks_the_queue(
    desk: Organism, text: str, queue: str, paged: bool
) -> None:
    routed = await desk.request("desk", Ticket(customer="acme", text=text))
    assert (routed.queue, routed.paged) == (queue, paged)
