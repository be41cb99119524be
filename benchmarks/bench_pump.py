"""Pump throughput and latency, against a bare asyncio.Queue ping-pong floor in the same run.

The organism: request -> A -> B -> answer to A -> answer out, i.e. 4 hops per conversation
(three handler runs plus the answer delivered to the requester), every payload checked at
every hop, each hop recorded in the conversation history (and once with history off).
Prints a table and writes benchmarks/results/bench_pump.json.

    python benchmarks/bench_pump.py [--runs 5] [--conversations 50000] [--concurrency 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from xml_pipeline import HandlerMetadata, HandlerResponse, Listener, Organism, payload

HOPS_PER_CONVERSATION = 4
RESULTS = Path(__file__).parent / "results"


@payload
@dataclass
class Task:
    text: str
    priority: int = 1


@payload
@dataclass
class Work:
    text: str


@payload
@dataclass
class Done:
    text: str
    ok: bool = True


async def a(msg: Task | Done, meta: HandlerMetadata) -> HandlerResponse:
    if isinstance(msg, Task):
        return HandlerResponse(Work(text=msg.text), to="b")
    return HandlerResponse.respond(msg)


async def b(msg: Work, meta: HandlerMetadata) -> HandlerResponse:
    return HandlerResponse.respond(Done(text=msg.text))


def organism(**options: Any) -> Organism:
    listeners = [
        Listener("a", Task, a, peers=("b",), max_concurrency=64),
        Listener("b", Work, b, max_concurrency=64),
    ]
    return Organism(listeners, **options)


async def load(org: Organism, conversations: int, concurrency: int) -> float:
    """Hops per second with ``concurrency`` conversations in flight."""
    per_worker = conversations // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            await org.request("a", Task(text="hello"), timeout=60)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return per_worker * concurrency * HOPS_PER_CONVERSATION / elapsed


async def latency(org: Organism, n: int) -> tuple[float, float]:
    """p50 and p99 round trip in microseconds, one conversation at a time."""
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await org.request("a", Task(text="hello"), timeout=60)
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


async def queue_floor(n: int) -> float:
    """Hops per second of a bare asyncio.Queue ping-pong between two tasks."""
    there: asyncio.Queue[int] = asyncio.Queue()
    back: asyncio.Queue[int] = asyncio.Queue()

    async def echo() -> None:
        for _ in range(n):
            back.put_nowait(await there.get())

    task = asyncio.get_running_loop().create_task(echo())
    start = time.perf_counter()
    for i in range(n):
        there.put_nowait(i)
        await back.get()
    elapsed = time.perf_counter() - start
    await task
    return 2 * n / elapsed


async def one_run(args: argparse.Namespace, history: bool) -> dict[str, float]:
    floor = await queue_floor(100_000)
    org = organism(ingress_limit=args.concurrency, history=history)
    async with org:
        await load(org, 2000, 100)  # warm up
        hops = await load(org, args.conversations, args.concurrency)
        p50, p99 = await latency(org, 5000)
    return {"hops_per_s": hops, "p50_us": p50, "p99_us": p99, "queue_floor_hops_per_s": floor}


def run(
    loop_name: str, factory: Callable[[], asyncio.AbstractEventLoop], args: Any, history: bool
) -> dict:
    runs = []
    for _ in range(args.runs):
        with asyncio.Runner(loop_factory=factory) as runner:
            runs.append(runner.run(_coro(one_run, args, history)))
    medians = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    medians["ratio_to_floor"] = statistics.median(
        r["hops_per_s"] / r["queue_floor_hops_per_s"] for r in runs
    )
    name = loop_name + ("" if history else ", no history")
    return {"loop": name, "history": history, "runs": runs, "median": medians}


def _coro(fn: Callable[..., Coroutine[Any, Any, Any]], *a: Any) -> Coroutine[Any, Any, Any]:
    return fn(*a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--conversations", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=10_000)
    args = parser.parse_args()
    results = [
        run("uvloop", uvloop.new_event_loop, args, history=True),
        run("uvloop", uvloop.new_event_loop, args, history=False),
        run("asyncio", asyncio.new_event_loop, args, history=True),
    ]
    header = (
        f"{'loop':20} {'hops/s':>10} {'p50 us':>8} {'p99 us':>8} {'floor hops/s':>13} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        m = r["median"]
        print(
            f"{r['loop']:20} {m['hops_per_s']:>10,.0f} {m['p50_us']:>8.1f} {m['p99_us']:>8.1f} "
            f"{m['queue_floor_hops_per_s']:>13,.0f} {m['ratio_to_floor']:>6.2f}"
        )
    print(
        f"(medians of {args.runs} runs; {args.conversations:,} conversations, "
        f"{args.concurrency:,} in flight; {HOPS_PER_CONVERSATION} hops each)"
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "bench_pump.json"
    out.write_text(
        json.dumps({"python": sys.version, "args": vars(args), "results": results}, indent=2)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
