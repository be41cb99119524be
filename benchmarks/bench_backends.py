"""Throughput of the shared-state backends: extend+prune pairs and pump hops per second.

Run from the project root (needs ``redis-server`` on PATH; it starts its own on a free port)::

    python benchmarks/bench_backends.py [--runs 5] [--seconds 1.0] [--loop uvloop|asyncio]

Each pair is one hop out and one hop back, as the pump does them: ``extend`` a child under a
live conversation with a 300-byte history entry, then ``prune`` it with another entry. Pairs
run sequentially (one task) and concurrently (``--tasks`` tasks), from one process. The Redis
rows are set against redis-py's own PING rate, sequential and pipelined, measured in the same
run. Prints a table (median of the runs) and writes ``benchmarks/results/bench_backends.json``.

Pump hops/s per backend use the organism of ``bench_pump.py`` (4 hops per conversation, every
payload checked, history recorded), ``--pump-tasks`` conversations in flight, and give the ratio
of each backend to the memory backend measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.redis_server

import bench_pump  # the same organism as the pump benchmark

from tests.redis_server import RedisServer
from xml_pipeline.backends import (
    Backend,
    ManagerBackend,
    MemoryBackend,
    RedisBackend,
    start_manager_server,
)

RESULTS = Path(__file__).parent / "results" / "bench_backends.json"
ENTRY = b"<message><meta/>" + b"x" * 270 + b"</message>"
ROOT = "root"


async def _rate(
    seconds: float, tasks: int, make_step: Callable[[int], Callable[[], Awaitable[Any]]]
) -> float:
    """Steps per second over ``seconds``, ``tasks`` tasks each running its own step in a loop."""
    done = [0] * tasks
    deadline = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        step = make_step(n)
        while time.perf_counter() < deadline:
            await step()
            done[n] += 1

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for n in range(tasks):
            tg.start_soon(worker, n)
    return sum(done) / (time.perf_counter() - start)


async def extend_prune_pairs(backend: Backend, seconds: float, tasks: int) -> float:
    """Pairs per second: extend a child under a live conversation, then prune it."""
    ids = (f"{os.getpid()}-{n}-{time.perf_counter_ns()}" for n in range(10**9))
    await backend.put_root(ROOT, "organism")

    def make_step(n: int) -> Callable[[], Awaitable[None]]:
        conversation = f"conv-{n}-{time.perf_counter_ns()}"
        started = False

        async def step() -> None:
            nonlocal started
            if not started:
                await backend.extend(ROOT, conversation, "alpha", ENTRY)
                started = True
            child = next(ids)
            assert await backend.extend(conversation, child, "beta", ENTRY) is not None
            assert await backend.prune(child, ENTRY) is not None

        return step

    rate = await _rate(seconds, tasks, make_step)
    return rate


async def redis_ping(url: str, seconds: float, pipelined: int) -> float:
    """redis-py's own PINGs per second: sequential (``pipelined`` = 1) or in pipelines."""
    client = aioredis.Redis.from_url(url)
    try:

        async def step() -> None:
            if pipelined == 1:
                await client.ping()
                return
            pipe = client.pipeline(transaction=False)
            for _ in range(pipelined):
                pipe.ping()
            await pipe.execute()

        return await _rate(seconds, 1, lambda n: step) * pipelined
    finally:
        await client.aclose()


async def pump_hops(backend: Backend, conversations: int, tasks: int) -> float:
    """Pump hops per second on ``backend`` with ``tasks`` conversations in flight."""
    org = bench_pump.organism(backend=backend, ingress_limit=tasks)
    async with org:
        await bench_pump.load(org, tasks * 2, tasks)  # warm up: connections, scripts
        return await bench_pump.load(org, conversations, tasks)


def _median(runs: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--pump-tasks", type=int, default=256)
    parser.add_argument("--conversations", type=int, default=8192)
    options = parser.parse_args()
    backend_options = {"use_uvloop": options.loop == "uvloop"}

    def run(measure: Callable[[], Awaitable[float]]) -> float:
        return _median(options.runs, lambda: anyio.run(measure, backend_options=backend_options))

    def pairs(make: Callable[[], Backend], tasks: int) -> Callable[[], Awaitable[float]]:
        async def measure() -> float:
            backend = make()
            await backend.open()
            try:
                return await extend_prune_pairs(backend, options.seconds, tasks)
            finally:
                await backend.aclose()

        return measure

    def hops(make: Callable[[], Backend]) -> Callable[[], Awaitable[float]]:
        async def measure() -> float:
            return await pump_hops(make(), options.conversations, options.pump_tasks)

        return measure

    rows: list[tuple[str, float]] = []
    pump_rows: dict[str, float] = {}
    memory = MemoryBackend()  # one state across runs, as one organism would keep it
    with start_manager_server() as server, RedisServer() as redis_server:
        url = redis_server.url

        def manager() -> Backend:
            return ManagerBackend(server.address, server.authkey)

        def redis_backend() -> Backend:
            return RedisBackend(url, prefix=f"bench{time.perf_counter_ns()}:")

        for name, make in (
            ("memory", lambda: memory),
            ("manager", manager),
            ("redis", redis_backend),
        ):
            rows.append((f"{name}: extend+prune pairs/s, 1 task", run(pairs(make, 1))))
            rows.append(
                (
                    f"{name}: extend+prune pairs/s, {options.tasks} tasks",
                    run(pairs(make, options.tasks)),
                )
            )
            pump_rows[name] = run(hops(make))
            label = f"{name}: pump hops/s, {options.pump_tasks} conversations in flight"
            rows.append((label, pump_rows[name]))
        for depth in (1, 100):

            async def ping(depth: int = depth) -> float:
                return await redis_ping(url, options.seconds, depth)

            label = "sequential" if depth == 1 else f"pipelined x{depth}"
            rows.append((f"redis-py PING/s, {label} (floor)", run(ping)))

    width = max(len(name) for name, _ in rows)
    print(f"{'measurement':<{width}}  {'per second':>12}")
    for name, value in rows:
        print(f"{name:<{width}}  {value:>12,.0f}")
    ratios = {name: value / pump_rows["memory"] for name, value in pump_rows.items()}
    print("pump hops/s relative to memory: " + ", ".join(f"{n} {r:.2f}" for n, r in ratios.items()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "bench_backends",
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "loop": options.loop,
                "runs": options.runs,
                "seconds": options.seconds,
                "tasks": options.tasks,
                "results": {name: round(value, 1) for name, value in rows},
                "pump_ratio_to_memory": {name: round(r, 3) for name, r in ratios.items()},
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
