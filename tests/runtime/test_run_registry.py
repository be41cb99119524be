"""Runs of every process sharing one Redis (issue 13, items 2 and 3): two real organism
processes (tests/run_registry_child.py) and this one, on a private redis-server."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from tests.redis_server import redis_server, redis_url
from tests.run_registry_child import RUNS, Nap, sleeper
from xml_pipeline import BackendConfig, Listener, Organism, UnknownIdError, UsageError

__all__ = ["redis_server", "redis_url"]

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]


class Child:
    """An organism process of tests/run_registry_child.py: commands in, lines out."""

    def __init__(self, url: str, prefix: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.run_registry_child", url, prefix],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self.expect("ready", 60).split()
        self.id, self.runs = ready[1], ready[2:]

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, prefix: str, timeout: float = 20) -> str:
        """The next line starting with ``prefix`` (other lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {prefix!r} line from the child in {timeout}s") from None
            if line.startswith(prefix):
                return line

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def prefix() -> str:
    return f"xp-runs-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def children(redis_url: str, prefix: str) -> Iterator[tuple[Child, Child]]:
    first = Child(redis_url, prefix)
    try:
        second = Child(redis_url, prefix)
    except BaseException:
        first.stop()
        raise
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


@pytest.fixture
async def observer(redis_url: str, prefix: str) -> AsyncIterator[Organism]:
    """A third organism process (this one) sharing the Redis of the children."""
    backend = BackendConfig(type="redis", redis_url=redis_url, redis_prefix=prefix)
    async with Organism([Listener("sleeper", Nap, sleeper)], backend=backend, runs=RUNS) as org:
        yield org


async def statuses(org: Organism) -> dict[str, str]:
    return {run.run_id: run.status for run in await org.all_runs()}


async def until_status(org: Organism, run_ids: list[str], status: str, seconds: float) -> None:
    with anyio.fail_after(seconds):
        while True:
            found = await statuses(org)
            if all(found.get(run_id) == status for run_id in run_ids):
                return
            await anyio.sleep(0.05)


async def test_every_process_sees_the_runs_of_both_others(
    children: tuple[Child, Child], observer: Organism
) -> None:
    first, second = children
    assert first.id != second.id
    assert all(run_id.endswith(f"@{first.id}") for run_id in first.runs)
    await until_status(observer, first.runs + second.runs, "running", 10)
    runs = {run.run_id: run for run in await observer.all_runs(status="running")}
    assert set(runs) == {*first.runs, *second.runs}
    mine = runs[first.runs[0]]
    assert (mine.process, mine.pid, mine.progress) == (first.id, first.process.pid, "asleep")
    assert mine.pid != os.getpid() and mine.elapsed_seconds > 0
    assert await observer.all_runs(listener="nobody") == []
    first.send("runs")
    seen = dict(json.loads(first.expect("runs").removeprefix("runs ")))
    assert set(seen) == {*first.runs, *second.runs}  # from either process too


async def test_cancel_run_of_another_process_fails_its_caller_with_cancelled(
    children: tuple[Child, Child], observer: Organism
) -> None:
    first, second = children
    await observer.cancel_run(first.runs[0])  # from a third process
    assert first.expect("failed") == "failed cancelled"
    second.send(f"cancel {first.runs[1]}")  # from the other organism process
    assert second.expect("cancelled") == f"cancelled {first.runs[1]}"
    assert first.expect("failed") == "failed cancelled"
    await until_status(observer, first.runs, "cancelled", 10)
    assert {run.outcome for run in await observer.all_runs(status="cancelled")} == {"cancelled"}
    with pytest.raises(UsageError, match="finished"):
        await observer.cancel_run(first.runs[0])
    with pytest.raises(UnknownIdError) as unknown:
        await observer.cancel_run(f"r999@{first.id}")
    assert unknown.value.kind == "run"
    with pytest.raises(UnknownIdError, match="no process"):
        await observer.cancel_run("r1@000000")
    assert (await statuses(observer))[second.runs[0]] == "running"  # the others run on


async def test_a_killed_process_has_its_runs_listed_lost_within_the_bound(
    children: tuple[Child, Child], observer: Organism
) -> None:
    first, second = children
    await until_status(observer, second.runs, "running", 10)
    os.kill(second.process.pid, signal.SIGKILL)
    killed = time.monotonic()
    # lost once its last heartbeat is lost_after_seconds old (it wrote it before it died);
    # the slack is for this loaded test machine, not the bound
    await until_status(observer, second.runs, "lost", RUNS["lost_after_seconds"] + 3.0)
    took = time.monotonic() - killed
    lost = [run for run in await observer.all_runs() if run.process == second.id]
    assert {run.outcome for run in lost} == {"lost"}
    found = await statuses(observer)
    assert [found[run_id] for run_id in first.runs] == ["running", "running"]
    with pytest.raises(UsageError, match="lost"):
        await observer.cancel_run(second.runs[0])
    print(f"lost after {took:.2f}s (bound: lost_after_seconds={RUNS['lost_after_seconds']})")
