"""Round trips to a worker process: the executor against a plain pipe, from an event loop.

Run from the project root::

    python benchmarks/bench_transport.py [--runs 5] [--calls 2000]

Evidence for a design decision, not a product path: a cpu_bound hop cannot be cheaper than
the transport under it. Rows, each a round trip of a trivial call to an idle worker process
(forkserver), the rows taking turns within every run:

    a. ``executor.submit(fn).result()`` from a blocked thread (issue 5's baseline)
    b. ``await asyncio.wrap_future(executor.submit(fn))`` on uvloop
    c. ``await pool.run(fn)`` (xml_pipeline's ProcessPool) on uvloop
    d. a message over a pipe to a process that echoes it, the parent waiting in uvloop

a to c pass through the executor's management and queue-feeder threads; d does not.
Prints a table (median microseconds, ratio to row a in the same run) and writes
``benchmarks/results/bench_transport.json``.
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
from multiprocessing.connection import Connection

import uvloop
from _results import write_results

from xml_pipeline._runtime.pool import ProcessPool

CONTEXT = multiprocessing.get_context("forkserver")


def _echo(conn: Connection) -> None:
    """Worker of row d: send back every message until the parent closes its end."""
    while True:
        try:
            conn.send_bytes(conn.recv_bytes())
        except EOFError:
            return


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def blocking_round_trip(executor: ProcessPoolExecutor, calls: int) -> float:
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        executor.submit(os.getpid).result()
        samples.append(time.perf_counter() - t0)
    return _median_us(samples)


async def awaited_round_trip(call: Callable[[], Awaitable[object]], calls: int) -> float:
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - t0)
    return _median_us(samples)


class _PipeEcho:
    """Row d: one echo process; ``await echo()`` is one round trip of a 200-byte message."""

    def __init__(self) -> None:
        self.conn, child = CONTEXT.Pipe()
        self.process = CONTEXT.Process(target=_echo, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.waiter: asyncio.Future[bytes] | None = None
        loop = asyncio.get_running_loop()
        loop.add_reader(self.conn.fileno(), self._readable)

    def _readable(self) -> None:
        data = self.conn.recv_bytes()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(data)

    async def __call__(self) -> bytes:
        self.waiter = asyncio.get_running_loop().create_future()
        self.conn.send_bytes(b"x" * 200)
        return await self.waiter

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.conn.fileno())
        self.conn.close()
        self.process.join(5)


async def one_run(executor: ProcessPoolExecutor, calls: int) -> dict[str, float]:
    async with ProcessPool(2) as pool:
        echo = _PipeEcho()
        try:
            for _ in range(50):  # warm every path
                executor.submit(os.getpid).result()
                await pool.run(os.getpid)
                await echo()
            return {
                "a": blocking_round_trip(executor, calls),
                "b": await awaited_round_trip(
                    lambda: asyncio.wrap_future(executor.submit(os.getpid)), calls
                ),
                "c": await awaited_round_trip(lambda: pool.run(os.getpid), calls),
                "d": await awaited_round_trip(echo, calls),
            }
        finally:
            echo.close()


ROWS = {
    "a": "a. executor submit().result(), blocked thread",
    "b": "b. await wrap_future(submit()), uvloop",
    "c": "c. await ProcessPool.run(), uvloop",
    "d": "d. pipe to an echo process, uvloop",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    runs = []
    with ProcessPoolExecutor(2, mp_context=CONTEXT) as executor:
        for _ in range(args.runs):
            runs.append(uvloop.run(one_run(executor, args.calls)))
    print(f"{'round trip of a trivial call':48} {'us':>8} {'x a':>6}")
    table = {}
    for key, label in ROWS.items():
        us = statistics.median(r[key] for r in runs)
        ratio = statistics.median(r[key] / r["a"] for r in runs)
        table[key] = {"label": label, "us": us, "x_a": ratio}
        print(f"{label:48} {us:>8.0f} {ratio:>6.2f}")
    write_results("bench_transport", args, runs=runs, median=table)


if __name__ == "__main__":
    main()
