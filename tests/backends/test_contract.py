"""The behaviour every `Backend` must have, run against memory, manager and Redis.

`BackendContract` holds the tests; each subclass only says how to build its backend.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from xml_pipeline.backends import (
    Backend,
    DeadLetter,
    DeadLetterCounts,
    ManagerBackend,
    ManagerServer,
    MemoryBackend,
    PruneResult,
    RedisBackend,
    ThreadRecord,
)

pytestmark = pytest.mark.anyio

ROOT = "root-thread"
ORG = "organism"
Factory = Callable[..., Backend]

# XML as it travels: UTF-8 with non-ASCII text, plus every byte value except NUL.
UNICODE_ENTRY = "<Note>héllo ✓ 日本語 \U0001f600</Note>".encode()
BINARY_ENTRY = bytes(range(1, 256))


@asynccontextmanager
async def opened(backend: Backend) -> AsyncIterator[Backend]:
    """The backend, open and with the organism's root in place; closed afterwards."""
    await backend.open()
    try:
        await backend.put_root(ROOT, ORG)
        yield backend
    finally:
        await backend.aclose()


async def add(backend: Backend, letter: DeadLetter, max_entries: int) -> DeadLetter:
    """Keep one dead letter."""
    [kept] = await backend.add_dead_letters([letter], max_entries)
    return kept


class BackendContract:
    """Subclasses provide ``make_backend``: keyword settings -> an unopened backend."""

    @pytest.fixture
    def make_backend(self) -> Factory:
        raise NotImplementedError

    @pytest.fixture
    async def backend(self, make_backend: Factory) -> AsyncIterator[Backend]:
        async with opened(make_backend()) as backend:
            yield backend

    async def test_implements_protocol(self, backend: Backend) -> None:
        assert isinstance(backend, Backend)

    # -- extend -------------------------------------------------------------------------------

    async def test_extend_creates_child_under_parent(self, backend: Backend) -> None:
        first = await backend.extend(ROOT, "a", "alpha")
        assert first == ThreadRecord("a", ROOT, "alpha", "a")
        second = await backend.extend("a", "b", "beta")
        assert second == ThreadRecord("b", "a", "beta", "a")
        assert await backend.get("b") == second
        assert await backend.count() == 3

    async def test_same_path_in_two_conversations_keeps_ids_apart(self, backend: Backend) -> None:
        """Two conversations along one path never share a record; replies do not cross."""
        for n in (1, 2):
            await backend.extend(ROOT, f"a{n}", "alpha")
            await backend.extend(f"a{n}", f"b{n}", "beta")
        second = await backend.prune("b2")
        first = await backend.prune("b1")
        assert first == PruneResult("alpha", "a1", "a1", False)
        assert second == PruneResult("alpha", "a2", "a2", False)

    async def test_extend_under_unknown_parent_returns_none(self, backend: Backend) -> None:
        assert await backend.extend("no-such-thread", "b", "beta") is None
        assert await backend.get("b") is None
        assert await backend.count() == 1

    async def test_extend_reusing_a_live_id_under_another_parent_raises(
        self, backend: Backend
    ) -> None:
        await backend.extend(ROOT, "a", "alpha")
        await backend.extend(ROOT, "x", "alpha")
        await backend.extend("a", "b", "beta")
        with pytest.raises(ValueError, match="already in use"):
            await backend.extend("x", "b", "beta")
        with pytest.raises(ValueError, match="already in use"):
            await backend.extend("a", ROOT, "beta")

    async def test_extend_repeated_is_idempotent(self, backend: Backend) -> None:
        """A retried extend returns the same record and does not append history twice."""
        await backend.extend(ROOT, "a", "alpha", b"<one/>")
        again = await backend.extend(ROOT, "a", "alpha", b"<one/>")
        assert again == ThreadRecord("a", ROOT, "alpha", "a")
        assert await backend.history("a") == [b"<one/>"]
        assert await backend.count() == 2

    # -- prune --------------------------------------------------------------------------------

    async def test_prune_returns_caller_and_caller_thread(self, backend: Backend) -> None:
        await backend.extend(ROOT, "a", "alpha")
        await backend.extend("a", "b", "beta")
        assert await backend.prune("b") == PruneResult("alpha", "a", "a", False)
        assert await backend.get("b") is None
        assert await backend.get("a") == ThreadRecord("a", ROOT, "alpha", "a")
        assert await backend.count() == 2

    async def test_prune_of_first_level_thread_ends_the_conversation(
        self, backend: Backend
    ) -> None:
        """Answering the root retires every record and the history of the conversation."""
        await backend.extend(ROOT, "a", "alpha", b"<h1/>")
        await backend.extend("a", "b", "beta", b"<h2/>")
        await backend.extend("a", "c", "gamma", b"<h3/>")
        await backend.extend("c", "d", "delta")
        await backend.extend(ROOT, "other", "alpha", b"<keep/>")

        result = await backend.prune("a", b"<ignored/>")

        assert result == PruneResult(ORG, ROOT, "a", True)
        for thread in ("a", "b", "c", "d"):
            assert await backend.get(thread) is None
        assert await backend.history("a") == []
        assert await backend.history("other") == [b"<keep/>"]
        assert await backend.count() == 2

    async def test_fan_out_children_each_prune_to_the_same_parent(self, backend: Backend) -> None:
        await backend.extend(ROOT, "a", "alpha")
        await backend.extend("a", "b", "beta")
        await backend.extend("a", "c", "gamma")
        assert await backend.prune("c") == PruneResult("alpha", "a", "a", False)
        assert await backend.prune("b") == PruneResult("alpha", "a", "a", False)
        assert await backend.prune("a") == PruneResult(ORG, ROOT, "a", True)

    async def test_prune_of_unknown_or_pruned_thread_returns_none(self, backend: Backend) -> None:
        await backend.extend(ROOT, "a", "alpha")
        await backend.extend("a", "b", "beta", b"<h1/>")
        assert await backend.prune("no-such-thread", b"<x/>") is None
        assert await backend.prune("b", b"<h2/>") is not None
        assert await backend.prune("b", b"<h3/>") is None
        assert await backend.count() == 2
        assert await backend.history("a") == [b"<h1/>", b"<h2/>"]

    async def test_prune_of_the_root_returns_none_and_keeps_it(self, backend: Backend) -> None:
        assert await backend.prune(ROOT) is None
        assert await backend.get(ROOT) == ThreadRecord(ROOT, None, ORG, None)
        assert await backend.count() == 1

    async def test_late_reply_under_a_retired_parent_returns_none(self, backend: Backend) -> None:
        """The child of a thread that already answered is dropped, and its record removed."""
        await backend.extend(ROOT, "a", "alpha")
        await backend.extend("a", "b", "beta")
        await backend.extend("b", "c", "gamma")
        assert await backend.prune("b") == PruneResult("alpha", "a", "a", False)

        assert await backend.prune("c") is None
        assert await backend.get("c") is None
        assert await backend.count() == 2

    async def test_late_reply_after_the_conversation_ended_returns_none(
        self, backend: Backend
    ) -> None:
        await backend.extend(ROOT, "a", "alpha")
        await backend.extend("a", "b", "beta")
        await backend.prune("a")
        assert await backend.prune("b") is None
        assert await backend.extend("b", "c", "gamma") is None
        assert await backend.count() == 1

    # -- get, chain, retire, count ------------------------------------------------------------

    async def test_get_of_root_and_unknown(self, backend: Backend) -> None:
        assert await backend.get(ROOT) == ThreadRecord(ROOT, None, ORG, None)
        assert await backend.get("no-such-thread") is None

    async def test_put_root_keeps_an_existing_root(self, backend: Backend) -> None:
        await backend.put_root(ROOT, "renamed")
        assert await backend.get(ROOT) == ThreadRecord(ROOT, None, ORG, None)
        assert await backend.count() == 1

    async def test_chain_lists_listener_names_from_the_root(self, backend: Backend) -> None:
        """Dotted listener names stay whole: a chain is a sequence, not a split string."""
        await backend.extend(ROOT, "a", "team.alpha")
        await backend.extend("a", "b", "team.beta.v2")
        await backend.extend("b", "c", "gamma")
        assert await backend.chain("c") == [ORG, "team.alpha", "team.beta.v2", "gamma"]
        assert await backend.chain("a") == [ORG, "team.alpha"]
        assert await backend.chain(ROOT) == [ORG]
        assert await backend.chain("no-such-thread") is None

    async def test_chain_of_an_orphaned_thread_is_none(self, backend: Backend) -> None:
        await backend.extend(ROOT, "a", "alpha")
        await backend.extend("a", "b", "beta")
        await backend.extend("b", "c", "gamma")
        await backend.prune("b")
        assert await backend.chain("c") is None

    async def test_retire_conversation(self, backend: Backend) -> None:
        await backend.extend(ROOT, "a", "alpha", b"<h/>")
        await backend.extend("a", "b", "beta")
        await backend.extend("b", "c", "gamma")
        await backend.extend(ROOT, "other", "alpha")

        assert await backend.retire_conversation("a") == 3

        for thread in ("a", "b", "c"):
            assert await backend.get(thread) is None
        assert await backend.history("a") == []
        assert await backend.get("other") is not None
        assert await backend.retire_conversation("a") == 0
        assert await backend.retire_conversation("no-such-conversation") == 0
        assert await backend.count() == 2

    async def test_abandon_retires_and_refuses_the_opening_call_arriving_late(
        self, backend: Backend
    ) -> None:
        """A cancelled open may reach the state after its undo: it must then create nothing."""
        await backend.extend(ROOT, "opened", "alpha", b"<h/>")
        await backend.extend("opened", "child", "beta")
        assert await backend.abandon("opened") == 2
        assert await backend.get("opened") is None
        assert await backend.history("opened") == []

        assert await backend.abandon("never-arrived") == 0
        assert await backend.extend(ROOT, "never-arrived", "alpha", b"<h/>") is None
        assert await backend.extend(ROOT, "opened", "alpha") is None
        assert await backend.history("never-arrived") == []
        assert await backend.count() == 1
        # other conversations are unaffected
        assert await backend.extend(ROOT, "fresh", "alpha") is not None

    async def test_count_returns_to_the_root_after_concurrent_conversations(
        self, backend: Backend
    ) -> None:
        """200 conversations with fan-out, run concurrently, leave only the root behind."""
        ended: list[bool] = []

        async def converse(n: int) -> None:
            a, b, c = f"a{n}", f"b{n}", f"c{n}"
            assert await backend.extend(ROOT, a, "alpha", b"<ask/>") is not None
            assert await backend.extend(a, b, "beta", b"<b/>") is not None
            assert await backend.extend(a, c, "gamma", b"<c/>") is not None
            assert await backend.prune(c, b"<c-done/>") == PruneResult("alpha", a, a, False)
            assert await backend.prune(b, b"<b-done/>") == PruneResult("alpha", a, a, False)
            assert len(await backend.history(a)) == 5
            result = await backend.prune(a, b"<answer/>")
            assert result is not None
            ended.append(result.conversation_ended)

        async with anyio.create_task_group() as tg:
            for n in range(200):
                tg.start_soon(converse, n)

        assert ended == [True] * 200
        assert await backend.count() == 1
        assert await backend.history("a7") == []

    # -- history ------------------------------------------------------------------------------

    async def test_history_is_appended_per_hop_in_order(self, backend: Backend) -> None:
        await backend.extend(ROOT, "a", "alpha", b"<ask/>")
        await backend.extend("a", "b", "beta", UNICODE_ENTRY)
        await backend.extend("a", "c", "gamma")  # a hop without an entry
        await backend.extend("a", "d", "delta", BINARY_ENTRY)
        await backend.prune("b", b"<reply/>")
        assert await backend.history("a") == [b"<ask/>", UNICODE_ENTRY, BINARY_ENTRY, b"<reply/>"]

    async def test_history_is_bounded_to_the_newest_entries(self, make_backend: Factory) -> None:
        async with opened(make_backend(history_max_entries=3)) as backend:
            await backend.extend(ROOT, "a", "alpha", b"<e0/>")
            for n in range(1, 5):
                await backend.extend("a", f"c{n}", "gamma", f"<e{n}/>".encode())
            await backend.extend("a", "b", "beta", b"<e5/>")
            assert await backend.history("a") == [b"<e3/>", b"<e4/>", b"<e5/>"]

    async def test_history_of_unknown_conversation_is_empty(self, backend: Backend) -> None:
        assert await backend.history("no-such-conversation") == []

    # -- TTL ----------------------------------------------------------------------------------

    async def test_abandoned_conversation_expires(self, make_backend: Factory) -> None:
        async with opened(make_backend(thread_ttl_seconds=0.2)) as backend:
            await backend.extend(ROOT, "a", "alpha", b"<ask/>")
            await backend.extend("a", "b", "beta")
            await anyio.sleep(0.5)
            assert await backend.get("b") is None
            assert await backend.chain("b") is None
            assert await backend.prune("b") is None
            assert await backend.extend("a", "c", "gamma") is None
            assert await backend.history("a") == []
            assert await backend.count() == 1
            assert await backend.get(ROOT) == ThreadRecord(ROOT, None, ORG, None)

    async def test_sliding_ttl_keeps_an_active_conversation_alive(
        self, make_backend: Factory
    ) -> None:
        """Each hop refreshes the TTL: the conversation outlives the TTL many times over."""
        async with opened(make_backend(thread_ttl_seconds=0.3)) as backend:
            await backend.extend(ROOT, "a", "alpha", b"<ask/>")
            for n in range(7):
                await anyio.sleep(0.1)
                assert await backend.extend("a", f"b{n}", "beta") is not None
                assert await backend.prune(f"b{n}") == PruneResult("alpha", "a", "a", False)
            assert await backend.history("a") == [b"<ask/>"]
            assert await backend.prune("a") == PruneResult(ORG, ROOT, "a", True)

    async def test_get_refreshes_the_ttl(self, make_backend: Factory) -> None:
        async with opened(make_backend(thread_ttl_seconds=0.3)) as backend:
            await backend.extend(ROOT, "a", "alpha")
            for _ in range(7):
                await anyio.sleep(0.1)
                assert await backend.get("a") is not None
            assert await backend.count() == 2

    # -- dead letters -------------------------------------------------------------------------

    async def test_a_dead_letter_is_kept_with_an_id_and_time_and_read_back_whole(
        self, backend: Backend
    ) -> None:
        letter = DeadLetter(
            "conv-1", "handler_error", "'bêta' raised ✓ 日本語", "bêta",
            envelope=BINARY_ENTRY + UNICODE_ENTRY, chain=("alpha", "bêta.v2"), attempts=3,
        )  # fmt: skip
        before = time.time()
        kept = await add(backend, letter, 10)
        assert kept.id and kept.id != letter.id
        assert before - 2 <= kept.time <= time.time() + 2  # the backend's clock (Redis's own)
        assert kept == DeadLetter(
            "conv-1", "handler_error", "'bêta' raised ✓ 日本語", "bêta", kept.id, kept.time,
            BINARY_ENTRY + UNICODE_ENTRY, ("alpha", "bêta.v2"), 3,
        )  # fmt: skip
        assert await backend.get_dead_letter(kept.id) == kept
        assert await backend.dead_letters() == [kept]
        assert await backend.dead_letter_counts() == DeadLetterCounts(1, 0)

    async def test_dead_letters_list_oldest_first_by_reason_listener_and_time(
        self, backend: Backend
    ) -> None:
        kept = []
        for n, (reason, listener) in enumerate(
            [("timeout", "a"), ("handler_error", "b"), ("timeout", "b"), ("shutdown", "")]
        ):
            letter = DeadLetter(f"c{n}", reason, "m", listener)
            kept.append(await add(backend, letter, 10))
        ids = [letter.id for letter in kept]
        assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
        assert len(set(ids)) == 4
        assert await backend.dead_letters() == kept
        assert await backend.dead_letters(reason="timeout") == [kept[0], kept[2]]
        assert await backend.dead_letters(listener="b") == [kept[1], kept[2]]
        assert await backend.dead_letters(reason="timeout", listener="b") == [kept[2]]
        assert await backend.dead_letters(listener="") == [kept[3]]
        assert await backend.dead_letters(reason="no_route") == []
        assert await backend.dead_letters(limit=2) == kept[:2]
        assert await backend.dead_letters(reason="timeout", limit=1) == [kept[0]]
        assert await backend.dead_letters(since=kept[2].time) == [
            letter for letter in kept if letter.time >= kept[2].time
        ]
        assert await backend.dead_letters(since=time.time() + 3600) == []

    async def test_an_unknown_or_malformed_dead_letter_id_is_none(self, backend: Backend) -> None:
        kept = await add(backend, DeadLetter("c", "timeout", "m", "a"), 10)
        ms, _, seq = kept.id.partition("-")
        unknown = ("", "nope", "1-2-3", "-1-0", f"{ms}-{int(seq) + 1}", "0-0", " " + kept.id,
                   f"{2**64}-0", "1-" + "9" * 20)  # fmt: skip
        for letter_id in unknown:
            assert await backend.get_dead_letter(letter_id) is None, letter_id

    async def test_deleting_dead_letters_removes_the_known_ones(self, backend: Backend) -> None:
        kept = [await add(backend, DeadLetter(f"c{n}", "timeout", "m", "a"), 10) for n in range(3)]
        assert await backend.delete_dead_letters([kept[0].id, "nope", "1-0", kept[2].id]) == 2
        assert await backend.dead_letters() == [kept[1]]
        assert await backend.delete_dead_letters([kept[0].id]) == 0
        assert await backend.delete_dead_letters([]) == 0
        assert await backend.get_dead_letter(kept[0].id) is None
        assert await backend.dead_letter_counts() == DeadLetterCounts(1, 0)

    async def test_dead_letters_beyond_the_bound_drop_the_oldest_and_are_counted(
        self, backend: Backend
    ) -> None:
        kept = [await add(backend, DeadLetter(f"c{n}", "timeout", "m", "a"), 3) for n in range(5)]
        assert await backend.dead_letters() == kept[2:]
        assert await backend.dead_letter_counts() == DeadLetterCounts(3, 2)
        await add(backend, DeadLetter("c5", "timeout", "m", "a"), 1)
        assert [d.conversation for d in await backend.dead_letters()] == ["c5"]
        assert await backend.dead_letter_counts() == DeadLetterCounts(1, 5)

    async def test_dead_letters_kept_together_keep_their_order(self, backend: Backend) -> None:
        letters = [DeadLetter(f"c{n}", "shutdown", "m", "a") for n in range(4)]
        assert await backend.add_dead_letters([], 3) == []
        kept = await backend.add_dead_letters(letters, 3)
        assert [d.conversation for d in kept] == ["c0", "c1", "c2", "c3"]
        assert [d.id for d in kept] == sorted(
            (d.id for d in kept), key=lambda i: tuple(map(int, i.split("-")))
        )
        assert await backend.dead_letters() == kept[1:]
        assert await backend.dead_letter_counts() == DeadLetterCounts(3, 1)

    async def test_concurrent_dead_letters_each_get_their_own_id(self, backend: Backend) -> None:
        async def keep(n: int) -> None:
            await add(backend, DeadLetter(f"c{n}", "shutdown", "m", "a"), 1000)

        async with anyio.create_task_group() as tg:
            for n in range(600):
                tg.start_soon(keep, n)
        letters = await backend.dead_letters()  # Redis reads them 500 at a time
        assert len({d.id for d in letters}) == 600
        assert {d.conversation for d in letters} == {f"c{n}" for n in range(600)}
        assert await backend.dead_letters(limit=550) == letters[:550]
        assert await backend.dead_letters(since=letters[550].time) == [
            d for d in letters if d.time >= letters[550].time
        ]

    async def test_dead_letters_outlive_the_thread_ttl_and_retired_conversations(
        self, make_backend: Factory
    ) -> None:
        async with opened(make_backend(thread_ttl_seconds=0.2)) as backend:
            await backend.extend(ROOT, "a", "alpha", b"<ask/>")
            kept = await add(backend, DeadLetter("a", "timeout", "m", "alpha"), 10)
            await backend.retire_conversation("a")
            await anyio.sleep(0.4)
            assert await backend.count() == 1
            assert await backend.dead_letters() == [kept]

    # -- the run registry ---------------------------------------------------------------------

    async def test_run_snapshots_hold_each_process_once_with_what_it_wrote_last(
        self, backend: Backend
    ) -> None:
        assert await backend.run_snapshots() == []
        assert await backend.put_runs("p1", b"[1]", 60) == []
        assert await backend.put_runs("p2", b"[2]", 60) == []
        assert await backend.put_runs("p1", b"[1, 1]", 60) == []
        found = {s.process: s for s in await backend.run_snapshots()}
        assert {p: s.snapshot for p, s in found.items()} == {"p1": b"[1, 1]", "p2": b"[2]"}
        assert all(0 <= s.age_seconds < 5 for s in found.values())
        await anyio.sleep(0.3)
        [aged] = [s for s in await backend.run_snapshots() if s.process == "p2"]
        assert aged.age_seconds >= 0.25  # the backend's clock: age since the write

    async def test_commands_queued_for_a_process_are_taken_once_in_order(
        self, backend: Backend
    ) -> None:
        await backend.put_runs("p1", b"[]", 60)
        assert await backend.push_run_command("p1", b"cancel r1") is True
        assert await backend.push_run_command("p1", b"cancel r2") is True
        assert await backend.put_runs("p1", b"[]", 60) == [b"cancel r1", b"cancel r2"]
        assert await backend.put_runs("p1", b"[]", 60) == []

    async def test_a_command_for_a_process_without_a_snapshot_is_refused(
        self, backend: Backend
    ) -> None:
        assert await backend.push_run_command("nobody", b"cancel r1") is False
        await backend.put_runs("p1", b"[]", 60)
        await backend.delete_runs("p1")
        assert await backend.push_run_command("p1", b"cancel r1") is False
        assert await backend.run_snapshots() == []

    async def test_a_process_that_stops_writing_is_forgotten_with_its_commands(
        self, backend: Backend
    ) -> None:
        await backend.put_runs("gone", b"[0]", 0.2)
        await backend.put_runs("here", b"[1]", 60)
        assert await backend.push_run_command("gone", b"cancel r1") is True
        await anyio.sleep(0.35)
        assert [s.process for s in await backend.run_snapshots()] == ["here"]
        assert await backend.push_run_command("gone", b"cancel r2") is False
        assert await backend.put_runs("gone", b"[0]", 60) == []  # a new start: nothing queued


class TestMemoryBackend(BackendContract):
    @pytest.fixture
    def make_backend(self) -> Factory:
        return MemoryBackend


class TestManagerBackend(BackendContract):
    @pytest.fixture
    def make_backend(self, manager_server: ManagerServer) -> Factory:
        return functools.partial(
            ManagerBackend,
            manager_server.address,
            manager_server.authkey,
            namespace=uuid.uuid4().hex,
        )


@pytest.mark.redis
class TestRedisBackend(BackendContract):
    @pytest.fixture
    def make_backend(self, redis_url: str) -> Factory:
        def make(**settings: Any) -> Backend:
            return RedisBackend(redis_url, prefix=f"xp-{uuid.uuid4().hex[:8]}:", **settings)

        return make
