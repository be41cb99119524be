"""The pump wired to each shared-state backend: chains, history and cleanup behave the same."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.redis_server import redis_server, redis_url  # noqa: F401 - fixtures
from xml_pipeline import HandlerMetadata, HandlerResponse, HistoryEntry, Listener, Organism, payload
from xml_pipeline._config import BackendConfig
from xml_pipeline._runtime.registry import ThreadRegistry
from xml_pipeline.backends.manager import ManagerServer, start_manager_server

pytestmark = pytest.mark.anyio


@payload
@dataclass
class Question:
    text: str


@payload
@dataclass
class Answer:
    text: str
    history: list[str]


async def asker(msg: Question | Answer, meta: HandlerMetadata) -> HandlerResponse:
    if isinstance(msg, Question):
        return HandlerResponse(Question(text=msg.text + "?"), to="oracle")
    return HandlerResponse.respond(msg)


async def oracle(msg: Question, meta: HandlerMetadata) -> HandlerResponse:
    seen = [f"{h.sender}>{h.to}:{h.payload_tag}" for h in await meta.history()]
    return HandlerResponse.respond(Answer(text=msg.text.upper(), history=seen))


LISTENERS = [
    Listener("asker", Question, asker, peers=("oracle",)),
    Listener("oracle", Question, oracle),
]


@pytest.fixture(scope="module")
def manager() -> Iterator[ManagerServer]:
    with start_manager_server(authkey=b"pump-test-secret") as server:
        yield server


@pytest.fixture(params=["memory", "manager", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest, manager: ManagerServer) -> BackendConfig:
    if request.param == "manager":
        host, port = manager.address
        return BackendConfig(
            type="manager",
            manager_address=f"{host}:{port}",
            manager_authkey="pump-test-secret",
        )
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return BackendConfig(type="redis", redis_url=url, redis_prefix="pumptest:")
    return BackendConfig()


async def test_conversations_answer_and_leave_only_the_root(backend: BackendConfig) -> None:
    async with Organism(LISTENERS, name="oracle", backend=backend) as org:
        replies = await asyncio.gather(
            *(org.request("asker", Question(text=f"q{i}"), timeout=20) for i in range(200))
        )
        assert [r.text for r in replies] == [f"Q{i}?" for i in range(200)]
        assert await org.registry.size() == 1


async def test_handler_reads_the_conversation_history_recorded_once_per_hop(
    backend: BackendConfig,
) -> None:
    async with Organism(LISTENERS, name="oracle", backend=backend) as org:
        reply = await org.request("asker", Question(text="why"), timeout=20)
    assert reply.history == ["_external>asker:Question", "asker>oracle:Question"]


async def test_history_is_deleted_when_the_conversation_ends(backend: BackendConfig) -> None:
    threads: list[str] = []

    async def keep(msg: Question, meta: HandlerMetadata) -> HandlerResponse:
        threads.append(meta.thread_id)
        return HandlerResponse.respond(msg)

    async with Organism([Listener("keep", Question, keep)], backend=backend) as org:
        await org.request("keep", Question(text="x"), timeout=20)
        registry: ThreadRegistry = org.registry
        assert await registry.backend.history(threads[0]) == []
        assert await registry.size() == 1


def test_history_entries_are_plain_xml() -> None:
    from xml_pipeline import to_xml
    from xml_pipeline._wire.history import decode_entry, encode_entry

    data = encode_entry("a", "b", to_xml(Question(text="x & y")))
    assert data.startswith(b'<message xmlns="https://xml-pipeline.org/ns/envelope/v1">')
    assert decode_entry(data) == HistoryEntry(
        "a", "b", "Question", b"<Question><text>x &amp; y</text></Question>"
    )


async def test_history_holds_payloads_larger_than_the_default_input_cap() -> None:
    """An organism that raised max_message_bytes can read back the big hops it recorded."""
    big = "x" * 400_000
    async with Organism(LISTENERS, max_message_bytes=1_000_000) as org:
        reply = await org.request("asker", Question(text=big), timeout=20)
    assert reply.history == ["_external>asker:Question", "asker>oracle:Question"]
