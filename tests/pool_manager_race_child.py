"""A child process for tests/runtime/test_pool.py: the executor's manager thread dies (the
simulated max_tasks_per_child race) as the only worker exits after answering, in a process of
its own, because the race patches CPython's concurrent.futures internals and threading's
excepthook (run in the suite's process after the other race tests, it left the pool without its
replacement about one time in eight). Prints one JSON line: what the pool counted and how the
manager thread died."""

from __future__ import annotations

import json
import threading
import traceback
from concurrent.futures import process as cf_process
from typing import Any

import anyio

from tests import pool_tasks
from xml_pipeline._runtime.pool import ProcessPool

fired = threading.Event()
hidden: list[Any] = []
errors: list[Any] = []


def hide_the_exiting_worker(thread: Any, result_item: Any) -> None:
    pid = getattr(result_item, "exit_pid", None)
    if pid is not None and not fired.is_set():
        hidden.append(thread.processes.pop(pid))
        fired.set()
    original(thread, result_item)


original = cf_process._ExecutorManagerThread.process_result_item


async def main() -> None:
    with anyio.fail_after(30):
        async with ProcessPool(1, max_tasks_per_child=1) as pool:
            answer = await pool.run(pool_tasks.echo, 1)
            while not pool.stats.rebuilds:  # the answer can come before the manager dies
                await anyio.sleep(0.01)
            after = await pool.run(pool_tasks.echo, 2)  # the replacement serves
            stats = pool.stats
    for process in hidden:
        process.join(10)
    [error] = errors
    last = traceback.extract_tb(error.exc_traceback)[-1]
    in_cpython = last.filename == cf_process.__file__ and "processes.pop" in (last.line or "")
    print(json.dumps({
        "answers": [answer, after],
        "executor_failures": stats.executor_failures,
        "rebuilds": stats.rebuilds,
        "crashes": stats.crashes,
        "error": error.exc_type.__name__,
        "error_args": list(error.exc_value.args),
        "hidden_pid": hidden[0].pid,
        "died_in_cpython": in_cpython,
    }))  # fmt: skip


if __name__ == "__main__":
    cf_process._ExecutorManagerThread.process_result_item = hide_the_exiting_worker  # type: ignore[method-assign]
    threading.excepthook = errors.append
    anyio.run(main)
