"""Shared backends stay consistent when 8 processes extend and prune the same chains at once.

Each worker process runs its own event loop (half of them on uvloop), connects by address or
URL, and does 10,000 operations in four concurrent tasks: each task grows and shrinks a chain
of its own under one of four shared first-level threads (hubs), and now and then answers a hub,
which retires that whole conversation, other workers' records included, while they are
extending and pruning in it.
A non-atomic backend leaves records behind under retired parents or outside their
conversation's set; the checks afterwards find them.
"""

from __future__ import annotations

import multiprocessing
import random
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import anyio
import pytest

from tests.redis_server import RedisServer
from xml_pipeline.backends import Backend, ManagerBackend, ManagerServer, RedisBackend

# Generous: other work on a shared 2-core machine can slow these several times over.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = "root"
HUBS = [f"hub-{n}" for n in range(4)]
WORKERS = 8
OPERATIONS = 10_000  # per worker process
TASKS_PER_WORKER = 4
ENTRY = b"<Step><n>1</n></Step>"


@dataclass(frozen=True)
class Target:
    """How a worker process reaches the shared backend (picklable)."""

    kind: str
    address: tuple[str, int] | None = None
    authkey: bytes | None = None
    namespace: str = ""
    url: str = ""

    def backend(self) -> Backend:
        if self.kind == "manager":
            assert self.address is not None and self.authkey is not None
            return ManagerBackend(self.address, self.authkey, namespace=self.namespace)
        return RedisBackend(self.url, prefix=self.namespace)


@dataclass
class WorkerLog:
    created: dict[str, str] = field(default_factory=dict)  # child id -> the parent it got
    mismatches: list[str] = field(default_factory=list)
    conversations_ended: int = 0
    seconds: float = 0.0


async def _chain_task(backend: Backend, name: str, operations: int, log: WorkerLog) -> None:
    """Grow and shrink one chain under a random hub; sometimes answer the hub."""
    rng = random.Random(name)
    stack: list[str] = []
    for n in range(operations):
        if not stack:
            stack = [rng.choice(HUBS)]
        if rng.random() < 0.01:
            # Answer the hub: retires the conversation under everyone's feet.
            hub = stack[0]
            result = await backend.prune(hub, ENTRY)
            if result is not None:
                log.conversations_ended += 1
                if not result.conversation_ended or result.caller_thread != ROOT:
                    log.mismatches.append(f"prune({hub}) -> {result}")
            await backend.extend(ROOT, hub, "hub")
            stack = []
        elif len(stack) == 1 or (rng.random() < 0.55 and len(stack) < 8):
            child = f"{name}-{n}"
            record = await backend.extend(stack[-1], child, f"team.level{len(stack)}", ENTRY)
            if record is None:  # the chain was retired: start over, reviving the hub
                if len(stack) == 1:
                    await backend.extend(ROOT, stack[0], "hub")
                stack = []
                continue
            if record.parent_id != stack[-1] or record.conversation != stack[0]:
                log.mismatches.append(f"extend({stack[-1]}, {child}) -> {record}")
            log.created[child] = stack[-1]
            stack.append(child)
        else:
            result = await backend.prune(stack[-1], ENTRY)
            if result is None:  # the conversation was retired meanwhile
                stack = []
                continue
            if result.caller_thread != stack[-2] or result.conversation_ended:
                log.mismatches.append(f"prune({stack[-1]}) -> {result}")
            stack.pop()


async def _work(target: Target, worker: int) -> WorkerLog:
    """One process: ``OPERATIONS`` operations, spread over a few concurrent chains."""
    log = WorkerLog()
    backend = target.backend()
    await backend.open()
    start = time.perf_counter()
    try:
        async with anyio.create_task_group() as tg:
            for task in range(TASKS_PER_WORKER):
                tg.start_soon(
                    _chain_task, backend, f"w{worker}.{task}", OPERATIONS // TASKS_PER_WORKER, log
                )
    finally:
        log.seconds = time.perf_counter() - start
        await backend.aclose()
    return log


def run_worker(target: Target, worker: int) -> WorkerLog:
    """The entry point of one worker process."""
    return anyio.run(_work, target, worker, backend_options={"use_uvloop": worker % 2 == 1})


async def _verify(target: Target, logs: list[WorkerLog]) -> None:
    created: dict[str, str] = {}
    for log in logs:
        created.update(log.created)
    created.update(dict.fromkeys(HUBS, ROOT))
    backend = target.backend()
    await backend.open()
    try:
        live = {}
        limiter = anyio.Semaphore(64)

        async def look(thread: str) -> None:
            async with limiter:
                record = await backend.get(thread)
            if record is not None:
                live[thread] = record

        async with anyio.create_task_group() as tg:
            for thread in created:
                tg.start_soon(look, thread)

        per_conversation: dict[str, int] = dict.fromkeys(HUBS, 0)
        for thread, record in live.items():
            # Exactly one parent per id: the one its creating extend was told.
            assert record.parent_id == created[thread], record
            # No orphans: the parent is live (or the root), and so is the whole chain.
            assert record.parent_id == ROOT or record.parent_id in live, record
            assert record.conversation in HUBS, record
            per_conversation[record.conversation] += 1
        assert await backend.count() == 1 + len(live)
        # Every record is in its conversation's set: retiring the conversation removes it.
        for hub in HUBS:
            assert await backend.retire_conversation(hub) == per_conversation[hub], hub
        assert await backend.count() == 1
    finally:
        await backend.aclose()


def _race(target: Target, put_root: bool = True) -> list[WorkerLog]:
    async def prepare() -> None:
        backend = target.backend()
        await backend.open()
        try:
            await backend.put_root(ROOT, "organism")
            for hub in HUBS:
                await backend.extend(ROOT, hub, "hub")
        finally:
            await backend.aclose()

    anyio.run(prepare)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(WORKERS, mp_context=context) as pool:
        futures = [pool.submit(run_worker, target, worker) for worker in range(WORKERS)]
        logs = [future.result() for future in futures]
    mismatches = [m for log in logs for m in log.mismatches]
    assert mismatches == []
    assert sum(log.conversations_ended for log in logs) > 0
    assert all(log.created for log in logs)
    anyio.run(_verify, target, logs)
    return logs


def test_manager_backend_under_concurrent_processes(manager_server: ManagerServer) -> None:
    _race(
        Target(
            "manager",
            address=manager_server.address,
            authkey=manager_server.authkey,
            namespace=uuid.uuid4().hex,
        )
    )


@pytest.mark.redis
def test_redis_backend_under_concurrent_processes(
    redis_url: str, redis_server: RedisServer
) -> None:
    prefix = "race:"
    _race(Target("redis", url=redis_url, namespace=prefix))
    # Nothing is left behind but the root and the short-lived prune receipts.
    with redis_server.client() as client:
        keys = {key.decode() for key in client.scan_iter(match=f"{prefix}*", count=1000)}
        leftovers = {key for key in keys if not key.startswith(f"{prefix}x:")}
        assert leftovers == {f"{prefix}t:{ROOT}", f"{prefix}live"}
        assert client.zrange(f"{prefix}live", 0, -1) == [ROOT.encode()]
