"""What a dead letter costs to keep: appends per backend, and Redis's exact trimming against
approximate trimming.

Run from the project root (needs ``redis-server`` on PATH; it starts its own on a free port,
without persistence, like the other benchmarks)::

    python benchmarks/bench_dead_letters.py [--runs 5] [--letters 2000] [--max-entries 1000]

Each row appends ``--letters`` dead letters (a 1 KB envelope each) to a queue already full at
``--max-entries``, so that every append also drops the oldest entry, as in steady state:

- ``memory`` and ``redis``: ``add_dead_letters`` one letter per call, awaited in turn (what a
  lone failure costs: one round trip on Redis), and 100 per call (what the pump's writer does
  when many fail at once, at shutdown say). Wall time per letter in this process, and for Redis
  redis-server's CPU per letter (``INFO cpu``, user + system).
- ``XADD MAXLEN =`` against ``XADD MAXLEN ~``: redis-server's own time per ``XADD`` command
  (``INFO commandstats``, ``usec_per_call``), the same fields, sent through a pipeline; the
  backend trims exactly (see xml_pipeline/backends/redis.py), this is what that costs.

Rows take turns within every run; figures are medians over runs. Prints a table and writes
benchmarks/results/bench_dead_letters.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.redis_server

from _results import write_results

from tests.redis_server import RedisServer
from xml_pipeline.backends import Backend, DeadLetter, MemoryBackend, RedisBackend

ENVELOPE = b"<message><meta/><Job>" + b"x" * 1000 + b"</Job></message>"


def letter(n: int) -> DeadLetter:
    return DeadLetter(
        f"conversation-{n:08d}", "handler_error", "'worker' raised RuntimeError: down",
        "worker", envelope=ENVELOPE, chain=("front", "worker"), attempts=1,
    )  # fmt: skip


def server_cpu(client: redis.Redis) -> float:
    info: dict[str, Any] = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def fill(backend: Backend, max_entries: int) -> None:
    """Bring the queue to ``max_entries``: every append that follows drops the oldest."""
    for at in range(0, max_entries, 500):
        await backend.add_dead_letters([letter(n) for n in range(at, at + 500)], max_entries)


async def appends(backend: Backend, count: int, per_call: int, max_entries: int) -> float:
    """Seconds per letter, appending ``count`` letters ``per_call`` at a time."""
    batches = [
        [letter(n) for n in range(at, min(at + per_call, count))]
        for at in range(0, count, per_call)
    ]
    started = time.perf_counter()
    for batch in batches:
        await backend.add_dead_letters(batch, max_entries)
    return (time.perf_counter() - started) / count


def xadd_usec(client: redis.Redis, key: str, exact: bool, count: int, max_entries: int) -> float:
    """redis-server's microseconds per XADD with exact or approximate trimming, full stream."""
    fields: dict[Any, Any] = {
        "c": "conversation", "r": "handler_error", "m": "message", "l": "worker",
        "h": "front worker", "a": "1", "e": ENVELOPE,
    }  # fmt: skip
    with client.pipeline(transaction=False) as pipe:
        for _ in range(max_entries):
            pipe.xadd(key, fields)
        pipe.execute()
    client.config_resetstat()
    with client.pipeline(transaction=False) as pipe:
        for _ in range(count):
            pipe.xadd(key, fields, maxlen=max_entries, approximate=not exact)
        pipe.execute()
    stats: dict[str, Any] = client.info("commandstats")
    client.delete(key)
    return float(stats["cmdstat_xadd"]["usec_per_call"])


async def one_run(server: RedisServer, options: argparse.Namespace) -> dict[str, float]:
    count, most = options.letters, options.max_entries
    row: dict[str, float] = {}
    for per_call in (1, 100):
        memory = MemoryBackend()
        await fill(memory, most)
        row[f"memory, {per_call} per call: us/letter"] = (
            await appends(memory, count, per_call, most) * 1e6
        )
        backend = RedisBackend(server.url, prefix=f"bench-{uuid.uuid4().hex[:8]}:")
        await backend.open()
        try:
            await fill(backend, most)
            with server.client() as client:
                cpu = server_cpu(client)
                seconds = await appends(backend, count, per_call, most)
                cpu = server_cpu(client) - cpu
        finally:
            await backend.aclose()
        row[f"redis, {per_call} per call: us/letter"] = seconds * 1e6
        row[f"redis, {per_call} per call: server us/letter"] = cpu / count * 1e6
    with server.client() as client:
        for exact in (True, False):
            name = f"XADD MAXLEN {'=' if exact else '~'}: server us/command"
            row[name] = xadd_usec(client, f"bench-xadd-{uuid.uuid4().hex}", exact, count, most)
        client.flushall()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--letters", type=int, default=2000)
    parser.add_argument("--max-entries", type=int, default=1000)
    options = parser.parse_args()
    runs: list[dict[str, float]] = []
    with RedisServer() as server:
        for _ in range(options.runs):
            runs.append(anyio.run(one_run, server, options, backend_options={"use_uvloop": True}))
    medians = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
    width = max(len(name) for name in medians)
    print(f"{'row':<{width}}  median")
    for name, value in medians.items():
        print(f"{name:<{width}}  {value:8.1f}")
    write_results("bench_dead_letters", options, medians=medians, runs=runs)


if __name__ == "__main__":
    main()
