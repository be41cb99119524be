"""Run the cpu_bound example: python examples/cpu_bound/main.py (from anywhere).

A heartbeat pings the inline ``ping`` listener every 10 ms the whole time. First one job runs
on the event loop (``cruncher_inline``): no ping is answered until it is done. Then the inline
desk fans four jobs out to the ``cpu_bound`` cruncher: they run in worker processes, and the
pings go on being answered meanwhile.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio

from xml_pipeline import Organism

HERE = Path(__file__).resolve().parent
INLINE_BELOW = 150_000
BATCH_BELOW, BATCH_JOBS = 600_000, 4


async def main() -> None:
    async with Organism.from_yaml(HERE / "organism.yaml") as org:
        from handlers import Count, Ping, Primes, Range  # the organism's own module

        pongs: list[float] = []  # when each ping was answered, time.monotonic()

        async def heartbeat() -> None:
            while True:
                await org.request("ping", Ping(n=len(pongs)), timeout=30)
                pongs.append(time.monotonic())
                await anyio.sleep(0.01)

        def answered(start: float, end: float) -> int:
            return sum(start < pong < end for pong in pongs)

        async with anyio.create_task_group() as group:
            group.start_soon(heartbeat)
            await org.request("desk", Count(below=1000, jobs=2), timeout=60)  # workers started

            part = await org.request("cruncher_inline", Range(0, INLINE_BELOW), timeout=60)
            took = part.finished - part.started
            print(
                f"inline: {part.count} primes below {INLINE_BELOW}, on the event loop, {took:.2f} s"
            )
            print(f"  pings answered while it ran: {answered(part.started, part.finished)}")

            primes = await org.request(
                "desk", Count(below=BATCH_BELOW, jobs=BATCH_JOBS), timeout=60, expect=Primes
            )
            start = min(p.started for p in primes.parts)
            end = max(p.finished for p in primes.parts)
            pids = {p.pid for p in primes.parts}
            print(
                f"cpu_bound: {primes.count} primes below {BATCH_BELOW}, {BATCH_JOBS} jobs at once, "
                f"{end - start:.2f} s"
            )
            print(f"  ran in worker processes {sorted(pids)}; this one is {os.getpid()}")
            print(f"  pings answered while they ran: {answered(start, end)}")
            group.cancel_scope.cancel()


# The pool's worker processes start by importing this script again ("forkserver" and "spawn"
# start a fresh interpreter), so nothing may start an organism at import time: without this
# guard the organism would not start, with a UsageError saying to add it.
if __name__ == "__main__":
    anyio.run(main)
