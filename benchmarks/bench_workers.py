"""The process pool: single-hop overhead, throughput under load, multi-worker speed-up.

Three figures, each against a baseline measured in the same run; the rows take turns within
every run and the table shows medians over the runs:

- single hop: a trivial job (1 PBKDF2 round) sent straight to the cpu_bound listener of the
  shipped organism ``organisms/hasher``, one at a time, against a bare
  ``ProcessPoolExecutor.submit(fn).result()`` round trip of a trivial function (for
  information: a hop is about 2-2.7x, the earlier 1.5x target is withdrawn);
- throughput: ``inflight`` callers (16) each awaiting trivial calls (``os.getpid``) back to
  back on 2 forkserver workers, ``ProcessPool.run`` against
  ``asyncio.wrap_future(executor.submit(...))`` on a bare executor, the two taking turns in
  ``chunks`` slices of ``load-calls`` calls (target: at least 0.8x); the parent's CPU time per
  call (all its threads) is shown beside it;
- speed-up: 16 heavy jobs in flight through the hasher organism with 1 worker and with 2
  workers (target 1.8x on 2 cores).

    python benchmarks/bench_workers.py [--runs 5] [--calls 500] [--load-calls 4000]
        [--inflight 16] [--chunks 8] [--rounds 400000]

Prints a table and writes benchmarks/results/bench_workers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import uvloop
from _results import write_results

from xml_pipeline import Organism
from xml_pipeline._config import ProcessPoolConfig, load_config
from xml_pipeline._runtime.pool import ProcessPool

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = multiprocessing.get_context("forkserver")


def bare_round_trip_us(calls: int) -> float:
    """Median microseconds of ``submit(os.getpid).result()`` on a 2-worker forkserver pool."""
    with ProcessPoolExecutor(2, mp_context=CONTEXT) as executor:
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


async def _under_load(
    call: Callable[[], Awaitable[object]], calls: int, inflight: int
) -> tuple[float, float]:
    """(seconds, parent CPU seconds) for ``calls`` calls made by ``inflight`` callers."""

    async def caller() -> None:
        for _ in range(calls // inflight):
            await call()

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(caller() for _ in range(inflight)))
    return time.perf_counter() - wall, time.process_time() - cpu


async def throughput(calls: int, inflight: int, chunks: int) -> dict[str, float]:
    """Trivial calls with ``inflight`` in flight on 2 workers, bare executor and ProcessPool:
    calls per second and parent CPU microseconds per call. The two take turns ``chunks``
    times, so that a burst of load from elsewhere on the machine hits both alike."""
    with ProcessPoolExecutor(2, mp_context=CONTEXT) as executor:
        async with ProcessPool(2) as pool:

            async def bare() -> object:
                return await asyncio.wrap_future(executor.submit(os.getpid))

            async def pooled() -> object:
                return await pool.run(os.getpid)

            rows = {"bare": bare, "pool": pooled}
            for call in rows.values():  # warm every path
                await _under_load(call, inflight, inflight)
            spent = {name: [0.0, 0.0] for name in rows}
            chunk = calls // chunks // inflight * inflight
            for i in range(chunks):
                for name in list(rows)[:: 1 if i % 2 else -1]:
                    seconds, cpu = await _under_load(rows[name], chunk, inflight)
                    spent[name][0] += seconds
                    spent[name][1] += cpu
    found = {}
    for name, (seconds, cpu) in spent.items():
        found[f"{name}_per_s"] = chunk * chunks / seconds
        found[f"{name}_cpu_us"] = cpu / (chunk * chunks) * 1e6
    return found


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
    parser.add_argument("--load-calls", type=int, default=4000)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=400_000)
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        run = {"bare_us": bare_round_trip_us(args.calls)}
        run["pool_hop_us"] = uvloop.run(pool_hop_us(args.calls))
        run |= uvloop.run(throughput(args.load_calls, args.inflight, args.chunks))
        run["one_worker_s"] = uvloop.run(heavy_seconds(1, args.jobs, args.rounds))
        run["two_workers_s"] = uvloop.run(heavy_seconds(2, args.jobs, args.rounds))
        runs.append(run)
    med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    overhead = statistics.median(r["pool_hop_us"] / r["bare_us"] for r in runs)
    under_load = statistics.median(r["pool_per_s"] / r["bare_per_s"] for r in runs)
    cpu_ratio = statistics.median(r["pool_cpu_us"] / r["bare_cpu_us"] for r in runs)
    speedup = statistics.median(r["one_worker_s"] / r["two_workers_s"] for r in runs)
    n = args.inflight
    rows = [
        ("bare ProcessPoolExecutor round trip (us)", f"{med['bare_us']:.0f}"),
        ("pool hop via cpu_bound listener (us)", f"{med['pool_hop_us']:.0f}"),
        ("  ratio (for information)", f"{overhead:.2f}"),
        (f"bare executor, {n} in flight (calls/s)", f"{med['bare_per_s']:,.0f}"),
        (f"ProcessPool.run, {n} in flight (calls/s)", f"{med['pool_per_s']:,.0f}"),
        ("  ratio (target >= 0.8)", f"{under_load:.2f}"),
        ("bare executor, parent CPU per call (us)", f"{med['bare_cpu_us']:.0f}"),
        ("ProcessPool.run, parent CPU per call (us)", f"{med['pool_cpu_us']:.0f}"),
        ("  ratio", f"{cpu_ratio:.2f}"),
        (f"{args.jobs} heavy jobs, 1 worker (s)", f"{med['one_worker_s']:.2f}"),
        (f"{args.jobs} heavy jobs, 2 workers (s)", f"{med['two_workers_s']:.2f}"),
        ("  speed-up (target >= 1.8)", f"{speedup:.2f}"),
    ]
    print(f"{'measurement, median of ' + str(args.runs) + ' runs':44} {'median':>10}")
    for label, value in rows:
        print(f"{label:44} {value:>10}")
    write_results(
        "bench_workers",
        args,
        runs=runs,
        median=med,
        overhead_ratio=overhead,
        throughput_ratio=under_load,
        cpu_ratio=cpu_ratio,
        speedup=speedup,
    )


if __name__ == "__main__":
    main()
