"""Throughput of the shared-state backends: extend+prune pairs and pump hops per second.

Run from the project root (needs ``redis-server`` on PATH; it starts its own on a free port)::

    python benchmarks/bench_backends.py [--runs 5] [--seconds 1.0] [--loop uvloop|asyncio]

Each pair is one hop out and one hop back, as the pump does them: ``extend`` a child under a
live conversation with a 300-byte history entry, then ``prune`` it with another entry. Pairs
run sequentially (one task) and concurrently (``--tasks`` tasks), from one process. The Redis
rows are set against redis-py's own PING rate, sequential and pipelined, measured in the same
run. Prints a table (median of the runs) and writes ``benchmarks/results/bench_backends.json``.

Pump hops/s per backend use the organism of ``bench_pump.py`` (4 hops per conversation, every
payload checked, history recorded), ``--pump-tasks`` conversations in flight, runs of the
backends interleaved, and give the ratio of each backend to the memory backend measured in the
same run. With them, CPU per hop: this process's (the pump plus the backend's client; on Redis,
redis-py and our pipelining) and, for Redis, redis-server's (``INFO cpu``, user + system).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import redis
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


class PumpRun(NamedTuple):
    hops_per_second: float
    process_cpu_us: float  # per hop: the pump and the backend's client
    server_cpu_us: float  # per hop: the backend's server process (NaN: not measured)


async def pump_hops(
    backend: Backend, conversations: int, tasks: int, server_cpu: Callable[[], float] | None
) -> PumpRun:
    """Pump hops per second on ``backend`` with ``tasks`` conversations in flight, and CPU
    seconds per hop of this process and (``server_cpu``: its CPU seconds so far) the server."""
    org = bench_pump.organism(backend=backend, ingress_limit=tasks)
    async with org:
        await bench_pump.load(org, tasks * 2, tasks)  # warm up: connections, scripts
        server_before = server_cpu() if server_cpu else math.nan
        measured = await bench_pump.load(org, conversations, tasks)
        server = server_cpu() - server_before if server_cpu else math.nan
    hops = conversations // tasks * tasks * bench_pump.HOPS_PER_CONVERSATION
    return PumpRun(measured.hops_per_s, measured.cpu_us_per_hop, server / hops * 1e6)


def redis_server_cpu(url: str) -> Callable[[], float]:
    """redis-server's CPU seconds so far (user + system), as its INFO reports them."""
    client = redis.Redis.from_url(url)

    def cpu() -> float:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    return cpu


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

    def hops(
        make: Callable[[], Backend], server_cpu: Callable[[], float] | None
    ) -> Callable[[], Awaitable[PumpRun]]:
        async def measure() -> PumpRun:
            return await pump_hops(make(), options.conversations, options.pump_tasks, server_cpu)

        return measure

    rows: list[tuple[str, float]] = []
    pump_runs: dict[str, list[PumpRun]] = {}
    memory = MemoryBackend()  # one state across runs, as one organism would keep it
    with start_manager_server() as server, RedisServer() as redis_server:
        url = redis_server.url

        def manager() -> Backend:
            return ManagerBackend(server.address, server.authkey)

        def redis_backend() -> Backend:
            return RedisBackend(url, prefix=f"bench{time.perf_counter_ns()}:")

        backends: list[tuple[str, Callable[[], Backend], Callable[[], float] | None]] = [
            ("memory", lambda: memory, None),
            ("manager", manager, None),
            ("redis", redis_backend, redis_server_cpu(url)),
        ]
        for name, make, _ in backends:
            rows.append((f"{name}: extend+prune pairs/s, 1 task", run(pairs(make, 1))))
            rows.append(
                (
                    f"{name}: extend+prune pairs/s, {options.tasks} tasks",
                    run(pairs(make, options.tasks)),
                )
            )
        for _ in range(options.runs):  # interleaved: the machine's load weighs on each alike
            for name, make, server_cpu in backends:
                measure = hops(make, server_cpu)
                result = anyio.run(measure, backend_options=backend_options)
                pump_runs.setdefault(name, []).append(result)
        for depth in (1, 100):

            async def ping(depth: int = depth) -> float:
                return await redis_ping(url, options.seconds, depth)

            label = "sequential" if depth == 1 else f"pipelined x{depth}"
            rows.append((f"redis-py PING/s, {label} (floor)", run(ping)))

    pump = {
        name: PumpRun(*(statistics.median(field) for field in zip(*runs, strict=True)))
        for name, runs in pump_runs.items()
    }
    width = max(len(name) for name, _ in rows)
    print(f"{'measurement':<{width}}  {'per second':>12}")
    for name, value in rows:
        print(f"{name:<{width}}  {value:>12,.0f}")
    ratios = {
        name: run.hops_per_second / pump["memory"].hops_per_second for name, run in pump.items()
    }
    print(
        f"\npump, {options.pump_tasks} conversations in flight (medians of {options.runs} "
        "interleaved runs; CPU in us per hop)"
    )
    print(f"{'backend':<8} {'hops/s':>9} {'vs memory':>9} {'process CPU':>11} {'server CPU':>10}")
    for name, result in pump.items():
        server = "" if math.isnan(result.server_cpu_us) else f"{result.server_cpu_us:.1f}"
        print(
            f"{name:<8} {result.hops_per_second:>9,.0f} {ratios[name]:>9.2f} "
            f"{result.process_cpu_us:>11.1f} {server:>10}"
        )
    if "redis" in pump:
        extra = pump["redis"].process_cpu_us - pump["memory"].process_cpu_us
        print(f"redis client CPU per hop beyond the memory backend's: {extra:.1f} us")
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
                "pump_tasks": options.pump_tasks,
                "conversations": options.conversations,
                "results": {name: round(value, 1) for name, value in rows},
                "pump_ratio_to_memory": {name: round(r, 3) for name, r in ratios.items()},
                "pump": {
                    name: {
                        "hops_per_second": round(result.hops_per_second, 1),
                        "process_cpu_us_per_hop": round(result.process_cpu_us, 2),
                        "server_cpu_us_per_hop": (
                            None
                            if math.isnan(result.server_cpu_us)
                            else round(result.server_cpu_us, 2)
                        ),
                        "runs": [run._asdict() for run in pump_runs[name]],
                    }
                    for name, result in pump.items()
                },
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
