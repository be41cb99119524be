"""ProcessPool against real worker processes and real crashes (no mocks)."""

from __future__ import annotations

import ctypes
import dataclasses
import itertools
import multiprocessing
import os
import pickle
import platform
import re
import signal
import threading
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import process as cf_process
from multiprocessing import forkserver
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests import pool_tasks
from xml_pipeline._errors import DeliveryError
from xml_pipeline._runtime import pool as pool_module
from xml_pipeline._runtime import pool_worker
from xml_pipeline._runtime.pool import PoolStats, ProcessPool, WorkerFailure

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pool() -> AsyncIterator[ProcessPool]:
    async with ProcessPool(2) as pool:
        yield pool


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _wait_dead(pid: int) -> None:
    with anyio.fail_after(10):
        while _alive(pid):
            await anyio.sleep(0.01)


async def _read_pid(pid_file: Path) -> int:
    with anyio.fail_after(10):
        while not pid_file.exists() or not pid_file.read_text():
            await anyio.sleep(0.01)
    return int(pid_file.read_text())


async def _wait_for_lines(path: Path, count: int) -> None:
    with anyio.fail_after(20):
        while not path.exists() or len(path.read_text().split()) < count:
            await anyio.sleep(0.005)


async def test_results_come_back(pool: ProcessPool) -> None:
    """Every call returns its own result; the stats count them."""
    results: dict[int, object] = {}

    async def one(i: int) -> None:
        results[i] = await pool.run(pool_tasks.echo, {"n": i, "b": b"x" * i})

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i)
    assert results == {i: {"n": i, "b": b"x" * i} for i in range(20)}
    assert pool.stats == PoolStats(submitted=20, completed=20)
    with pytest.raises(dataclasses.FrozenInstanceError):
        pool.stats.completed = 0  # type: ignore[misc]


async def test_exception_from_fn_arrives_as_handler_error_with_its_type_and_traceback(
    pool: ProcessPool,
) -> None:
    """fn's exception fails that call: type and message in the error, the worker's traceback
    in its cause; the pool keeps serving and blames nobody."""
    with pytest.raises(DeliveryError) as caught:
        await pool.run(pool_tasks.fail, "bad input", label="failing")
    error = caught.value
    assert error.reason == "handler_error"
    assert error.message == "failing: raised ValueError: bad input"
    cause = error.__cause__
    assert isinstance(cause, WorkerFailure)
    assert (cause.type_name, cause.message, cause.reason) == ("ValueError", "bad input", None)
    assert 'pool_tasks.py", line' in cause.traceback and "in fail" in cause.traceback
    assert await pool.run(pool_tasks.echo, 1) == 1
    assert pool.stats == PoolStats(submitted=2, completed=2)


async def test_stop_iteration_from_fn_fails_the_call_without_hanging(pool: ProcessPool) -> None:
    """StopIteration cannot be raised into a Future: it arrives as data, the call never hangs."""
    with pytest.raises(DeliveryError, match="raised StopIteration: done") as caught:
        await pool.run(pool_tasks.stop)
    assert caught.value.reason == "handler_error"


@pytest.mark.parametrize("kind", list(pool_tasks.RAISERS))
async def test_every_exception_from_fn_fails_that_call_alone_and_at_once(
    tmp_path: Path, kind: str
) -> None:
    """Whatever fn raises (unpicklable, keyword-only, BaseException...) is reported at once
    as handler_error with its type and message: never a crash, never retried, and the calls
    in flight beside it run exactly once."""
    _, type_name, message = pool_tasks.RAISERS[kind]
    runs = tmp_path / "runs"
    results: dict[int, object] = {}
    async with ProcessPool(3) as pool:

        async def innocent(i: int) -> None:
            results[i] = await pool.run(pool_tasks.count_and_wait, str(runs), i)

        async with anyio.create_task_group() as tg:
            for i in range(2):
                tg.start_soon(innocent, i)
            await _wait_for_lines(runs, 2)  # both innocents are running now
            with anyio.fail_after(10), pytest.raises(DeliveryError) as caught:
                await pool.run(pool_tasks.raise_kind, kind, label="raiser")
            assert results == {}, "the failure was reported before the innocents finished"
            (tmp_path / "runs.go").touch()
        stats = pool.stats
    error = caught.value
    assert error.reason == "handler_error"
    assert re.match(rf"raiser: raised ([\w.]+\.)?{type_name}\b", error.message), error.message
    assert message in error.message
    cause = error.__cause__
    assert isinstance(cause, WorkerFailure) and cause.type_name.endswith(type_name)
    assert "raise_kind" in cause.traceback
    assert results == {0: 0, 1: 1}
    assert sorted(runs.read_text().split()) == ["0", "1"], "each innocent ran exactly once"
    assert (stats.crashes, stats.rebuilds, stats.retried) == (0, 0, 0)


async def test_our_own_errors_keep_their_reason_in_the_failure(pool: ProcessPool) -> None:
    """An XmlInputError raised by fn (from_xml on bad text) arrives with its reason code."""
    with pytest.raises(DeliveryError) as caught:
        await pool.run(pool_tasks.raise_kind, "xml-input-error")
    cause = caught.value.__cause__
    assert isinstance(cause, WorkerFailure)
    assert cause.type_name == "xml_pipeline._errors.XmlInputError"
    assert cause.reason == "malformed" and type(cause.reason) is str


@pytest.mark.parametrize(
    ("task", "words"),
    [
        (pool_tasks.return_a_lock, "cannot be pickled"),
        (pool_tasks.return_unloadable, "cannot unpickle"),
        (pool_tasks.return_keyword_only_error, "cannot unpickle"),
    ],
)
async def test_a_result_that_cannot_cross_fails_that_call_alone(
    tmp_path: Path, task: object, words: str
) -> None:
    """A result pickle cannot carry (either way) is invalid_response for that call only."""
    runs = tmp_path / "runs"
    async with ProcessPool(2) as pool:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run, pool_tasks.count_and_wait, str(runs), "innocent")
            await _wait_for_lines(runs, 1)
            with anyio.fail_after(10), pytest.raises(DeliveryError) as caught:
                await pool.run(task, label="returner")  # type: ignore[arg-type]
            (tmp_path / "runs.go").touch()
        stats = pool.stats
    assert caught.value.reason == "invalid_response"
    assert caught.value.message.startswith("returner: returned a result")
    assert words in caught.value.message
    assert runs.read_text().split() == ["innocent"]
    assert (stats.crashes, stats.rebuilds, stats.retried) == (0, 0, 0)


async def test_unpicklable_fn_fails_the_call_not_the_pool(pool: ProcessPool) -> None:
    """A lambda cannot travel to a worker: that call fails, the next one succeeds."""
    with pytest.raises(Exception, match="pickle"):
        await pool.run(lambda: 1)
    assert await pool.run(pool_tasks.echo, 2) == 2


async def test_killed_worker_loses_no_innocent_task(pool: ProcessPool) -> None:
    """SIGKILL on a worker while 12 tasks are in flight: all 12 complete, the pool rebuilt."""
    results: dict[int, object] = {}

    async def one(i: int) -> None:
        results[i] = await pool.run(pool_tasks.nap, 0.15, i)

    async with anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(one, i)
        await anyio.sleep(0.05)
        os.kill(pool.worker_pids()[0], signal.SIGKILL)
    assert results == {i: i for i in range(12)}
    assert pool.stats.rebuilds >= 1
    assert pool.stats.crashes == 1
    assert pool.stats.retried >= 1


async def test_always_crashing_task_fails_after_max_crashes(tmp_path: Path) -> None:
    """The guilty task fails with worker_crash after 2 solo crashes; 10 innocents succeed."""
    runs = tmp_path / "runs"
    results: dict[int, object] = {}
    errors: list[DeliveryError] = []

    async with ProcessPool(2, max_crashes=2) as pool:

        async def innocent(i: int) -> None:
            results[i] = await pool.run(pool_tasks.nap, 0.02, i)

        async def guilty() -> None:
            try:
                await pool.run(pool_tasks.crash_always, str(runs), label="crasher")
            except DeliveryError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(innocent, i)
            tg.start_soon(guilty)
            for i in range(5, 10):
                tg.start_soon(innocent, i)
        assert await pool.run(pool_tasks.echo, "still serving") == "still serving"
        stats = pool.stats

    assert results == {i: i for i in range(10)}
    [error] = errors
    assert error.reason == "worker_crash"
    assert "crasher:" in str(error) and "2 times" in str(error)
    # one crash among the others (nobody blamed), then two alone
    assert runs.read_text().count("run") == 3
    assert stats.crashes == 3


@pytest.mark.parametrize("how", ["exit", "sigkill", "segfault"])
async def test_task_that_crashes_once_then_succeeds(
    pool: ProcessPool, tmp_path: Path, how: str
) -> None:
    """A crash below max_crashes is retried, and the retry's result is returned."""
    marker = tmp_path / "crashed"
    assert await pool.run(pool_tasks.crash_once, str(marker), how, "ok") == "ok"
    assert marker.exists()
    assert pool.stats.crashes == 1
    assert pool.stats.rebuilds == 1


async def test_timeout_kills_that_worker_and_spares_the_others(
    pool: ProcessPool, tmp_path: Path
) -> None:
    """A call over its timeout fails with reason timeout; only its worker dies."""
    pid_file = tmp_path / "pid"
    innocent_result: list[object] = []

    async def innocent() -> None:
        innocent_result.append(await pool.run(pool_tasks.nap, 0.6, "innocent"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(innocent)
        with pytest.raises(DeliveryError) as caught:
            await pool.run(pool_tasks.nap_and_tell, str(pid_file), 60, timeout=0.3, label="slow")
    assert caught.value.reason == "timeout"
    assert "slow:" in str(caught.value)
    await _wait_dead(await _read_pid(pid_file))
    assert innocent_result == ["innocent"]
    assert await pool.run(pool_tasks.echo, 3) == 3
    assert pool.stats.timeouts == 1
    assert pool.stats.crashes == 0  # the pool killed it: nobody to blame


async def test_timeout_while_waiting_kills_no_worker() -> None:
    """A call that times out before any worker was free is withdrawn; nothing is killed."""
    async with ProcessPool(1) as pool:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run, pool_tasks.nap, 0.4, None)
            await anyio.sleep(0.05)
            with pytest.raises(DeliveryError, match=r"tests\.pool_tasks\.echo: did not finish"):
                await pool.run(pool_tasks.echo, 1, timeout=0.1)
        assert pool.stats.rebuilds == 0
        assert pool.stats.timeouts == 1


async def test_call_abandoned_before_its_worker_started_is_killed_on_start() -> None:
    """A call that times out between submission and start is killed as soon as it starts."""
    slow_start = ProcessPool(1, max_tasks_per_child=1, initializer=time.sleep, initargs=(0.3,))
    async with slow_start as pool:
        await pool.run(pool_tasks.echo, 0)  # the worker exits; its successor takes 0.3 s
        with pytest.raises(DeliveryError, match="timeout"):
            await pool.run(pool_tasks.nap, 60, None, timeout=0.05)
        with anyio.fail_after(20):  # one worker: this waits for the 60 s nap unless killed
            assert await pool.run(pool_tasks.echo, 1) == 1


async def test_cancellation_kills_the_worker(pool: ProcessPool, tmp_path: Path) -> None:
    """A caller cancelled while its call runs: the worker is killed, the pool serves on."""
    pid_file = tmp_path / "pid"
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run, pool_tasks.nap_and_tell, str(pid_file), 60)
            pid = await _read_pid(pid_file)
            scope.cancel()
    assert scope.cancelled_caught
    await _wait_dead(pid)
    assert await pool.run(pool_tasks.echo, 4) == 4
    assert pid not in pool.worker_pids()


async def test_max_tasks_per_child_recycles_workers() -> None:
    """With max_tasks_per_child=2 one worker serves 6 calls under several pids."""
    async with ProcessPool(1, max_tasks_per_child=2) as pool:
        pids = [await pool.run(pool_tasks.pid) for _ in range(6)]
    assert len(set(pids)) >= 3


async def test_initializer_runs_in_every_worker() -> None:
    """The initializer's effect is visible to the calls."""
    async with ProcessPool(2, initializer=pool_tasks.set_marker, initargs=("hi",)) as pool:
        assert await pool.run(pool_tasks.get_marker) == "hi"


async def test_failing_initializer_fails_at_start() -> None:
    """Workers that cannot start make opening the pool fail with worker_crash."""
    pool = ProcessPool(1, initializer=pool_tasks.broken_initializer)
    with pytest.raises(DeliveryError) as caught:
        async with pool:
            pass
    assert caught.value.reason == "worker_crash"


async def test_aclose_fails_pending_calls_and_leaves_no_workers(tmp_path: Path) -> None:
    """aclose: callers get DeliveryError(shutdown), every worker process is gone."""
    failures: list[DeliveryError] = []
    pool = ProcessPool(2)
    await pool.__aenter__()

    async def call(i: int) -> None:
        try:
            await pool.run(pool_tasks.nap, 60, i)
        except DeliveryError as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(call, i)
        await anyio.sleep(0.1)
        pids = pool.worker_pids()
        assert len(pids) == 2
        await pool.aclose()
    assert [f.reason for f in failures] == ["shutdown"] * 4
    assert not [pid for pid in pids if _alive(pid)]
    assert pool.worker_pids() == []
    with pytest.raises(DeliveryError, match="shutdown"):
        await pool.run(pool_tasks.echo, 1)
    await pool.aclose()  # a second close is harmless


async def test_closing_an_idle_pool_leaves_no_workers() -> None:
    """Idle workers exit when the pool closes."""
    async with ProcessPool(2) as pool:
        pids = pool.worker_pids()
    assert len(pids) == 2
    assert not [pid for pid in pids if _alive(pid)]


async def test_event_loop_keeps_ticking_while_workers_burn_cpu(pool: ProcessPool) -> None:
    """Two workers at 100% CPU do not stall the event loop."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        async with anyio.create_task_group() as burners:
            for _ in range(2):
                burners.start_soon(pool.run, pool_tasks.burn, 0.8)
        tg.cancel_scope.cancel()
    assert ticks >= 10


async def test_run_before_open_is_a_usage_error() -> None:
    """run() on a pool that was never opened says how to open it."""
    with pytest.raises(RuntimeError, match="async with"):
        await ProcessPool(1).run(pool_tasks.echo, 1)


@pytest.mark.parametrize(
    "kwargs",
    [{"workers": 0}, {"max_crashes": 0}, {"max_tasks_per_child": 0}, {"mp_context": "fork"}],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, object]) -> None:
    """Nonsense sizes and the fork start method are refused at construction."""
    with pytest.raises(ValueError):
        ProcessPool(**kwargs)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_arguments_the_worker_cannot_rebuild_fail_that_call_only(pool: ProcessPool) -> None:
    """Before the fix the worker died unpickling them, unblamed, and the pool rebuilt forever."""
    innocent = pool.run(pool_tasks.nap, 0.2, "innocent")
    async with anyio.create_task_group() as group:
        results: list[object] = []

        async def keep(coro: object) -> None:
            try:
                results.append(await coro)  # type: ignore[misc]
            except DeliveryError as exc:
                results.append(exc)

        group.start_soon(keep, innocent)
        group.start_soon(keep, pool.run(pool_tasks.echo, pool_tasks.BadUnpickle()))
    assert "innocent" in results
    [error] = [r for r in results if isinstance(r, DeliveryError)]
    assert error.reason == "handler_error"
    assert "could not rebuild the function or its arguments (ValueError:" in error.message
    assert pool.stats.crashes == 0 and pool.stats.rebuilds == 0


@pytest.mark.anyio
async def test_system_exit_in_a_task_is_an_error_of_that_call_not_of_the_caller(
    pool: ProcessPool,
) -> None:
    with pytest.raises(DeliveryError, match="raised SystemExit: 3"):
        await pool.run(pool_tasks.exit_now, 3)
    assert await pool.run(pool_tasks.echo, "still serving") == "still serving"


# -- calls queued in the executor ahead of free workers ------------------------------------


@pytest.mark.parametrize("how", ["timeout", "cancel"])
async def test_a_call_withdrawn_while_queued_in_the_executor_never_runs(
    tmp_path: Path, how: str
) -> None:
    """A call queued behind a busy worker whose caller leaves (timeout or cancellation) is
    withdrawn: it never runs, and no worker is killed for it."""
    runs, pid_file = tmp_path / "runs", tmp_path / "pid"
    async with ProcessPool(1) as pool:
        [worker] = pool.worker_pids()
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run, pool_tasks.count_and_wait, str(runs), "busy")
            await _wait_for_lines(runs, 1)  # the only worker is busy now
            if how == "timeout":
                with pytest.raises(DeliveryError, match="timeout"):
                    await pool.run(pool_tasks.nap_and_tell, str(pid_file), 60, timeout=0.2)
            else:
                with anyio.move_on_after(0.2):
                    await pool.run(pool_tasks.nap_and_tell, str(pid_file), 60)
            (tmp_path / "runs.go").touch()
        with anyio.fail_after(20):  # served in order: the withdrawn call was reached before
            assert await pool.run(pool_tasks.pid) == worker
        stats = pool.stats
    assert not pid_file.exists(), "the withdrawn call ran"
    assert (stats.rebuilds, stats.crashes, stats.timeouts) == (0, 0, int(how == "timeout"))


async def test_a_call_abandoned_before_its_worker_started_never_runs(tmp_path: Path) -> None:
    """A call that times out after submission, while its worker is still starting, is
    withdrawn: the worker skips it instead of being killed when it starts."""
    pid_file = tmp_path / "pid"
    slow_start = ProcessPool(1, max_tasks_per_child=1, initializer=time.sleep, initargs=(0.3,))
    async with slow_start as pool:
        await pool.run(pool_tasks.echo, 0)  # the worker exits; its successor takes 0.3 s
        with pytest.raises(DeliveryError, match="timeout"):
            await pool.run(pool_tasks.nap_and_tell, str(pid_file), 60, timeout=0.05)
        with anyio.fail_after(20):
            assert await pool.run(pool_tasks.echo, 1) == 1
        stats = pool.stats
    assert not pid_file.exists(), "the abandoned call ran"
    assert stats.rebuilds == 0, "a worker was killed for a call that never started"


def test_a_withdrawn_call_reports_no_start_and_runs_nothing() -> None:
    """The worker's side of withdrawal: a withdrawn attempt writes no start record (the parent
    kills the worker of an abandoned call when its start arrives) and does not run."""
    reader, writer = multiprocessing.Pipe(duplex=False)
    withdrawn = multiprocessing.RawArray(ctypes.c_uint64, pool_worker.SLOTS)
    pool_worker.init_worker(writer, withdrawn, None, None, ())
    try:
        call = pickle.dumps((pool_tasks.echo, ("ran",)))
        attempt = pool_worker.SLOTS + 5  # shares its slot with attempt 5
        withdrawn[5] = 5
        assert pickle.loads(pool_worker.run_attempt(attempt, call)) == "ran"  # type: ignore[arg-type]
        assert pool_worker.START.unpack(os.read(reader.fileno(), 64)) == (attempt, os.getpid())
        withdrawn[attempt % pool_worker.SLOTS] = attempt
        assert pool_worker.run_attempt(attempt, call) is None
        assert not reader.poll(0), "a withdrawn call reported a start"
    finally:
        pool_worker._worker_start_pipe = pool_worker._worker_withdrawn = None
        reader.close()
        writer.close()


@pytest.mark.parametrize("workers", [1, 2])
async def test_max_tasks_per_child_with_many_calls_in_flight_never_stalls(workers: int) -> None:
    """Recycled workers are replaced while calls wait. CPython 3.11-3.14 skip the replacement
    when calls are queued in the executor (gh-115634), so the pool must not queue them there."""
    async with ProcessPool(workers, max_tasks_per_child=2) as pool:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(24):
                    tg.start_soon(pool.run, pool_tasks.echo, i)
        assert pool.stats.completed == 24


# -- the executor's manager thread dying -----------------------------------------------------


@dataclasses.dataclass
class _ManagerRace:
    armed: threading.Event = dataclasses.field(default_factory=threading.Event)
    fired: threading.Event = dataclasses.field(default_factory=threading.Event)
    hidden: list[BaseProcess] = dataclasses.field(default_factory=list)
    errors: list[threading.ExceptHookArgs] = dataclasses.field(default_factory=list)


@pytest.fixture
def manager_race(monkeypatch: pytest.MonkeyPatch) -> Iterator[_ManagerRace]:
    """Once ``armed`` is set, the next worker to exit at ``max_tasks_per_child`` kills the
    executor's manager thread the way CPython 3.11-3.13's race does; thread exceptions are
    collected in ``errors`` instead of failing the test.

    This simulates a CPython bug, because the real race cannot be forced: a worker that
    ``submit`` started in another thread can run its tasks and exit before that thread has run
    ``self._processes[p.pid] = p``, and the manager thread's ``self.processes.pop(exit_pid)``
    then raises ``KeyError`` and the thread dies. Here the manager takes the exiting worker out
    of ``processes`` just before that line (by monkeypatching the CPython internal
    ``_ExecutorManagerThread.process_result_item``), so CPython's own line raises the KeyError.
    """
    race = _ManagerRace()
    process_result_item = cf_process._ExecutorManagerThread.process_result_item

    def hide_the_exiting_worker(thread: Any, result_item: Any) -> None:
        pid = getattr(result_item, "exit_pid", None)
        if pid is not None and race.armed.is_set() and not race.fired.is_set():
            race.hidden.append(thread.processes.pop(pid))
            race.fired.set()
        process_result_item(thread, result_item)

    monkeypatch.setattr(
        cf_process._ExecutorManagerThread, "process_result_item", hide_the_exiting_worker
    )
    monkeypatch.setattr(threading, "excepthook", race.errors.append)
    yield race
    for process in race.hidden:  # it exits on its own, unseen by the executor
        process.join(10)


def _died_of_the_race(race: _ManagerRace) -> bool:
    [error] = race.errors
    [hidden] = race.hidden
    assert error.exc_type is KeyError and error.exc_value is not None
    assert error.exc_value.args == (hidden.pid,)
    last = traceback.extract_tb(error.exc_traceback)[-1]
    return last.filename == cf_process.__file__ and "processes.pop" in (last.line or "")


async def test_a_dead_manager_thread_breaks_the_executor_and_blames_nobody(
    manager_race: _ManagerRace, tmp_path: Path
) -> None:
    """The executor's manager thread dies (CPython's max_tasks_per_child race, simulated) while
    a call runs: the pool replaces the executor and runs that call again, suspecting nobody."""
    runs = tmp_path / "runs"
    answers: list[object] = []

    async with ProcessPool(2, max_tasks_per_child=2) as pool:

        async def in_flight() -> None:
            answers.append(await pool.run(pool_tasks.count_and_wait, str(runs), "busy"))

        with anyio.fail_after(60):  # without the fix, the busy call is never answered
            async with anyio.create_task_group() as tg:
                tg.start_soon(in_flight)
                await _wait_for_lines(runs, 1)  # one worker is busy; the other takes the rest
                manager_race.armed.set()
                for i in itertools.count():  # until the free worker exits, within 2 calls
                    assert await pool.run(pool_tasks.echo, i) == i
                    if manager_race.fired.is_set():
                        break
                await _wait_for_lines(runs, 2)  # its first run was killed with the old executor
                (tmp_path / "runs.go").touch()
        assert await pool.run(pool_tasks.echo, "after") == "after"
        stats = pool.stats

    assert _died_of_the_race(manager_race)
    assert answers == ["busy"]
    assert runs.read_text().split() == ["busy", "busy"]
    assert (stats.executor_failures, stats.rebuilds, stats.retried) == (1, 1, 1)
    assert stats.crashes == 0
    assert stats.completed == stats.submitted


async def test_a_manager_thread_that_dies_while_workers_start_is_replaced(
    manager_race: _ManagerRace,
) -> None:
    """The manager thread dies (the simulated race again) as the first worker started for an
    executor exits. With two workers the other one's first call is never answered, and the
    pool starts another executor instead of waiting forever."""
    manager_race.armed.set()
    with anyio.fail_after(30):
        async with ProcessPool(2, max_tasks_per_child=1) as pool:
            assert await pool.run(pool_tasks.echo, 1) == 1
            stats = pool.stats
    assert _died_of_the_race(manager_race)
    assert stats.crashes == 0
    assert (stats.executor_failures, stats.rebuilds) == (0, 0)


def test_a_manager_thread_that_dies_after_the_only_worker_answered_is_replaced() -> None:
    """With one worker every call was answered when the manager thread dies, and the dead
    executor would serve nothing: the pool replaces it (one executor failure, one rebuild, no
    crash blamed) and the next call is answered. Runs in a process of its own (see
    tests/pool_manager_race_child.py)."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "tests.pool_manager_race_child"],
        capture_output=True, text=True, timeout=90, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["answers"] == [1, 2]
    assert (seen["executor_failures"], seen["rebuilds"], seen["crashes"]) == (1, 1, 0)
    assert seen["error"] == "KeyError" and seen["error_args"] == [seen["hidden_pid"]]
    assert seen["died_in_cpython"]


async def test_an_idle_worker_that_dies_is_a_crash_replaced_at_once(pool: ProcessPool) -> None:
    """A worker killed while idle ends the manager thread too, as a broken executor: the pool
    counts a crash (not an executor failure) and replaces the executor without waiting for a
    call."""
    os.kill(pool.worker_pids()[0], signal.SIGKILL)
    with anyio.fail_after(20):
        while pool.stats.rebuilds == 0:
            await anyio.sleep(0.01)
    assert (pool.stats.crashes, pool.stats.executor_failures) == (1, 0)
    assert await pool.run(pool_tasks.echo, 2) == 2
    assert pool.stats.retried == 0


# -- the CPython internals the pool relies on (issue 10, item 8) ---------------------------


def test_executor_processes_internal_is_what_the_pool_expects() -> None:
    """ProcessPoolExecutor._processes is still a dict of pid -> process: the pool kills
    exactly the worker of a timed-out call through it (`_worker_processes`)."""
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(1, mp_context=context) as executor:
        pid = executor.submit(os.getpid).result()
        processes = pool_module._worker_processes(executor)  # raises if CPython changed it
        assert list(processes) == [pid]
        assert processes[pid].pid == pid and processes[pid].exitcode is None
    assert pool_module._worker_processes(executor) == {}  # None after shutdown


def test_executor_manager_thread_internal_is_what_the_pool_expects() -> None:
    """ProcessPoolExecutor._executor_manager_thread is still the thread that serves the
    executor, started by the first submit and ended by shutdown: the pool watches it end
    (`_manager_thread`). The race simulation's internals are pinned here too."""
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(1, mp_context=context) as executor:
        executor.submit(os.getpid).result()
        manager = pool_module._manager_thread(executor)  # raises if CPython changed it
        assert manager.is_alive()
        assert isinstance(manager, cf_process._ExecutorManagerThread)
        assert manager.processes is executor._processes  # type: ignore[attr-defined]
        assert callable(cf_process._ExecutorManagerThread.process_result_item)
    assert not manager.is_alive()


@pytest.mark.parametrize("held", ["missing", None])
def test_a_changed_manager_thread_internal_fails_loudly(held: object) -> None:
    """Should a Python release move the manager thread, the pool says so plainly."""
    executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver"))
    try:
        if held == "missing":
            del executor._executor_manager_thread
        pattern = r"ProcessPoolExecutor\._executor_manager_thread, a thread"
        with pytest.raises(RuntimeError, match=pattern) as caught:
            pool_module._manager_thread(executor)
        assert "report this as a bug" in str(caught.value)
    finally:
        executor._executor_manager_thread = None
        executor.shutdown()


@pytest.mark.parametrize("held", ["missing", [], {"1": "not a process"}])
def test_a_changed_executor_processes_internal_fails_loudly(held: object) -> None:
    """Should a Python release move or reshape the workers, the pool says so plainly rather
    than killing the wrong process or failing somewhere deeper."""
    executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver"))
    try:
        if held == "missing":
            del executor._processes
        else:
            executor._processes = held  # type: ignore[assignment]
        with pytest.raises(RuntimeError, match=r"ProcessPoolExecutor\._processes, a dict of") as e:
            pool_module._worker_processes(executor)
        assert "report this as a bug" in str(e.value)
    finally:
        executor._processes = {}
        executor.shutdown()


async def test_forkserver_preload_internal_is_what_the_pool_expects() -> None:
    """multiprocessing keeps the forkserver's preload list where the pool reads it; opening a
    pool adds its module, keeps other preloads and drops the default "__main__"."""
    before = pool_module._forkserver_preloads()
    assert before is not None, (
        "multiprocessing.forkserver._forkserver._preload_modules is gone or no list of str "
        f"in Python {platform.python_version()}: update pool._forkserver_preloads"
    )
    try:
        forkserver.set_forkserver_preload(["json", "__main__"])
        async with ProcessPool(1):
            pass
        assert pool_module._forkserver_preloads() == ["json", pool_module.__name__]
    finally:
        forkserver.set_forkserver_preload(before)


def test_without_the_preload_internal_the_pool_still_preloads_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the preload list cannot be read, the pool's module is preloaded all the same."""
    before = pool_module._forkserver_preloads()
    assert before is not None
    monkeypatch.setattr(forkserver._forkserver, "_preload_modules", "not a list")
    assert pool_module._forkserver_preloads() is None
    try:
        pool_module._preload_in_forkserver()
        assert pool_module._forkserver_preloads() == [pool_module.__name__]
    finally:
        forkserver.set_forkserver_preload(before)
