"""Per-call overhead of `ProcessPool.run` against bare `ProcessPoolExecutor` round trips.

Run from the project root::

    python benchmarks/bench_pool.py [--runs 7] [--calls 1000] [--workers 2]

Each row times ``calls`` calls of a trivial function (``operator.add(1, 2)``) on a bare
executor and on a pool with the same number of forkserver workers, in one process. The rows
take turns within every run; the table shows the median of ``runs`` runs, and for each row the
median ratio to the baseline timed in the same run:

    a. ``executor.submit(...).result()``, blocking (the baseline)
    b. ``await asyncio.wrap_future(executor.submit(...))``
    c. ``await pool.run(...)``
    d. (for information) b and c with 64 concurrent callers, in calls per second; the pool
       keeps up to eight calls per worker in the executor (one per worker with
       ``max_tasks_per_child``); ``bench_workers.py`` has the throughput target

a to c are sequential round trips, on asyncio and on uvloop. Prints a table and writes
``benchmarks/results/bench_pool.json``. The target is row c within 1.5x of row a.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import operator
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import anyio

from xml_pipeline._runtime.pool import ProcessPool

RESULTS = Path(__file__).parent / "results" / "bench_pool.json"
TARGET = 1.5
CALLERS = 64
Rows = dict[str, list[float]]


def _bare(executor: ProcessPoolExecutor, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        executor.submit(operator.add, 1, 2).result()
    return time.perf_counter() - t0


async def _sequential(call: Callable[[], Awaitable[object]], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        await call()
    return time.perf_counter() - t0


async def _concurrent(call: Callable[[], Awaitable[object]], calls: int) -> float:
    async def caller() -> None:
        for _ in range(calls // CALLERS):
            await call()

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(CALLERS):
            tg.start_soon(caller)
    return time.perf_counter() - t0


async def _measure(executor: ProcessPoolExecutor, workers: int, runs: int, calls: int) -> Rows:
    """Seconds per run of each row; the rows take turns so that load drifts hit all alike."""

    async def wrapped() -> object:
        return await asyncio.wrap_future(executor.submit(operator.add, 1, 2))

    times: Rows = {}
    async with ProcessPool(workers) as pool:

        async def run() -> object:
            return await pool.run(operator.add, 1, 2)

        for round_ in range(runs + 1):  # round 0 warms up
            found = {
                "bare": _bare(executor, calls),
                "wrap_future": await _sequential(wrapped, calls),
                "pool.run": await _sequential(run, calls),
                "wrap_future concurrent": await _concurrent(wrapped, calls),
                "pool.run concurrent": await _concurrent(run, calls),
            }
            for name, seconds in found.items():
                if round_:
                    times.setdefault(name, []).append(seconds)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    context = multiprocessing.get_context("forkserver")
    measured: dict[str, Rows] = {}
    with ProcessPoolExecutor(args.workers, mp_context=context) as executor:
        for loop, options in [("asyncio", {}), ("uvloop", {"use_uvloop": True})]:
            measured[loop] = anyio.run(
                _measure, executor, args.workers, args.runs, args.calls, backend_options=options
            )

    us = {
        loop: {n: statistics.median(t) / args.calls * 1e6 for n, t in rows.items()}
        for loop, rows in measured.items()
    }
    # the ratio of each round to the baseline timed just before it, then the median
    ratio = {
        loop: {
            n: statistics.median(a / b for a, b in zip(t, rows["bare"], strict=True))
            for n, t in rows.items()
        }
        for loop, rows in measured.items()
    }
    print(
        f"{args.workers} forkserver workers, {args.calls} calls per run, median of "
        f"{args.runs} runs, Python {platform.python_version()}\n"
    )
    print(f"{'sequential round trip of operator.add(1, 2)':48} {'us/call':>8} {'x a':>6}")
    labels = {
        "bare": "a. submit().result()",
        "wrap_future": "b. await wrap_future(submit())",
        "pool.run": "c. await pool.run()",
    }
    for loop in measured:
        for name, label in labels.items():
            print(f"{label + ', ' + loop:48} {us[loop][name]:>8.1f} {ratio[loop][name]:>6.2f}")
    print(f"\n{CALLERS} concurrent callers{'':29} {'calls/s':>8}")
    for loop in measured:
        for name in ("wrap_future concurrent", "pool.run concurrent"):
            print(f"{'d. ' + name + ', ' + loop:48} {1e6 / us[loop][name]:>8,.0f}")
    worst = max(r["pool.run"] for r in ratio.values())
    met = worst <= TARGET
    print(f"\ntarget: c within {TARGET}x of a -> {worst:.2f}x {'OK' if met else 'MISSED'}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "python": platform.python_version(),
        "workers": args.workers,
        "calls": args.calls,
        "runs": args.runs,
        "us_per_call": us,
        "x_baseline": ratio,
        "target_c_within_1_5x_of_a": met,
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
