"""Observing an organism through its hooks: typed events, in order, free when nobody listens."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from xml_pipeline import (
    ConversationEvent,
    DeliveryError,
    Event,
    HandlerMetadata,
    HandlerResponse,
    HopEvent,
    Listener,
    Organism,
    payload,
)

pytestmark = pytest.mark.anyio


@payload
@dataclass
class Ask:
    text: str = ""


async def front(msg: Ask, meta: HandlerMetadata) -> HandlerResponse:
    if meta.from_id == "_external":
        return HandlerResponse(msg, to="back")
    return HandlerResponse.respond(msg)


async def back(msg: Ask, meta: HandlerMetadata) -> HandlerResponse:
    if msg.text == "fail":
        raise ValueError("no")
    return HandlerResponse.respond(Ask(text=msg.text.upper()))


def organism() -> Organism:
    return Organism([Listener("front", Ask, front, peers=("back",)), Listener("back", Ask, back)])


def brief(event: Event) -> tuple[str, ...]:
    if isinstance(event, HopEvent):
        return (event.kind, event.listener, str(event.outcome))
    return (event.kind, event.listener, str(event.outcome))


async def test_every_hop_and_conversation_is_seen_in_order_with_its_outcome() -> None:
    seen: list[Event] = []
    async with organism() as org:
        unsubscribe = org.hooks.subscribe(seen.append)
        await org.request("front", Ask(text="hi"), timeout=5)
        with pytest.raises(DeliveryError):
            await org.request("front", Ask(text="fail"), timeout=5)
        unsubscribe()
        await org.request("front", Ask(text="unseen"), timeout=5)
    assert [brief(e) for e in seen] == [
        ("opened", "front", "None"),
        ("started", "front", "None"),
        ("finished", "front", "None"),
        ("started", "back", "None"),
        ("finished", "back", "None"),
        ("started", "front", "None"),
        ("ended", "front", "None"),
        ("finished", "front", "None"),
        ("opened", "front", "None"),
        ("started", "front", "None"),
        ("finished", "front", "None"),
        ("started", "back", "None"),
        ("finished", "back", "handler_error"),
        ("ended", "front", "handler_error"),
    ]
    hops = [e for e in seen if isinstance(e, HopEvent)]
    assert all(e.duration is not None and e.duration >= 0 for e in hops if e.kind == "finished")
    conversations = {e.conversation for e in seen}
    assert len(conversations) == 2
    assert all(isinstance(e, HopEvent | ConversationEvent) for e in seen)


async def test_a_subscriber_that_raises_is_dropped_and_the_hop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    def broken(event: Event) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("observer bug")

    async with organism() as org:
        org.hooks.subscribe(broken)
        assert await org.request("front", Ask(text="x"), timeout=5) == Ask(text="X")
        assert not org.hooks.active
    assert calls == 1
    assert "a hook subscriber raised" in caplog.text


def test_nobody_listening_means_inactive_hooks() -> None:
    org = organism()
    assert not org.hooks.active
    unsubscribe = org.hooks.subscribe(lambda event: None)
    assert org.hooks.active
    unsubscribe()
    unsubscribe()
    assert not org.hooks.active


async def test_an_answer_awaited_with_meta_call_is_seen_as_answered_on_the_callers_thread() -> None:
    async def caller(msg: Ask, meta: HandlerMetadata) -> HandlerResponse:
        answer = await meta.call("back", msg)
        return HandlerResponse.respond(answer)

    seen: list[Event] = []
    org = Organism([Listener("front", Ask, caller, peers=("back",)), Listener("back", Ask, back)])
    async with org:
        org.hooks.subscribe(seen.append)
        await org.request("front", Ask(text="hi"), timeout=5)
    assert [brief(e) for e in seen] == [
        ("opened", "front", "None"),
        ("started", "front", "None"),
        ("started", "back", "None"),
        ("answered", "front", "None"),  # delivered as back's step ends, before its finish
        ("finished", "back", "None"),
        ("ended", "front", "None"),
        ("finished", "front", "None"),
    ]
    hops = [e for e in seen if isinstance(e, HopEvent)]
    started, answered = hops[0], next(e for e in hops if e.kind == "answered")
    assert (answered.sender, answered.payload) == ("back", Ask(text="HI"))
    assert answered.thread == started.thread  # the awaiting handler's own thread


async def test_a_hop_tally_counts_finished_hops_and_hops_false_subscribers_see_no_hop_events() -> (
    None
):
    tallied: list[tuple[str, str, int, str | None]] = []
    second: list[str] = []
    seen: list[Event] = []
    async with organism() as org:
        hooks = org.hooks
        stop_events = hooks.subscribe(seen.append, hops=False)
        stop = hooks.count_hops(
            lambda name, by, attempt, _, out: tallied.append((name, by, attempt, out))
        )
        assert hooks.active and not hooks.hop_events and not hooks.starters
        stop_second = hooks.count_hops(lambda name, *_: second.append(name))  # both count
        await org.request("front", Ask(text="hi"), timeout=5)
        stop_second()
        stop_second()  # twice does nothing
        with pytest.raises(DeliveryError):
            await org.request("front", Ask(text="fail"), timeout=5)
        stop()
        stop_events()
        assert not hooks.active
    assert second == ["front", "back", "front"]  # the first request's hops: stopped after it
    assert tallied == [
        ("front", "_external", 1, None),
        ("back", "front", 1, None),
        ("front", "back", 1, None),
        ("front", "_external", 1, None),
        ("back", "front", 1, "handler_error"),
    ]
    assert [brief(e) for e in seen] == [
        ("opened", "front", "None"),
        ("ended", "front", "None"),
        ("opened", "front", "None"),
        ("ended", "front", "handler_error"),
    ]


async def test_tallies_alone_make_the_pump_build_no_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a tally and no subscriber, the hooks count but want no event: no `HopEvent` or
    `ConversationEvent` is built (the pump's constructors are watched), and a subscriber that
    comes later gets every event from then on."""
    from xml_pipeline._runtime import pump

    built: list[str] = []

    def watched(cls: type) -> type:
        class Watched(cls):  # type: ignore[misc,valid-type]
            def __new__(klass, *args: object, **kwargs: object) -> object:
                built.append(cls.__name__)
                return super().__new__(klass, *args, **kwargs)

        Watched.__name__ = cls.__name__
        return Watched

    def new_event(cls: type, fields: tuple[object, ...]) -> object:
        built.append(cls.__name__)  # the pump builds finished events with tuple.__new__
        return tuple.__new__(cls, fields)  # type: ignore[type-var]

    monkeypatch.setattr(pump, "_new_event", new_event)
    monkeypatch.setattr(pump, "HopEvent", watched(HopEvent))
    monkeypatch.setattr(pump, "ConversationEvent", watched(ConversationEvent))
    tallied: list[str] = []
    async with organism() as org:
        stop = org.hooks.count_hops(lambda name, *_: tallied.append(name))
        assert org.hooks.active and not org.hooks.events
        await org.request("front", Ask(text="hi"), timeout=5)
        assert tallied == ["front", "back", "front"] and built == []
        seen: list[Event] = []
        unsubscribe = org.hooks.subscribe(seen.append, started=False)
        await org.request("front", Ask(text="hi"), timeout=5)
        unsubscribe()
        stop()
    assert tallied == ["front", "back", "front"] * 2
    assert [brief(e) for e in seen] == [
        ("opened", "front", "None"),
        ("finished", "front", "None"),
        ("finished", "back", "None"),
        ("ended", "front", "None"),
        ("finished", "front", "None"),
    ]
    assert built.count("HopEvent") == 3 and built.count("ConversationEvent") == 2
