"""Two processes on one Redis: what they share today, and what they do not.

    python examples/shared_state_redis/main.py [--redis-url URL]

The URL defaults to $REDIS_URL, else redis://127.0.0.1:6379/0. Process A starts a
conversation that its worker holds open; process B, running the same organism on the same
Redis, reads that conversation's records while it is open, then runs a task of its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread

from xml_pipeline import BackendError, HopEvent, Organism, load_config

HERE = Path(__file__).resolve().parent
DEFAULT_URL = "redis://127.0.0.1:6379/0"
WAIT = 30.0  # seconds one process waits for the other before giving up

SUMMARY = """\
Shared, through Redis: the thread registry of the organism, under its redis_prefix: the
  call-chain records, the conversations and their histories. B read A's conversation while it
  was open, and counted A's live records.
Not shared: work. Each process routes only the conversations it started, through its own
  listeners, and an answer reaches only the process waiting for it: A's task was done by A's
  worker, B's by B's. Two processes on one Redis are two organisms sharing state, not one
  organism spread over two processes."""


def open_organism(url: str) -> Organism:
    """This folder's organism on the Redis at ``url``; the rest of ``backend:`` as in the file."""
    config = load_config(HERE / "organism.yaml")
    return Organism.from_config(config, backend=dataclasses.replace(config.backend, redis_url=url))


async def receive(inbox: Any) -> Any:
    """The next message from the other process (waited for in a thread, off the event loop).

    Raises:
        queue.Empty: nothing came within ``WAIT`` seconds.
    """
    return await anyio.to_thread.run_sync(inbox.get, True, WAIT)


async def process_a(url: str, to_a: Any, to_b: Any) -> None:
    """Start a conversation the worker holds open, hand its id to B, release it once B looked."""
    async with open_organism(url) as org:
        from handlers import Done, Task, released  # the organism's own module

        holding = anyio.Event()

        def worker_started(event: object) -> None:
            if isinstance(event, HopEvent) and (event.kind, event.listener) == (
                "started",
                "worker",
            ):
                holding.set()

        org.hooks.subscribe(worker_started)
        await receive(to_a)  # B is up
        conversation = await org.send("desk", Task(text="held by A", hold=True))
        await holding.wait()
        print(f"A: started conversation {conversation}; its worker holds it open", flush=True)
        to_b.put(conversation)
        await receive(to_a)  # B has looked
        released.set()
        async for outcome in org.outcomes():  # the outcome of the conversation sent above
            done = outcome.answer
            assert isinstance(done, Done), outcome.error
            print(f"A: its task came back {done.text!r}, done by {whose(done.pid)}", flush=True)
            break
        print(f"A: conversations routed by this process: {org.stats.conversations}", flush=True)


async def process_b(url: str, to_a: Any, to_b: Any) -> None:
    """Read A's open conversation from Redis, then run a task of B's own."""
    async with open_organism(url) as org:
        from handlers import Done, Task

        to_a.put("ready")
        conversation = await receive(to_b)
        print(f"B: A's conversation {conversation}, as Redis holds it:", flush=True)
        for entry in await org.registry.history(conversation):
            print(f"  {entry.sender} -> {entry.to}: {entry.payload.decode()}", flush=True)
        print(f"B: its call chain: {await org.registry.lookup(conversation)}", flush=True)
        live = await org.registry.size()
        print(f"B: live records in Redis: {live} (the root, and A's two open calls)", flush=True)
        done = await org.request("desk", Task(text="asked by B"), timeout=WAIT, expect=Done)
        print(f"B: its own task came back {done.text!r}, done by {whose(done.pid)}", flush=True)
        print(f"B: conversations routed by this process: {org.stats.conversations}", flush=True)
        to_a.put("looked")


def whose(pid: int) -> str:
    """Which process ``pid`` is, as this process sees it."""
    here = multiprocessing.current_process().name
    return f"{here}'s own worker" if pid == os.getpid() else f"process {pid}, not {here}"


def run_a(url: str, to_a: Any, to_b: Any) -> None:
    anyio.run(process_a, url, to_a, to_b)


def run_b(url: str, to_a: Any, to_b: Any) -> None:
    anyio.run(process_b, url, to_a, to_b)


async def check(url: str) -> None:
    """Open the organism once on ``url``: fails at once, saying why, when Redis is unreachable.

    Raises:
        BackendError: Redis is unreachable (reason ``backend_unreachable``) or failed.
    """
    async with open_organism(url):
        pass


def shown(url: str) -> str:
    """``url`` without a password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(
        netloc=f"{parts.username or ''}:***@{parts.hostname}:{parts.port}"
    ).geturl()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--redis-url", help=f"the Redis to share (default: $REDIS_URL, else {DEFAULT_URL})"
    )
    given = parser.parse_args().redis_url
    if given is not None:
        url, source = given, "given by --redis-url"
    elif "REDIS_URL" in os.environ:
        url, source = os.environ["REDIS_URL"], "from $REDIS_URL"
    else:
        url, source = DEFAULT_URL, "the default: no --redis-url, no $REDIS_URL"
    try:
        anyio.run(check, url)
    except BackendError as exc:
        print(
            f"error: {exc}\n"
            f"This example shares the Redis at {shown(url)} ({source}).\n"
            "Start a redis-server there (redis-server alone listens on 127.0.0.1:6379), or give "
            "the URL of one that runs with --redis-url or $REDIS_URL.",
            file=sys.stderr,
        )
        return 1
    prefix = load_config(HERE / "organism.yaml").backend.redis_prefix
    print(
        f"Two processes, A and B, run this organism on the Redis at {shown(url)} ({prefix!r})",
        flush=True,  # before the children print: they share this output
    )
    # "spawn" starts each child as a fresh interpreter that imports this script again (as
    # macOS and Windows do by default): hence the `if __name__ == "__main__":` guard below.
    context = multiprocessing.get_context("spawn")
    to_a: Any = context.Queue()
    to_b: Any = context.Queue()
    processes = [
        context.Process(target=run, args=(url, to_a, to_b), name=name)
        for name, run in (("A", run_a), ("B", run_b))
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(3 * WAIT)
    failed = [p.name for p in processes if p.exitcode != 0]
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    if failed:
        print(f"error: process {' and '.join(failed)} failed (its error is above)", file=sys.stderr)
        return 1
    print(SUMMARY)
    return 0


if __name__ == "__main__":
    sys.exit(main())
