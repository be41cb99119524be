"""Dead letters in Redis: a stream under the organism's prefix that outlives the organism and,
with AOF, a restart of redis-server, and that the organism's processes share (issue 12)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import pytest
import redis

from tests.redis_server import RedisServer
from xml_pipeline import (
    BackendError,
    DeadLetterCounts,
    HandlerMetadata,
    HandlerResponse,
    Listener,
    Organism,
    payload,
)
from xml_pipeline.testing import drain

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@payload
@dataclass
class Job:
    text: str


class Switch:
    def __init__(self) -> None:
        self.fixed = False

    async def __call__(self, msg: Job, meta: HandlerMetadata) -> HandlerResponse:
        if not self.fixed:
            raise RuntimeError(f"down: {msg.text}")
        return HandlerResponse.respond(Job(text=msg.text.upper()))


@pytest.fixture
def aof_server() -> Iterator[RedisServer]:
    """A private redis-server of this test's own, with an append-only file."""
    with RedisServer(appendonly=True) as server:
        yield server


def organism(url: str, prefix: str, switch: Switch, **settings: object) -> Organism:
    backend = {"type": "redis", "redis_url": url, "redis_prefix": prefix}
    return Organism([Listener("worker", Job, switch)], name="durable", backend=backend, **settings)  # type: ignore[arg-type]


async def test_dead_letters_survive_a_restart_of_the_organism_and_of_redis(
    aof_server: RedisServer,
) -> None:
    prefix = f"xp-{uuid.uuid4().hex[:8]}:"
    switch = Switch()
    async with organism(aof_server.url, prefix, switch) as org:
        sent = [await org.send("worker", Job(text=t)) for t in ("a", "b", "c")]
        await drain(org)
        kept = await org.dead_letters.list()
    assert [d.conversation for d in kept] == sent
    assert org.dead_letters.durable

    # a new organism (as a new process would be) reads them
    assert await organism(aof_server.url, prefix, switch).dead_letters.list() == kept

    aof_server.stop()  # SIGKILL
    aof_server.start()  # the same port and directory: the AOF is read back
    with aof_server.client() as client:
        assert client.xlen(f"{prefix}dlq") == 3

    switch.fixed = True
    again = organism(aof_server.url, prefix, switch)
    assert await again.dead_letters.list() == kept
    assert await again.dead_letters.counts() == DeadLetterCounts(3, 0)
    async with again:
        results = await again.dead_letters.replay([kept[0].id, kept[2].id])
        assert all(r.ok for r in results)
        answers = {}
        with anyio.fail_after(10):
            async for outcome in again.outcomes():
                answers[outcome.conversation] = outcome.answer
                if len(answers) == 2:
                    break
        assert sorted(a.text for a in answers.values()) == ["A", "C"]
    aof_server.stop()
    aof_server.start()
    assert await organism(aof_server.url, prefix, switch).dead_letters.list() == [kept[1]]


async def test_the_processes_of_an_organism_share_its_dead_letters(redis_url: str) -> None:
    """Two organisms under one prefix stand for two processes of one organism: what one
    keeps, the other lists, replays and purges."""
    prefix = f"xp-{uuid.uuid4().hex[:8]}:"
    first, second = Switch(), Switch()
    second.fixed = True
    async with (
        organism(redis_url, prefix, first) as one,
        organism(redis_url, prefix, second) as two,
    ):
        await one.send("worker", Job(text="x"))
        await drain(one)
        await one.dead_letters.list()  # written (a process reads its own writes)
        [letter] = await two.dead_letters.list()
        [result] = await two.dead_letters.replay()
        assert result.ok
        with anyio.fail_after(10):
            outcome = await anext(aiter(two.outcomes()))
        assert outcome.answer == Job(text="X")
        assert await one.dead_letters.get(letter.id) is None


async def test_shutdown_keeps_what_is_left_in_redis_before_the_backend_closes(
    redis_url: str,
) -> None:
    started = anyio.Event()

    async def stuck(msg: Job, meta: HandlerMetadata) -> None:
        started.set()
        await anyio.sleep(60)

    prefix = f"xp-{uuid.uuid4().hex[:8]}:"
    backend = {"type": "redis", "redis_url": redis_url, "redis_prefix": prefix}
    org = Organism(
        [Listener("worker", Job, stuck)],
        name="stopping",
        backend=backend,  # type: ignore[arg-type]
        drain_timeout_seconds=0.1,
    )
    async with org:
        for n in range(50):
            await org.send("worker", Job(text=str(n)))
        await started.wait()
    assert org.stats.dead_lettered == 50 and org.stats.dead_letters_lost == 0
    letters = await org.dead_letters.list()
    assert len(letters) == 50 and {d.reason for d in letters} == {"shutdown"}
    assert {d.chain for d in letters} <= {("worker",)}


async def test_the_stream_is_bounded_exactly_and_drops_are_counted(redis_url: str) -> None:
    prefix = f"xp-{uuid.uuid4().hex[:8]}:"
    async with organism(redis_url, prefix, Switch(), dead_letters={"max_entries": 3}) as org:
        for n in range(5):
            await org.send("worker", Job(text=str(n)))
        await drain(org)
        assert await org.dead_letters.counts() == DeadLetterCounts(3, 2)
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.xlen(f"{prefix}dlq") == 3
        assert int(client.get(f"{prefix}dlq:dropped") or 0) == 2
        assert client.ttl(f"{prefix}dlq") == -1  # no expiry: kept until purged
    finally:
        client.close()


@pytest.mark.slow
async def test_a_dead_letter_redis_cannot_keep_is_logged_with_its_envelope_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis goes away while a conversation runs: its dead letter is tried again, then given
    up, logged at ERROR with the envelope to inject by hand, and counted."""
    release = anyio.Event()

    async def waits(msg: Job, meta: HandlerMetadata) -> None:
        await release.wait()
        raise RuntimeError("failed after Redis went away")

    with RedisServer() as server:
        backend = {"type": "redis", "redis_url": server.url, "redis_prefix": "gone:"}
        org = Organism([Listener("worker", Job, waits)], name="gone", backend=backend)  # type: ignore[arg-type]
        with anyio.fail_after(60):
            async with org:
                await org.send("worker", Job(text="keep me"))
                server.stop()
                release.set()
                await org.wait_idle()
                with pytest.raises(BackendError):  # after its own writes are settled
                    await org.dead_letters.list()
    assert org.stats.dead_lettered == 1 and org.stats.dead_letters_lost == 1
    [record] = [r for r in caplog.records if "could not be kept" in r.getMessage()]
    assert record.levelname == "ERROR"
    assert (
        "<text>keep me</text>" in record.getMessage() and "<to>worker</to>" in record.getMessage()
    )
