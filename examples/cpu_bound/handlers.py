"""Handlers of the cpu_bound example: a CPU-heavy function in the pool, inline ones around it.

``crunch`` counts primes by trial division: pure Python, holding the GIL all along, the kind
of work that would stop an event loop. The ``cruncher`` listener runs it in a worker process
(``cpu_bound: true``); ``cruncher_inline`` runs it on the event loop, to show the difference.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

from xml_pipeline import HandlerMetadata, HandlerResponse, payload


@payload
@dataclass
class Count:
    """Count the primes below ``below``, in ``jobs`` jobs run at once."""

    below: int
    jobs: int = 4


@payload
@dataclass
class Range:
    """One job: the primes in ``start <= n < stop``."""

    start: int
    stop: int


@payload
@dataclass
class Part:
    """One job's answer: its count, the process that did it, and when (``time.monotonic()``,
    the same clock in every process of a machine)."""

    start: int
    stop: int
    count: int
    pid: int
    started: float
    finished: float


@payload
@dataclass
class Primes:
    """The desk's answer: the total and each job's part."""

    below: int
    count: int
    parts: list[Part] = field(default_factory=list)


@payload
@dataclass
class Ping:
    """Are you there?"""

    n: int = 0


async def desk(msg: Count, meta: HandlerMetadata) -> HandlerResponse:
    """Inline: split the count into jobs and await them all at once with ``meta.call``.

    While it waits, the desk holds no concurrency slot and the event loop is free: the jobs
    run in the pool's worker processes.
    """
    step = -(-msg.below // msg.jobs)  # ceiling division: the last job may be shorter
    ranges = [Range(start, min(start + step, msg.below)) for start in range(0, msg.below, step)]
    parts = await asyncio.gather(*(meta.call("cruncher", job) for job in ranges))
    return HandlerResponse.respond(
        Primes(below=msg.below, count=sum(p.count for p in parts), parts=list(parts))
    )


async def ping(msg: Ping, meta: HandlerMetadata) -> HandlerResponse:
    """Inline and instant."""
    return HandlerResponse.respond(msg)


def crunch(msg: Range, meta: HandlerMetadata) -> HandlerResponse:
    """Count the primes in the range by trial division.

    A plain function, so that it can run in a worker process (a ``cpu_bound`` handler may
    also be ``async def``). It must answer by returning: ``meta.call`` needs the event loop of
    the organism, which a worker process does not have (it raises `UsageError` there).
    """
    started = time.monotonic()
    count = sum(1 for n in range(msg.start, msg.stop) if is_prime(n))
    return HandlerResponse.respond(
        Part(msg.start, msg.stop, count, os.getpid(), started, time.monotonic())
    )


def is_prime(n: int) -> bool:
    """Trial division by odd numbers up to the square root: slow on purpose."""
    if n < 3:
        return n == 2
    if n % 2 == 0:
        return False
    divisor = 3
    while divisor * divisor <= n:
        if n % divisor == 0:
            return False
        divisor += 2
    return True
