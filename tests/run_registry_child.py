"""An organism process for the run-registry tests: ``python -m tests.run_registry_child URL
PREFIX``. It shares a Redis backend, keeps two requests to a listener that sleeps running,
and answers commands on stdin, one per line, with one line on stdout:

    (at start)        ready <process id> <run id> <run id>
    runs              runs <JSON list of [run id, status] of all_runs()>
    cancel <run id>   cancelled <run id>   (or: error <UnknownIdError|UsageError> <message>)
    (a request ends)  failed <reason>      (or: answered)
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import anyio
import anyio.abc

from xml_pipeline import (
    BackendConfig,
    DeliveryError,
    HandlerMetadata,
    HandlerResponse,
    Listener,
    Organism,
    UsageError,
    payload,
)

# what the tests configure: a fast heartbeat, and lost after 1 s without one
RUNS = {"heartbeat_seconds": 0.2, "lost_after_seconds": 1.0, "forget_after_seconds": 30.0}


@payload
@dataclass
class Nap:
    seconds: float = 120.0


async def sleeper(msg: Nap, meta: HandlerMetadata) -> HandlerResponse:
    meta.progress("asleep")
    await anyio.sleep(msg.seconds)
    return HandlerResponse.respond(Nap(seconds=0))


def say(line: str) -> None:
    print(line, flush=True)


async def main(url: str, prefix: str) -> None:
    backend = BackendConfig(type="redis", redis_url=url, redis_prefix=prefix)
    org = Organism([Listener("sleeper", Nap, sleeper, timeout_seconds=300)], backend=backend,
                   runs=RUNS, drain_timeout_seconds=0.5)  # fmt: skip
    async with org, anyio.create_task_group() as tg:

        async def ask() -> None:
            try:
                await org.request("sleeper", Nap(), timeout=300)
            except DeliveryError as exc:
                say(f"failed {exc.reason}")
            else:
                say("answered")

        tg.start_soon(ask)
        tg.start_soon(ask)
        with anyio.fail_after(20):
            while len(org.runs(status="running")) < 2:
                await anyio.sleep(0.01)
        ids = sorted(run.run_id for run in org.runs(status="running"))
        say(f"ready {org.process} {' '.join(ids)}")
        stdin = anyio.wrap_file(sys.stdin)
        async for line in stdin:
            command, _, arg = line.strip().partition(" ")
            if command == "runs":
                runs = await org.all_runs()
                say("runs " + json.dumps([[run.run_id, run.status] for run in runs]))
            elif command == "cancel":
                try:
                    await org.cancel_run(arg)
                except UsageError as exc:
                    say(f"error {type(exc).__name__} {exc.message}")
                else:
                    say(f"cancelled {arg}")
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
