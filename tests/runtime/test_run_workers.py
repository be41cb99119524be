"""Runs of cpu_bound listeners: the worker's pid, captured stdout/stderr, the workers listed,
and a worker killed from code (issue 13, item 2). Real worker processes."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from tests.worker_handlers import Job, Result, chatty
from xml_pipeline import DeliveryError, Listener, Organism, UnknownIdError
from xml_pipeline._config import ProcessPoolConfig
from xml_pipeline._runtime.runs import MAX_OUTPUT_LINES

pytestmark = pytest.mark.anyio


def organism(workers: int = 1) -> Organism:
    listener = Listener("chatty", Job, chatty, cpu_bound=True, timeout_seconds=60)
    return Organism([listener], process_pool=ProcessPoolConfig(workers=workers, max_crashes=1))


async def until(predicate: object, seconds: float = 20) -> None:
    with anyio.fail_after(seconds):
        while not predicate():  # type: ignore[operator]
            await anyio.sleep(0.02)


async def test_a_cpu_bound_run_shows_its_worker_pid_and_what_it_prints_while_it_runs(
    tmp_path: Path,
) -> None:
    release = tmp_path / "release"
    async with organism() as org, anyio.create_task_group() as tg:
        answers: list[object] = []

        async def ask() -> None:
            answers.append(await org.request("chatty", Job(n=3, marker=str(release)), timeout=60))

        tg.start_soon(ask)
        await until(lambda: any("logged line" in r.output for r in org.runs(status="running")))
        [run] = org.runs(status="running")
        [worker] = org.workers()
        assert run.cpu_bound and run.worker_pid == worker.pid != os.getpid()
        assert run.output == ("out 0", "out 1", "out 2", "err line", "logged line")
        assert run.progress == "halfway"
        assert (worker.status, worker.run_id, worker.runs_done) == ("busy", run.run_id, 0)
        assert worker.rss_bytes > 1_000_000
        release.touch()
        await until(lambda: answers)
        [finished] = org.runs()
        assert finished.status == "completed" and finished.output[-1] == "done"
        [idle] = org.workers()
        assert (idle.pid, idle.status, idle.runs_done, idle.run_id) == (worker.pid, "idle", 1, None)


async def test_a_run_that_prints_a_lot_keeps_its_last_lines_and_counts_the_rest() -> None:
    async with organism() as org:
        reply = await org.request("chatty", Job(n=MAX_OUTPUT_LINES + 50), timeout=60)
        assert reply.value == MAX_OUTPUT_LINES + 50
        [run] = org.runs()
        assert len(run.output) == MAX_OUTPUT_LINES
        assert run.output[-1] == "done" and run.output_dropped == 50 + 3  # err, logged, done
        assert run.output[0] == f"out {50 + 3}"


async def test_kill_worker_kills_it_fails_its_run_and_the_pool_replaces_it(
    tmp_path: Path,
) -> None:
    async with organism(workers=1) as org, anyio.create_task_group() as tg:
        failures: list[DeliveryError] = []

        async def ask() -> None:
            with pytest.raises(DeliveryError) as failed:
                await org.request("chatty", Job(marker=str(tmp_path / "never")), timeout=60)
            failures.append(failed.value)

        tg.start_soon(ask)
        await until(lambda: [w for w in org.workers() if w.status == "busy"])
        [worker] = org.workers()
        await org.kill_worker(worker.pid)
        await until(lambda: failures)
        assert failures[0].reason == "worker_crash" and str(worker.pid) in failures[0].message
        await until(lambda: org.workers() and org.workers()[0].pid != worker.pid)
        with pytest.raises(ProcessLookupError):
            os.kill(worker.pid, 0)  # really gone
        reply = await org.request("chatty", Job(n=1), timeout=60)  # the new worker serves
        assert isinstance(reply, Result) and reply.pid != worker.pid
        [failed] = org.runs(status="failed")
        assert failed.outcome == "worker_crash" and failed.worker_pid == worker.pid
        with pytest.raises(UnknownIdError) as unknown:
            await org.kill_worker(worker.pid)
        assert (unknown.value.kind, unknown.value.id) == ("worker", str(worker.pid))


async def test_an_organism_without_a_pool_lists_no_workers() -> None:
    async with Organism([Listener("inline", Job, chatty)]) as org:
        assert org.workers() == []
        with pytest.raises(UnknownIdError):
            await org.kill_worker(os.getpid())
