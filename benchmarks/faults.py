"""The fault scenarios of issue 9, items 1-4, re-run and counted: answered, leaked, held.

Not a speed benchmark: each scenario drives the organism into a fault the way a user's service
would meet it (a busy Redis, cancelled callers, handlers that outlive their conversation or
swallow cancellation) and counts what a user would notice: requests that never finished,
conversations left in the backend, ingress slots and listener slots still held, how long a
caller or an exit waited. Run from the project root (needs ``redis-server`` on PATH; it starts
its own on a free port)::

    python benchmarks/faults.py [--stall-seconds 0]

Prints a table and writes benchmarks/results/faults.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.redis_server, handlers

from _results import write_results

from tests.fault_handlers import Work, sleepy
from tests.redis_server import RedisServer
from xml_pipeline import HandlerMetadata, HandlerResponse, Listener, Organism, payload
from xml_pipeline._config import BackendConfig


@payload
@dataclass
class Ping:
    n: int = 0


async def echo(msg: Ping, meta: HandlerMetadata) -> HandlerResponse:
    return HandlerResponse.respond(msg)


async def slow_or_fast(msg: Ping, meta: HandlerMetadata) -> HandlerResponse:
    if msg.n == 1:
        await asyncio.sleep(5)
    return HandlerResponse.respond(msg)


async def swallower(msg: Ping, meta: HandlerMetadata) -> HandlerResponse | None:
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(10)
    return HandlerResponse.respond(msg) if msg.n else None


async def stubborn(msg: Ping, meta: HandlerMetadata) -> None:
    """Ignores every cancel for up to 10 s."""
    until = time.monotonic() + 10
    while time.monotonic() < until:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.05)


Row = tuple[str, str, object]


def _slots(org: Organism) -> int:
    """Ingress slots held (private state: a benchmark may look inside)."""
    return int(org._running()._ingress.open)


def _redis_org(url: str, prefix: str, **options: Any) -> Organism:
    backend = BackendConfig(type="redis", redis_url=url, redis_prefix=prefix)
    return Organism([Listener("echo", Ping, echo)], backend=backend, **options)


async def _settle(tasks: list[asyncio.Task[Any]], seconds: float) -> tuple[int, int]:
    """Wait up to ``seconds``; returns (finished, still running)."""
    if tasks:
        await asyncio.wait(tasks, timeout=seconds)
    done = sum(t.done() for t in tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return done, len(tasks) - done


def _busy_redis(server: RedisServer, seconds: float) -> threading.Thread:
    """Another client runs a Lua busy loop: Redis answers nobody for ``seconds``."""
    script = (
        "local t0 = redis.call('TIME') local start = t0[1] * 1e6 + t0[2] "
        "while true do local t = redis.call('TIME') "
        "if t[1] * 1e6 + t[2] - start > tonumber(ARGV[1]) then break end end return 1"
    )

    def run() -> None:
        with server.client() as client:
            client.eval(script, 0, int(seconds * 1e6))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def item1(server: RedisServer) -> list[Row]:
    rows: list[Row] = []
    async with _redis_org(server.url, "f1a:") as org:
        await org.request("echo", Ping(), timeout=5)
        busy = _busy_redis(server, 0.3)
        await asyncio.sleep(0.05)
        tasks = [
            asyncio.ensure_future(org.request("echo", Ping(n=i), timeout=2)) for i in range(20)
        ]
        await asyncio.sleep(0.05)
        tasks[0].cancel()
        finished, stuck = await _settle(tasks[1:], 3.0)
        busy.join()
        await asyncio.sleep(0.2)
        rows += [
            ("1 busy Redis, 1 of 20 cancelled", "others finished within 3 s (of 19)", finished),
            ("1 busy Redis, 1 of 20 cancelled", "others still running", stuck),
            ("1 busy Redis, 1 of 20 cancelled", "ingress slots held after", _slots(org)),
        ]
    async with _redis_org(server.url, "f1b:") as org:
        rng = random.Random(7)

        async def bounded(i: int) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(org.request("echo", Ping(n=i), timeout=5), rng.random() / 50)

        tasks = [asyncio.ensure_future(bounded(i)) for i in range(2000)]
        finished, stuck = await _settle(tasks, 10.0)
        await asyncio.sleep(1.0)
        rows += [
            ("1 2,000 requests in random wait_for", "still running after 10 s", stuck),
            ("1 2,000 requests in random wait_for", "ingress slots held after", _slots(org)),
            (
                "1 2,000 requests in random wait_for",
                "conversations left",
                await org.registry.size() - 1,
            ),
        ]
    return rows


async def item2(server: RedisServer, stall: float) -> list[Row]:
    rows: list[Row] = []
    async with _redis_org(server.url, "f2a:") as org:
        rng = random.Random(11)
        loop = asyncio.get_running_loop()

        async def cut_short(i: int) -> None:
            task = asyncio.current_task()
            assert task is not None
            loop.call_later(rng.random() * 0.004, task.cancel)  # 0-4 ms after the call
            await org.request("echo", Ping(n=i), timeout=30)

        tasks = []
        for i in range(10_000):
            tasks.append(asyncio.ensure_future(cut_short(i)))
            if i % 100 == 99:
                await asyncio.sleep(0.001)
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(2.0)  # background undo has time to run
        cancelled = sum(1 for t in tasks if t.cancelled())
        rows += [
            ("2 10,000 requests cancelled 0-4 ms in", "requests cancelled", cancelled),
            ("2 10,000 requests cancelled 0-4 ms in", "conversations left in Redis",
             await org.registry.size() - 1),
        ]  # fmt: skip
    if stall > 0:
        async with _redis_org(server.url, "f2b:") as org:
            pid = server._process.pid if server._process else 0
            tasks = [
                asyncio.ensure_future(org.request("echo", Ping(n=i), timeout=60)) for i in range(50)
            ]
            await asyncio.sleep(0.05)
            os.kill(pid, signal.SIGSTOP)
            tasks += [
                asyncio.ensure_future(org.request("echo", Ping(n=i), timeout=60)) for i in range(50)
            ]
            await asyncio.sleep(stall)
            os.kill(pid, signal.SIGCONT)
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(3.0)
            failed = sum(1 for t in tasks if t.exception() is not None)
            rows += [
                (f"2 Redis stopped for {stall:g} s", "requests failed", failed),
                (
                    f"2 Redis stopped for {stall:g} s",
                    "conversations left",
                    await org.registry.size() - 1,
                ),
            ]
    return rows


async def _time(coro: Awaitable[Any]) -> tuple[float, str]:
    started = time.monotonic()
    try:
        await coro
        outcome = "answered"
    except Exception as exc:
        outcome = str(getattr(exc, "reason", type(exc).__name__))
    return time.monotonic() - started, outcome


async def item3() -> list[Row]:
    rows: list[Row] = []
    async with Organism([Listener("one", Ping, slow_or_fast, max_concurrency=1)]) as org:
        _, first = await _time(org.request("one", Ping(n=1), timeout=0.2))
        took, second = await _time(org.request("one", Ping(n=0), timeout=2))
        rows += [
            ("3 timeout 0.2 s on a 5 s handler, 1 slot", "first request", first),
            (
                "3 timeout 0.2 s on a 5 s handler, 1 slot",
                "next request",
                f"{second} in {took:.2f} s",
            ),
        ]
        task = asyncio.ensure_future(org.request("one", Ping(n=1), timeout=30))
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        took, after = await _time(org.request("one", Ping(n=0), timeout=2))
        rows.append(
            ("3 task.cancel() of the request, 1 slot", "next request", f"{after} in {took:.2f} s")
        )
    pool = Organism(
        [Listener("cpu", Work, sleepy, cpu_bound=True, timeout_seconds=30)],
        process_pool=_one_worker(),
    )
    async with pool:
        _, first = await _time(pool.request("cpu", Work(seconds=5.0), timeout=0.5))
        took, second = await _time(pool.request("cpu", Work(seconds=0.0), timeout=3))
        rows += [
            ("3 cpu_bound, timeout 0.5 s on a 5 s job, 1 worker", "first request", first),
            (
                "3 cpu_bound, timeout 0.5 s on a 5 s job, 1 worker",
                "next request",
                f"{second} in {took:.2f} s",
            ),
        ]
    return rows


def _one_worker() -> Any:
    from xml_pipeline._config import ProcessPoolConfig

    return ProcessPoolConfig(workers=1)


async def item4() -> list[Row]:
    rows: list[Row] = []
    org = Organism([Listener("s", Ping, swallower, timeout_seconds=1)], drain_timeout_seconds=2)
    async with org:
        took, outcome = await _time(org.request("s", Ping(n=1), timeout=5))
        rows.append(
            (
                "4 handler swallows the cancel, timeout 1 s",
                "request (timeout=5)",
                f"{outcome} after {took:.2f} s",
            )
        )
        rows.append(
            ("4 handler swallows the cancel, timeout 1 s", "stats.timeouts", org.stats.timeouts)
        )
    org = Organism([Listener("s", Ping, stubborn, timeout_seconds=1)], drain_timeout_seconds=2)
    async with org:
        await org.send("s", Ping(n=0))
        took, outcome = await _time(asyncio.wait_for(org.wait_idle(), 5))
        rows.append(
            ("4 handler ignores every cancel, timeout 1 s", "a send's conversation",
             f"{'ended' if outcome == 'answered' else outcome} after {took:.2f} s")
        )  # fmt: skip
    org = Organism([Listener("s", Ping, stubborn, timeout_seconds=60)], drain_timeout_seconds=2)
    async with org:
        for _ in range(3):
            await org.send("s", Ping(n=0))
        await asyncio.sleep(0.05)
        leaving = time.monotonic()
    rows.append(
        ("4 exit with drain_timeout_seconds=2", "exit took", f"{time.monotonic() - leaving:.2f} s")
    )
    await asyncio.sleep(0.1)
    alive = [
        t for t in asyncio.all_tasks()
        if t.get_coro().__qualname__.startswith("StreamPump.") and not t.done()  # type: ignore[union-attr]
    ]  # fmt: skip
    rows.append(("4 exit with drain_timeout_seconds=2", "pump tasks alive after exit", len(alive)))
    return rows


async def main(options: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    with RedisServer() as server:
        scenarios: list[Callable[[], Awaitable[list[Row]]]] = [
            lambda: item1(server),
            lambda: item2(server, options.stall_seconds),
            item3,
            item4,
        ]
        for scenario in scenarios:
            try:
                rows += await scenario()
            except Exception as exc:  # a scenario that breaks the organism is a figure too
                rows.append((getattr(scenario, "__name__", "scenario"), "raised", repr(exc)[:80]))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--stall-seconds",
        type=float,
        default=0,
        help="also stop Redis (SIGSTOP) this long under 100 opening requests (25 in the issue)",
    )
    options = parser.parse_args()
    import uvloop

    rows = uvloop.run(main(options))
    width = max(len(s) for s, _, _ in rows)
    for scenario, what, value in rows:
        print(f"{scenario:<{width}}  {what:<40}  {value}")
    write_results(
        "faults", options, rows=[{"scenario": s, "what": w, "value": str(v)} for s, w, v in rows]
    )
