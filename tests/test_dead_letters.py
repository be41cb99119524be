"""`Organism.dead_letters`: list, get, replay and purge the dead-letter queue (issue 12, item 6,
and its bad input: unknown ids named, a gone listener fails its entry with no_route and keeps
it). The Redis backend's durability is tested in tests/backends/test_redis_dead_letters.py."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

import anyio
import pytest

from xml_pipeline import (
    BackoffSettings,
    DeadLetterCounts,
    DeadLetters,
    HandlerMetadata,
    HandlerResponse,
    Listener,
    Organism,
    Outcome,
    ReplayResult,
    RetrySettings,
    UsageError,
    payload,
)
from xml_pipeline.backends import MemoryBackend
from xml_pipeline.testing import drain

pytestmark = pytest.mark.anyio


@payload
@dataclass
class Job:
    text: str


@payload
@dataclass
class Other:
    text: str


class Switch:
    """A handler that fails until it is fixed."""

    def __init__(self) -> None:
        self.fixed = False

    async def __call__(self, msg: Job, meta: HandlerMetadata) -> HandlerResponse:
        if not self.fixed or msg.text == "always":
            raise RuntimeError(f"not today: {msg.text}")
        return HandlerResponse.respond(Job(text=msg.text.upper()))


async def fail_other(msg: Other, meta: HandlerMetadata) -> None:
    await anyio.sleep(30)  # past its timeout


def organism(switch: Switch, **settings: object) -> Organism:
    return Organism(
        [
            Listener("worker", Job, switch),
            Listener("other", Other, fail_other, timeout_seconds=0.05),
        ],
        name="dlq",
        **settings,  # type: ignore[arg-type]
    )


async def outcomes(org: Organism, n: int) -> dict[str, Outcome]:
    """The next ``n`` outcomes, by conversation."""
    got: dict[str, Outcome] = {}
    with anyio.fail_after(10):
        async for outcome in org.outcomes():
            got[outcome.conversation] = outcome
            if len(got) == n:
                break
    return got


async def failed(org: Organism, *texts: str) -> list[str]:
    """Send each text to the worker, wait until they failed; their conversation ids."""
    sent = [await org.send("worker", Job(text=text)) for text in texts]
    await drain(org)
    await outcomes(org, len(sent))
    return sent


async def test_a_dead_letter_is_replayed_once_its_handler_is_fixed() -> None:
    switch = Switch()
    async with organism(switch) as org:
        [sent] = await failed(org, "ada")
        [letter] = await org.dead_letters.list()
        assert (letter.conversation, letter.reason, letter.listener) == (
            sent,
            "handler_error",
            "worker",
        )
        assert await org.dead_letters.get(letter.id) == letter
        switch.fixed = True
        [result] = await org.dead_letters.replay([letter.id])
        assert result.ok and result.id == letter.id and result.conversation not in (None, sent)
        got = await outcomes(org, 1)
        assert got[result.conversation].answer == Job(text="ADA")  # type: ignore[index]
        assert await org.dead_letters.list() == []
        assert await org.dead_letters.get(letter.id) is None


async def test_a_replay_that_fails_again_comes_back_as_a_new_dead_letter() -> None:
    switch = Switch()
    async with organism(switch) as org:
        await failed(org, "always")
        [first] = await org.dead_letters.list()
        [result] = await org.dead_letters.replay()
        assert result.ok
        got = await outcomes(org, 1)
        assert got[result.conversation].error.reason == "handler_error"  # type: ignore[index,union-attr]
        [again] = await org.dead_letters.list()
        assert again.id != first.id and again.conversation == result.conversation
        assert again.envelope == first.envelope


async def test_replay_of_an_unknown_id_names_it_and_replays_nothing() -> None:
    switch = Switch()
    async with organism(switch) as org:
        await failed(org, "a")
        [letter] = await org.dead_letters.list()
        with pytest.raises(UsageError) as info:
            await org.dead_letters.replay([letter.id, "12-0", "nonsense"])
        assert "'12-0', 'nonsense'" in str(info.value) and repr(letter.id) not in str(info.value)
        assert "organism dlq list" in str(info.value)
        with pytest.raises(UsageError, match="'99-1'"):
            await org.dead_letters.purge(["99-1"])
        assert await org.dead_letters.list() == [letter]
        assert org.stats.conversations == 1  # nothing was injected


async def test_replay_to_a_listener_that_is_gone_fails_with_no_route_and_keeps_the_entry() -> None:
    """The same queue (one memory backend) read by the next version of the organism, whose
    listener was renamed."""
    backend = MemoryBackend()
    switch = Switch()
    async with organism(switch, backend=backend) as org:
        await failed(org, "kept")
    renamed = Organism([Listener("worker2", Job, switch)], name="dlq", backend=backend)
    async with renamed:
        [letter] = await renamed.dead_letters.list()
        [result] = await renamed.dead_letters.replay()
        assert (result.id, result.conversation) == (letter.id, None)
        assert result.error is not None and result.error.reason == "no_route"
        assert "'worker'" in str(result.error)
        assert await renamed.dead_letters.list() == [letter]


async def test_replay_and_purge_select_by_ids_or_by_filters() -> None:
    switch = Switch()
    async with organism(switch) as org:
        await failed(org, "a", "b")
        await org.send("other", Other(text="c"))
        await drain(org)
        a, b, c = await org.dead_letters.list()
        assert await org.dead_letters.list(reason="handler_error") == [a, b]
        assert await org.dead_letters.list(listener="other") == [c]
        assert await org.dead_letters.list(since=b.time) == [
            d for d in (a, b, c) if d.time >= b.time
        ]
        assert await org.dead_letters.list(since=datetime.fromtimestamp(b.time)) == [
            d for d in (a, b, c) if d.time >= b.time
        ]
        assert await org.dead_letters.list(limit=1) == [a]
        assert await org.dead_letters.list(since=time.time() + 60) == []
        switch.fixed = True
        results = await org.dead_letters.replay(listener="worker")
        assert [r.id for r in results] == [a.id, b.id] and all(r.ok for r in results)
        assert await org.dead_letters.list() == [c]
        assert await org.dead_letters.purge(reason="handler_error") == 0
        assert await org.dead_letters.purge([c.id]) == 1
        assert await org.dead_letters.list() == []
        await failed(org, "always", "always")
        assert await org.dead_letters.purge() == 2
        assert await org.dead_letters.counts() == DeadLetterCounts(0, 0)


async def test_beyond_max_entries_the_oldest_are_dropped_and_counted() -> None:
    async with organism(Switch(), dead_letters={"max_entries": 2}) as org:
        await failed(org, "1", "2", "3", "4", "5")
        kept = await org.dead_letters.list()
        assert [b"<text>4</text>" in kept[0].envelope, b"<text>5</text>" in kept[1].envelope] == [
            True,
            True,
        ]
        assert await org.dead_letters.counts() == DeadLetterCounts(kept=2, dropped=3)


async def test_dead_letters_are_read_before_the_start_after_the_stop_and_across_runs() -> None:
    """A memory organism keeps its queue in its process: from one run to the next."""
    switch = Switch()
    org = organism(switch)
    assert await org.dead_letters.list() == []
    async with org:
        await failed(org, "first")
    [letter] = await org.dead_letters.list()
    assert await org.dead_letters.get(letter.id) == letter
    with pytest.raises(UsageError, match="not running"):
        await org.dead_letters.replay()
    switch.fixed = True
    async with org:
        [result] = await org.dead_letters.replay()
        assert (await outcomes(org, 1))[result.conversation].answer == Job(text="FIRST")  # type: ignore[index]
    assert await org.dead_letters.list() == []
    assert not org.dead_letters.durable


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda q: q.list(reason="handler_eror"), "did you mean 'handler_error'?"),
        (lambda q: q.list(limit=0), "at least 1"),
        (lambda q: q.list(since="yesterday"), "seconds since the epoch or a datetime"),
        (lambda q: q.purge("1-0"), "did you mean ['1-0']?"),
        (lambda q: q.purge(["1-0"], reason="timeout"), "ids or filters"),
        (lambda q: q.replay(["1-0"], listener="worker"), "ids or filters"),
    ],
    ids=["reason", "limit", "since", "one-id", "ids-and-filters", "replay-ids-and-filters"],
)
async def test_bad_arguments_are_refused_with_what_to_do(call: object, words: str) -> None:
    async with organism(Switch()) as org:
        with pytest.raises(UsageError) as info:
            await call(org.dead_letters)  # type: ignore[operator]
        assert words in str(info.value)


def test_the_queue_is_not_built_directly() -> None:
    with pytest.raises(UsageError, match=r"organism\.dead_letters"):
        DeadLetters()
    assert ReplayResult("1-0").ok


async def test_a_manager_backend_of_its_own_keeps_them_only_while_it_runs() -> None:
    switch = Switch()
    org = organism(switch, backend={"type": "manager"})
    async with org:
        await failed(org, "x")
        assert [d.reason for d in await org.dead_letters.list()] == ["handler_error"]
        assert not org.dead_letters.durable
    with pytest.raises(UsageError, match="manager_address"):
        await org.dead_letters.list()


async def test_a_send_whose_retries_are_exhausted_is_kept_and_answered_after_the_fix() -> None:
    """Issue 12's test: a handler that always fails is retried, exhausted, dead-lettered with
    its attempts, and answered after a replay once it is fixed."""
    switch = Switch()
    retry = RetrySettings(attempts=3, backoff=BackoffSettings(initial_seconds=0, jitter="none"))
    org = Organism([Listener("worker", Job, switch, retry=retry)], name="retrying")
    async with org:
        [sent] = await failed(org, "ada")
        [letter] = await org.dead_letters.list()
        assert (letter.conversation, letter.attempts, letter.chain) == (sent, 3, ("worker",))
        assert "after 3 attempts" in letter.message
        switch.fixed = True
        [result] = await org.dead_letters.replay([letter.id])
        got = await outcomes(org, 1)
        assert got[result.conversation].answer == Job(text="ADA")  # type: ignore[index]
        assert await org.dead_letters.list() == []
