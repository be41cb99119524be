"""cpu_bound listeners: process-pool hop overhead and multi-worker speed-up.

Uses the shipped organism ``organisms/hasher`` (PBKDF2 in a worker process):

- overhead: a trivial job (1 PBKDF2 round) sent straight to the cpu_bound listener, one at a
  time, against a bare ``ProcessPoolExecutor.submit(fn).result()`` round trip of a trivial
  function measured in the same run (target: within 1.5x);
- speed-up: 16 heavy jobs in flight with 1 worker and with 2 workers (target 1.8x on 2 cores).

    python benchmarks/bench_workers.py [--runs 5] [--calls 500] [--rounds 400000]

Prints a table (medians) and writes benchmarks/results/bench_workers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import uvloop
from _results import write_results

from xml_pipeline import Organism
from xml_pipeline._config import ProcessPoolConfig, load_config

ROOT = Path(__file__).resolve().parents[1]


def bare_round_trip_us(calls: int) -> float:
    """Median microseconds of ``submit(os.getpid).result()`` on a 2-worker forkserver pool."""
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(2, mp_context=context) as executor:
        for _ in range(20):
            executor.submit(os.getpid).result()  # start and warm both workers
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            executor.submit(os.getpid).result()
            samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def hasher(workers: int) -> Organism:
    config = load_config(ROOT / "organisms" / "hasher" / "organism.yaml")
    pool = ProcessPoolConfig(workers=workers, max_tasks_per_child=None)
    return Organism.from_config(replace(config, process_pool=pool))


async def pool_hop_us(calls: int) -> float:
    """Median microseconds of one request to the cpu_bound listener (one pool hop)."""
    async with hasher(2) as org:
        job = org.listeners[1].payload_class(data="x", rounds=1)
        for _ in range(20):
            await org.request("hasher", job)
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            await org.request("hasher", job)
            samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


async def heavy_seconds(workers: int, jobs: int, rounds: int) -> float:
    """Seconds for ``jobs`` heavy jobs, all in flight, on ``workers`` workers."""
    async with hasher(workers) as org:
        job_class = org.listeners[1].payload_class
        await org.request("hasher", job_class(data="warm", rounds=1))
        start = time.perf_counter()
        await asyncio.gather(
            *(org.request("desk", job_class(data=str(i), rounds=rounds), timeout=600)
              for i in range(jobs))
        )  # fmt: skip
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=400_000)
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        bare = bare_round_trip_us(args.calls)
        hop = uvloop.run(pool_hop_us(args.calls))
        one = uvloop.run(heavy_seconds(1, args.jobs, args.rounds))
        two = uvloop.run(heavy_seconds(2, args.jobs, args.rounds))
        runs.append(
            {"bare_us": bare, "pool_hop_us": hop, "one_worker_s": one, "two_workers_s": two}
        )
    med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    overhead = statistics.median(r["pool_hop_us"] / r["bare_us"] for r in runs)
    speedup = statistics.median(r["one_worker_s"] / r["two_workers_s"] for r in runs)
    print(f"{'measurement':44} {'median':>10}")
    print(f"{'bare ProcessPoolExecutor round trip (us)':44} {med['bare_us']:>10.0f}")
    print(f"{'pool hop via cpu_bound listener (us)':44} {med['pool_hop_us']:>10.0f}")
    print(f"{'  ratio (target <= 1.5)':44} {overhead:>10.2f}")
    print(f"{f'{args.jobs} heavy jobs, 1 worker (s)':44} {med['one_worker_s']:>10.2f}")
    print(f"{f'{args.jobs} heavy jobs, 2 workers (s)':44} {med['two_workers_s']:>10.2f}")
    print(f"{'  speed-up (target >= 1.8)':44} {speedup:>10.2f}")
    write_results(
        "bench_workers", args, runs=runs, median=med, overhead_ratio=overhead, speedup=speedup
    )


if __name__ == "__main__":
    main()
