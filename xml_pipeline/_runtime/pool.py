"""A process pool for CPU-bound work that survives its workers crashing.

`ProcessPool` wraps `concurrent.futures.ProcessPoolExecutor` for async callers. When a worker
dies (SIGKILL, segfault, ``os._exit``, the OOM killer) the executor breaks and every call in
flight fails. The pool replaces the executor and works out whom to blame with one small state
machine::

    SERVING    --break--> REBUILDING   calls that had started become suspects, unless the pool
                                       killed the worker itself (the culprit is known)
    REBUILDING --ready--> PROBING if there are suspects, else SERVING
    PROBING               each suspect runs alone while other work waits: finishing clears it,
                          crashing counts against it; at ``max_crashes`` it fails
    any       --aclose--> CLOSED

To kill exactly the worker of a call that timed out or was cancelled, every call reports
``(attempt id, pid)`` through a pipe owned by the pool before it runs. The records are
fixed-size writes below ``PIPE_BUF``, so workers never interleave them and need no lock. Only
calls that reported a start can be suspects; the others are requeued.

While serving, the executor holds up to eight calls per worker, so that a worker that finishes
one finds the next waiting instead of idling while its result travels to the event loop and
the next call back (a trivial call is over in a fraction of that trip); with
``max_tasks_per_child`` only free workers get calls (gh-115634, see `ProcessPool.__init__`).
A call whose caller leaves while it waits in the executor is withdrawn through an array shared
with the workers: a worker skips a withdrawn call without reporting a start, and the worker of
a call that did report one is killed, so nothing is killed for a call that never ran. Timeouts
count from `ProcessPool.run`, waiting included, wherever the call waits.

The executor's own thread (its "manager", which feeds the workers and reads their results) can
die of an exception, and then the executor runs nothing more and says nothing: CPython
3.11-3.13 lose it to a race with ``max_tasks_per_child`` (a worker that ``submit`` started in
another thread can finish its tasks and exit before it is recorded, and the manager's
``self.processes.pop(exit_pid)`` raises ``KeyError``). A thread of the pool waits for the
manager to end; when it ends while the executor is still in use, the pool treats the executor
as broken with nobody to blame: calls in flight are requeued, none becomes a suspect, and the
executor is replaced (``PoolStats.executor_failures``).

Only plain data comes back from a worker: the pickled result as bytes, or what ``fn`` raised as
strings (`WorkerFailure`). An exception object that crossed the boundary as itself could fail
to unpickle in the parent (a required keyword-only argument, a ``__reduce__`` that raises, an
unimportable class), and concurrent.futures takes that for a dead worker: the call would be
retried as a crash and the innocent calls in flight run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import itertools
import multiprocessing
import os
import pickle
import platform
import signal
import threading
import weakref
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from multiprocessing import forkserver
from multiprocessing.process import BaseProcess
from typing import Any, Generic, Self, TypeVar

import anyio

from xml_pipeline._errors import DeliveryError, Reason, UsageError
from xml_pipeline._main_guard import guard_error, leave_if_importing_main, unimportable_main
from xml_pipeline._runtime.pool_worker import (
    OUTPUT,
    SLOTS,
    START,
    Failed,
    failure_data,
    init_worker,
    run_attempt,
)

__all__ = ["PoolStats", "ProcessPool", "WorkerFailure"]

T = TypeVar("T")

# Calls queued in the executor per worker beyond the one it runs. A trivial call takes a
# worker some 20-40 us; its result's trip to the event loop and the next call's trip back take
# several times that on a busy 2-core machine, so a worker needs several calls queued not to
# wait for the loop. With 16 trivial calls in flight on 2 workers (bench_workers.py) the pool
# did 0.5-0.75x a bare executor's throughput submitting only to free workers, 0.7-1.07x with 3
# ahead and 0.8-0.9x with 7. Calls queued deeper cost little: they are withdrawn without a
# kill, and requeued without suspicion when the executor breaks.
_AHEAD_PER_WORKER = 7
# Settled calls between two reads of the start pipe, which is otherwise read only when a pid
# is needed (a break, a call to kill): at most this many records plus one per worker (12 bytes
# each) wait in the pipe, below the smallest pipe buffer (4 KiB on Linux when a user's pipes
# are over their quota) for up to 200 workers; a worker that finds it full waits for a read.
_DRAIN_EVERY = 128


class WorkerFailure(Exception):
    """What ``fn`` raised in a worker process, brought back as plain data.

    `ProcessPool.run` raises ``DeliveryError`` *from* one of these (its ``__cause__``), so a
    printed traceback ends with the worker's traceback. The exception object itself never
    crosses the process boundary.

    Attributes:
        type_name: the exception's class, ``module.QualName`` (``QualName`` for builtins).
        message: ``str()`` of the exception (empty when it has none).
        reason: its ``reason`` attribute when that is a string (as on our own errors).
        traceback: the traceback formatted in the worker.
    """

    def __init__(self, type_name: str, message: str, reason: str | None, traceback: str) -> None:
        super().__init__(type_name, message, reason, traceback)
        self.type_name = type_name
        self.message = message
        self.reason = reason
        self.traceback = traceback

    def __str__(self) -> str:
        return f"in the worker process:\n{self.traceback}".rstrip()


def _failure_error(label: str, failed: Failed) -> DeliveryError:
    """The error `ProcessPool.run` raises for a call that failed in its worker."""
    stage, name, message, reason, text = failed
    what = f"{name}: {message}" if message else name
    if stage == "result":
        error = DeliveryError(
            f"{label}: returned a result that cannot be pickled ({what}); return plain data",
            reason=Reason.INVALID_RESPONSE,
        )
    elif stage == "call":
        error = DeliveryError(
            f"{label}: the worker could not rebuild the function or its arguments ({what})",
            reason=Reason.HANDLER_ERROR,
        )
    else:
        error = DeliveryError(f"{label}: raised {what}", reason=Reason.HANDLER_ERROR)
    error.__cause__ = WorkerFailure(name, message, reason, text)
    return error


def _worker_processes(executor: ProcessPoolExecutor) -> dict[int, BaseProcess]:
    """The executor's worker processes by pid, copied (the executor's thread changes them).

    The pool's one use of ``ProcessPoolExecutor._processes``: there is no public view of the
    workers, and the pool needs them to kill exactly the worker of a call that timed out, to
    list `ProcessPool.worker_pids` and to read why workers died while starting. CPython
    3.11-3.14 keep a dict of pid -> process there (None after shutdown); the test
    ``test_executor_processes_internal_is_what_the_pool_expects`` fails if that changes.

    Raises:
        RuntimeError: this Python keeps its workers elsewhere or in another shape.
    """
    held: object = getattr(executor, "_processes", AttributeError)
    if held is None:
        return {}
    if isinstance(held, dict):
        processes = dict(held)  # one step under the GIL, unlike iterating the original
        if all(type(pid) is int and isinstance(p, BaseProcess) for pid, p in processes.items()):
            return processes
        found = "a dict of " + ", ".join(sorted({type(p).__name__ for p in processes.values()}))
    else:
        found = "no such attribute" if held is AttributeError else type(held).__name__
    raise RuntimeError(
        "ProcessPool finds its worker processes in ProcessPoolExecutor._processes, a dict of "
        f"pid -> multiprocessing process, but Python {platform.python_version()} has {found} "
        "there; run a Python version xml-pipeline supports and report this as a bug"
    )


def _manager_thread(executor: ProcessPoolExecutor) -> threading.Thread:
    """The executor's manager thread, which feeds its workers and reads their results.

    The pool's one use of ``ProcessPoolExecutor._executor_manager_thread``: there is no public
    way to learn that this thread died of an exception, after which the executor runs nothing
    and fails nothing (see the module docstring). CPython 3.11-3.13 start it on the first
    ``submit``; call this after one. The test
    ``test_executor_manager_thread_internal_is_what_the_pool_expects`` fails if that changes.

    Raises:
        RuntimeError: this Python keeps the thread elsewhere, or has not started it.
    """
    held: object = getattr(executor, "_executor_manager_thread", AttributeError)
    if isinstance(held, threading.Thread):
        return held
    found = "no such attribute" if held is AttributeError else type(held).__name__
    raise RuntimeError(
        "ProcessPool watches ProcessPoolExecutor._executor_manager_thread, a thread started by "
        f"the first submit, but Python {platform.python_version()} has {found} there; run a "
        "Python version xml-pipeline supports and report this as a bug"
    )


def _wait_for(executor: ProcessPoolExecutor, calls: list[Future[Any]]) -> None:
    # Waits for calls submitted to a new executor (a thread runs this), polling its manager
    # thread: should that die, these calls would never finish.
    manager = _manager_thread(executor)
    while wait(calls, timeout=0.05).not_done:
        if not manager.is_alive() and wait(calls, timeout=0).not_done:
            raise BrokenProcessPool("the executor's manager thread died before the calls ended")
    for call in calls:
        call.result()  # raises BrokenProcessPool when a worker died


def _live_processes(executor: ProcessPoolExecutor) -> list[BaseProcess]:
    # `exitcode` polls the process sentinel, so a reaped pid is never signalled.
    return [p for p in _worker_processes(executor).values() if p.exitcode is None]


def _stop_executor(executor: ProcessPoolExecutor, busy: bool) -> None:
    # Blocks until the workers are gone; busy workers are killed, idle ones exit on their own.
    if busy:
        for process in _live_processes(executor):
            process.kill()
    executor.shutdown(wait=True, cancel_futures=True)


def _forkserver_preloads() -> list[str] | None:
    """The modules the forkserver will preload, or None when this Python hides them elsewhere.

    The pool's one use of ``multiprocessing.forkserver._forkserver._preload_modules``: the
    list has a public setter but no getter, and the pool adds its module to it rather than
    drop what others set. The test ``test_forkserver_preload_internal_is_what_the_pool_expects``
    fails if it changes; the pool then still preloads its own module.
    """
    server = getattr(forkserver, "_forkserver", None)
    modules = getattr(server, "_preload_modules", None)
    if isinstance(modules, list) and all(isinstance(module, str) for module in modules):
        return list(modules)
    return None


def _preload_in_forkserver() -> None:
    # Every worker imports this package (hundreds of ms with lxml and friends). A forkserver
    # that preloads it forks ready workers instead, so starts and rebuilds take milliseconds.
    # No effect once the forkserver runs; preloads set by others are kept, but not the default
    # "__main__": Python 3.11-3.13 never act on it (they look for the wrong key), and where it
    # works it runs the main script in the forkserver, where a script without a main guard
    # dies with nothing the pool could report. Each worker imports the main script itself.
    modules = [m for m in _forkserver_preloads() or () if m != "__main__"]
    if __name__ not in modules:
        modules.append(__name__)
    forkserver.set_forkserver_preload(modules)


def _exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit status {code}"


class _Phase(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    REBUILDING = "rebuilding"
    PROBING = "probing"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a pool's counters.

    Attributes:
        submitted: calls accepted by `ProcessPool.run`.
        completed: calls whose ``fn`` returned or raised in a worker.
        crashes: worker deaths the pool did not cause itself.
        rebuilds: executors replaced because a worker died or was killed.
        timeouts: calls that ran out of time.
        retried: submissions repeated because a worker died while they were in flight.
        executor_failures: executors replaced because their manager thread died (a CPython
            bug, see the module docstring); their calls in flight were requeued, nobody blamed.
    """

    submitted: int = 0
    completed: int = 0
    crashes: int = 0
    rebuilds: int = 0
    timeouts: int = 0
    retried: int = 0
    executor_failures: int = 0


# a job's submission before it has one (a Future per job would cost a Condition and a lock)
_UNSUBMITTED: Future[Any] = Future()


@dataclass(eq=False, slots=True)
class _Job(Generic[T]):
    call: bytes  # pickled (fn, args), unpickled by the worker after it reports its start
    label: str
    outcome: asyncio.Future[T]
    deadline: asyncio.TimerHandle | None = None
    crashes: int = 0  # crashes while running alone
    attempt: int = 0  # id of the latest submission; 0 before the first
    cf: Future[T] = _UNSUBMITTED  # the latest submission
    pid: int | None = None  # the worker that reported starting the latest submission
    abandoned: bool = False  # the caller left; kill the worker once its pid is known
    tag: Any = None  # the caller's, returned by worker_states()
    on_start: Callable[[int], None] | None = None  # told the worker's pid when it starts
    on_output: Callable[[int, str], None] | None = None  # told (kind, text) as it runs


class ProcessPool:
    """Runs picklable module-level functions in worker processes and survives their crashes.

    Open it with ``async with`` (or call `aclose` when done). ``fn``, its arguments and its
    result travel by pickle, so keep them small plain data. A call may run more than once when
    a worker crashes under it, so ``fn`` should be safe to repeat. Calls are served in order,
    at most ``workers`` at a time; fairness between callers is theirs to arrange.

    Workers import the main script again (as multiprocessing's "forkserver" and "spawn" do),
    so a script must start the pool under ``if __name__ == "__main__":``.

    Raises:
        ValueError: ``workers``, ``max_crashes`` or ``max_tasks_per_child`` is below 1, or
            ``mp_context`` is "fork" (forking a threaded process can deadlock the child).
        UsageError: on opening, when the workers could not import the main script (it was
            read from standard input) or it opened a pool again as they imported it (no main
            guard).
        DeliveryError: on opening, ``reason="worker_crash"`` when workers cannot start.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        max_tasks_per_child: int | None = None,
        max_crashes: int = 2,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        mp_context: str = "forkserver",
    ) -> None:
        self._workers = workers if workers is not None else os.cpu_count() or 1
        sizes = {"workers": self._workers, "max_crashes": max_crashes}
        sizes["max_tasks_per_child"] = 1 if max_tasks_per_child is None else max_tasks_per_child
        for name, size in sizes.items():
            if size < 1:
                raise ValueError(f"ProcessPool: {name} must be at least 1, not {size}")
        if mp_context == "fork":
            raise ValueError("ProcessPool: mp_context 'fork' is unsafe; use 'forkserver'")
        self._context = multiprocessing.get_context(mp_context)
        self._max_tasks_per_child = max_tasks_per_child
        # Calls in the executor at once. With max_tasks_per_child, CPython 3.11-3.14 do not
        # replace a worker that exits while calls wait in the executor's queue (gh-115634:
        # the replacement is skipped on a stale "idle worker" token), so then the pool
        # submits a call only when a worker is free, as the executor's users are advised to.
        ahead = _AHEAD_PER_WORKER if max_tasks_per_child is None else 0
        self._capacity = self._workers * (1 + ahead)
        self._initargs = (initializer, initargs)  # what init_worker needs besides ours
        self._max_crashes = max_crashes
        self._phase = _Phase.NEW
        self._closed: tuple[str, str] | None = None  # (reason, why) once closed
        self._executor: ProcessPoolExecutor | None = None
        self._waiting: deque[_Job[Any]] = deque()  # not submitted yet, front first
        self._suspects: deque[_Job[Any]] = deque()  # the first one is the probe
        self._running: dict[int, _Job[Any]] = {}  # submitted to the executor, by attempt id
        self._attempts = itertools.count(1)
        self._counts: Counter[str] = Counter()
        self._rebuild: asyncio.Task[None] | None = None
        self._partial = b""
        self._settled = 0  # calls settled, for draining the start pipe now and then
        self._watching = False  # the loop watches the start pipe (see _reap_abandoned)
        self._start_error: Exception | None = None  # why the workers could not start
        self._watcher: threading.Thread | None = None  # waits for the manager thread to end
        self._starts: Counter[int] = Counter()  # calls each worker pid reported starting
        self._output_partial = b""

    async def __aenter__(self) -> Self:
        if self._phase is not _Phase.NEW:
            raise RuntimeError("a ProcessPool can be opened only once")
        leave_if_importing_main()  # a worker running an unguarded script: see _main_guard
        problem = unimportable_main("the process pool")
        if problem is not None:
            raise problem
        self._loop = asyncio.get_running_loop()
        if self._context.get_start_method() == "forkserver":
            _preload_in_forkserver()
        self._start_reader, self._start_writer = self._context.Pipe(duplex=False)
        os.set_blocking(self._start_reader.fileno(), False)
        self._withdrawn = self._context.RawArray(ctypes.c_uint64, SLOTS)
        # what running calls print, read whenever it comes (nothing per call otherwise)
        self._output_reader, self._output_writer = self._context.Pipe(duplex=False)
        os.set_blocking(self._output_reader.fileno(), False)
        self._loop.add_reader(self._output_reader.fileno(), self._drain_output)
        self._phase = _Phase.REBUILDING
        opening = self._rebuild = self._loop.create_task(self._replace_executor(None))
        try:
            await asyncio.shield(opening)
        finally:
            # Cancelled, or the workers cannot start. A rebuild begun since is no failure: the
            # new executor's manager thread died at once (see _manager_ended).
            if not opening.done() or self._phase is _Phase.CLOSED:
                await self.aclose()
        if isinstance(self._start_error, UsageError):
            raise self._start_error.with_traceback(None) from None
        if self._closed is not None:
            reason, why = self._closed
            raise DeliveryError(f"the process pool did not start: {why}", reason=reason)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Fail the pending calls with ``DeliveryError(reason="shutdown")``; stop the workers.

        Returns when every worker process is gone. Calling it again does nothing.
        """
        if self._phase is _Phase.NEW or self._start_reader.closed:
            return
        busy = bool(self._running)
        if self._phase is not _Phase.CLOSED:
            self._close("shutdown", "the process pool was closed")
        with anyio.CancelScope(shield=True):
            if self._rebuild is not None:
                await self._rebuild
            if self._watching:
                self._loop.remove_reader(self._start_reader.fileno())
            executor, self._executor = self._executor, None
            if executor is not None:
                await anyio.to_thread.run_sync(_stop_executor, executor, busy)
            if self._watcher is not None:  # ends with the manager thread, stopped just now
                await anyio.to_thread.run_sync(self._watcher.join)
            self._start_reader.close()
            self._start_writer.close()
            self._loop.remove_reader(self._output_reader.fileno())
            self._output_reader.close()
            self._output_writer.close()

    async def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        timeout: float | None = None,
        label: str = "",
        tag: Any = None,
        on_start: Callable[[int], None] | None = None,
        on_output: Callable[[int, str], None] | None = None,
    ) -> T:
        """Run ``fn(*args)`` in a worker process and return its result.

        ``timeout`` counts from this call, waiting for a worker included. When the call times
        out or its caller is cancelled while ``fn`` runs, that worker is killed and replaced;
        other calls are unaffected. Before ``fn`` starts, the call is withdrawn and nothing is
        killed. What ``fn`` prints to stdout or stderr is captured line by line: each line goes
        to ``on_output(0, line)`` while it runs (``on_output(2, "n")``: n lines were lost, the
        pipe being full); ``on_start(pid)`` is told its worker's pid once known (see
        `worker_states`); ``tag`` is the caller's, given back by `worker_states`. An
        exception raised by ``fn`` (any ``BaseException``, ``SystemExit`` included) fails
        this call alone: it is neither retried nor counted as a crash, and it arrives as
        ``DeliveryError(reason="handler_error")`` whose message reads
        ``"<label>: raised <type>: <message>"`` and whose ``__cause__`` is a `WorkerFailure`
        with the type's name, the message, its ``reason`` if any, and the worker's traceback.
        The exception object itself is never pickled (many cannot be unpickled).

        Raises:
            DeliveryError: ``reason="handler_error"`` when ``fn`` raised, or the worker could
                not rebuild ``fn`` or its arguments; ``"invalid_response"`` when its result
                cannot be pickled in the worker or unpickled here; ``"timeout"`` when ``fn``
                did not finish in time; ``"worker_crash"`` when it crashed its worker
                ``max_crashes`` times running alone, or workers cannot be started;
                ``"shutdown"`` when the pool closed.
            RuntimeError: the pool was never opened.
            Exception: whatever pickling ``fn`` and ``args`` raises here, before anything runs.
        """
        if self._phase is _Phase.NEW:
            raise RuntimeError("open the pool first: `async with ProcessPool() as pool`")
        name = label or f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
        call = pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)  # fails here, early
        job: _Job[T] = _Job(call, name, self._loop.create_future())
        job.tag, job.on_start, job.on_output = tag, on_start, on_output
        if self._closed is not None:
            reason, why = self._closed
            raise DeliveryError(f"{name}: not run, {why}", reason=reason)
        self._counts["submitted"] += 1
        if timeout is not None:
            job.deadline = self._loop.call_later(timeout, self._expire, job, timeout)
        self._waiting.append(job)
        self._dispatch()
        try:
            return await job.outcome
        except asyncio.CancelledError:
            self._abandon(job)
            raise

    @property
    def stats(self) -> PoolStats:
        """A frozen snapshot of the pool's counters."""
        return PoolStats(**self._counts)

    def worker_states(self) -> list[tuple[int, bool, int, Any]]:
        """``(pid, busy, calls done, tag of the call it runs or None)`` of each live worker
        process now."""
        self._drain_starts()
        processes = _live_processes(self._executor) if self._executor is not None else []
        running = {
            job.pid: job
            for job in self._running.values()
            if job.pid is not None and not job.cf.done()
        }
        states = []
        for process in processes:
            pid = process.pid
            if pid is None:
                continue
            job = running.get(pid)
            busy = job is not None
            states.append((pid, busy, self._starts[pid] - busy, None if job is None else job.tag))
        return sorted(states, key=lambda state: state[0])

    def kill_worker(self, pid: int) -> bool:
        """Kill worker process ``pid`` (SIGKILL) and replace it. The call it runs fails at
        once with ``worker_crash`` (it was killed on purpose: it is not run again); the other
        calls in flight are run again, nobody blamed.

        Returns:
            whether ``pid`` was a live worker of this pool.
        """
        if self._executor is None or self._phase is _Phase.CLOSED:
            return False
        self._drain_starts()
        for process in _live_processes(self._executor):
            if process.pid != pid:
                continue
            for attempt, job in list(self._running.items()):
                if job.pid == pid and not job.cf.done():
                    del self._running[attempt]
                    if self._suspects and self._suspects[0] is job:
                        self._suspects.popleft()
                    why = f"its worker process {pid} was killed (kill_worker)"
                    self._fail(job, "worker_crash", why)
            process.kill()
            self._break(culprit_known=True)
            return True
        return False

    def drain_starts(self) -> None:
        """Read the start reports waiting in the pipe now (each call's worker pid, passed to
        its ``on_start``): the pool reads them only now and then otherwise."""
        self._drain_starts()

    def worker_pids(self) -> list[int]:
        """The pids of the live worker processes (none while the executor is replaced)."""
        processes = _live_processes(self._executor) if self._executor is not None else []
        return sorted(p.pid for p in processes if p.pid is not None)

    # -- the state machine; everything below runs on the event loop ----------------------

    def _dispatch(self) -> None:
        if self._phase is _Phase.PROBING and not self._running:
            if not self._suspects:
                self._phase = _Phase.SERVING
            elif self._submit(self._suspects[0]):
                return
        while self._phase is _Phase.SERVING and self._waiting:
            if len(self._running) >= self._capacity:
                return
            job = self._waiting.popleft()
            if not self._submit(job):
                self._waiting.appendleft(job)

    def _submit(self, job: _Job[Any]) -> bool:
        assert self._executor is not None
        attempt = next(self._attempts)
        try:
            cf = self._executor.submit(run_attempt, attempt, job.call)
        except BrokenProcessPool:  # an idle worker died: nobody to blame
            self._break(culprit_known=False)
            return False
        if job.attempt:
            self._counts["retried"] += 1
        job.attempt, job.cf, job.pid = attempt, cf, None
        self._running[attempt] = job
        cf.add_done_callback(partial(self._settle_threadsafe, job, attempt))
        return True

    def _settle_threadsafe(self, job: _Job[Any], attempt: int, cf: Future[Any]) -> None:
        # The executor's thread runs this. It is what `asyncio.wrap_future` does, one loop pass
        # shorter.
        with contextlib.suppress(RuntimeError):  # the loop was closed under an open pool
            self._loop.call_soon_threadsafe(self._settle, job, attempt, cf)

    def _settle(self, job: _Job[Any], attempt: int, cf: Future[Any]) -> None:
        if self._running.get(attempt) is not job:
            return  # superseded: requeued after a break, abandoned, or the pool closed
        if job.on_output is not None:
            self._drain_output()  # its last lines were written before its result was sent
        self._settled += 1
        if not self._settled % _DRAIN_EVERY:
            self._drain_starts()  # keeps the start pipe from filling up
        if isinstance(cf.exception(), BrokenProcessPool):
            self._break(culprit_known=False)
        else:
            del self._running[attempt]
            self._complete(job, cf)
            if job.abandoned and self._watching:  # withdrawn before it started
                self._reap_abandoned()  # perhaps the last one watched for
            else:
                self._dispatch()

    def _complete(self, job: _Job[Any], cf: Future[Any]) -> None:
        if self._suspects and self._suspects[0] is job:
            self._suspects.popleft()  # the probe finished alone: it is innocent
        if job.abandoned:
            return
        self._counts["completed"] += 1
        error = cf.exception()
        if error is not None:  # the executor's machinery, not fn (whose errors come as data)
            failed = failure_data("raised", error)
            self._finish(job, DeliveryError(
                f"{job.label}: the worker could not run it: {failed[1]}: {failed[2]}",
                reason=Reason.INTERNAL_ERROR,
            ))  # fmt: skip
            return
        outcome = cf.result()
        if type(outcome) is not bytes:
            self._finish(job, _failure_error(job.label, outcome))
            return
        try:
            result = pickle.loads(outcome)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # whatever rebuilding it raises is this call's failure
            name, message = failure_data("result", exc)[1:3]
            self._finish(job, DeliveryError(
                f"{job.label}: returned a result this process cannot unpickle ({name}: "
                f"{message}); return plain data",
                reason=Reason.INVALID_RESPONSE,
            ))  # fmt: skip
            return
        self._finish(job, None, result)

    def _break(self, *, culprit_known: bool) -> None:
        """The executor is broken (or about to be, by our kill): sort its calls, rebuild."""
        self._drain_starts()  # learn which calls had started
        if not culprit_known:
            self._counts["crashes"] += 1
        requeue = []
        for job in self._running.values():
            if job.abandoned:
                continue
            if job.cf.done() and not isinstance(job.cf.exception(), BrokenProcessPool):
                self._complete(job, job.cf)  # answered just before the break
            elif self._suspects and self._suspects[0] is job:  # the probe, running alone
                if not culprit_known and job.pid is not None:
                    self._blame(job)
            elif culprit_known or job.pid is None:
                requeue.append(job)
            else:
                self._suspects.append(job)
        self._running.clear()
        self._waiting.extendleft(reversed(requeue))
        self._phase = _Phase.REBUILDING
        old, self._executor = self._executor, None
        self._rebuild = self._loop.create_task(self._replace_executor(old))

    def _blame(self, job: _Job[Any]) -> None:
        job.crashes += 1
        if job.crashes >= self._max_crashes:
            self._suspects.popleft()
            why = (
                f"crashed its worker process {job.crashes} times while running alone; it is "
                "not retried. Look for a segfault, os._exit or memory exhaustion in its code"
            )
            self._fail(job, "worker_crash", why)

    async def _replace_executor(self, old: ProcessPoolExecutor | None) -> None:
        try:
            self._executor = await anyio.to_thread.run_sync(self._new_executor, old)
        except Exception as exc:  # every waiting caller must hear about it
            self._start_error = exc
            if self._phase is not _Phase.CLOSED:
                self._close("worker_crash", f"worker processes cannot start: {exc}")
            return
        self._watch(self._executor)
        if old is not None:
            self._counts["rebuilds"] += 1
        if self._phase is _Phase.REBUILDING:
            self._phase = _Phase.PROBING if self._suspects else _Phase.SERVING
            self._dispatch()

    def _new_executor(self, old: ProcessPoolExecutor | None) -> ProcessPoolExecutor:
        # A thread runs this: stopping workers and spawning new ones blocks for milliseconds
        # (the first forkserver start for much longer), which the event loop must not feel.
        if old is not None:
            _stop_executor(old, busy=True)
        exits: list[str] = []
        for _ in range(3):  # a worker may have been killed while starting
            executor = ProcessPoolExecutor(
                self._workers,
                mp_context=self._context,
                initializer=init_worker,
                initargs=(
                    self._start_writer,
                    self._withdrawn,
                    self._output_writer,
                    *self._initargs,
                ),
                max_tasks_per_child=self._max_tasks_per_child,
            )
            started: dict[int, BaseProcess] = {}
            try:  # every submit spawns a worker while none is idle: do that here
                warm_up: list[Future[int]] = []
                while len(warm_up) < self._workers or len(started) < self._workers:
                    warm_up.append(executor.submit(os.getpid))
                    started.update(_worker_processes(executor))
                _wait_for(executor, warm_up)
                return executor
            except BrokenProcessPool:
                _stop_executor(executor, busy=True)
            codes = [p.exitcode for p in started.values()]
            for code in codes:
                if (error := guard_error("the process pool", code)) is not None:
                    raise error  # every retry would die the same way
            exits.append(", ".join(_exit_text(code) for code in codes if code) or "unknown")
        raise RuntimeError(
            f"they died while starting, 3 times in a row ({'; '.join(exits)}); check the "
            "initializer"
        )

    def _watch(self, executor: ProcessPoolExecutor) -> None:
        # A thread blocked in join() costs nothing and hears of the end at once, whatever ends
        # it; the event loop then decides whether the end was ours (see _manager_ended). It
        # holds the pool and the executor weakly: a pool dropped unclosed must stay collectable
        # (the manager thread stops the workers of a collected executor).
        manager = _manager_thread(executor)
        pool_ref, executor_ref = weakref.ref(self), weakref.ref(executor)

        def wait_for_the_end() -> None:
            manager.join()
            pool, ended = pool_ref(), executor_ref()
            if pool is not None and ended is not None:
                with contextlib.suppress(RuntimeError):  # the loop was closed under the pool
                    pool._loop.call_soon_threadsafe(pool._manager_ended, ended)

        name = f"ProcessPool watcher of {manager.name}"
        self._watcher = threading.Thread(target=wait_for_the_end, name=name, daemon=True)
        self._watcher.start()

    def _manager_ended(self, executor: ProcessPoolExecutor) -> None:
        if executor is not self._executor or self._phase is _Phase.CLOSED:
            return  # the pool stopped it: replaced or closed
        try:  # public, and cheap on a broken executor: it raises at once
            executor.submit(int)
        except BrokenProcessPool:  # an idle worker died (calls in flight would have said so)
            self._break(culprit_known=False)
            return
        except RuntimeError:  # the interpreter is exiting: nothing left to serve
            return
        # The manager died of an exception (printed by threading.excepthook) and the executor
        # never said so. Nothing points at a call: requeue them all, as after our own kill.
        self._counts["executor_failures"] += 1
        self._break(culprit_known=True)

    def _expire(self, job: _Job[Any], timeout: float) -> None:
        self._counts["timeouts"] += 1
        why = (
            f"did not finish within {timeout:g} s; its worker process, if it had started, "
            "was killed and replaced. Raise the timeout or split the work"
        )
        self._fail(job, "timeout", why)
        self._abandon(job)

    def _abandon(self, job: _Job[Any]) -> None:
        if job.deadline is not None:
            job.deadline.cancel()
        if self._running.get(job.attempt) is job:
            job.abandoned = True
            if self._suspects and self._suspects[0] is job:
                self._suspects.popleft()
            if job.cf.cancel() or job.cf.done():  # still queued, or finished meanwhile
                del self._running[job.attempt]  # either way no worker runs it: kill nothing
            else:  # in the executor's call queue, or running: see run_attempt
                self._withdrawn[job.attempt % SLOTS] = job.attempt
                self._reap_abandoned()
        elif job in self._waiting:
            self._waiting.remove(job)
        elif job in self._suspects:
            self._suspects.remove(job)
        self._dispatch()

    def _kill(self, job: _Job[Any]) -> None:
        del self._running[job.attempt]
        assert self._executor is not None
        for process in _live_processes(self._executor):
            if process.pid == job.pid:
                process.kill()  # the executor breaks: requeue the others, blaming nobody
                self._break(culprit_known=True)
                return

    def _reap_abandoned(self) -> None:
        # Kills the workers of abandoned calls. While one has not reported its pid yet (it is
        # queued in the executor: it will either withdraw itself, see run_attempt, or report
        # its start), the start pipe is watched; otherwise it is only drained when a call
        # completes, which saves a loop wake-up per call.
        self._drain_starts()
        for job in [job for job in self._running.values() if job.abandoned]:
            if job.pid is not None and self._running.get(job.attempt) is job:
                self._kill(job)
        watch = any(job.abandoned for job in self._running.values())
        if watch != self._watching:
            fd = self._start_reader.fileno()
            if watch:
                self._loop.add_reader(fd, self._reap_abandoned)
            else:
                self._loop.remove_reader(fd)
            self._watching = watch
        self._dispatch()

    def _drain_starts(self) -> None:
        while True:
            try:
                data = self._partial + os.read(self._start_reader.fileno(), 65536)
            except BlockingIOError:
                return
            whole = len(data) - len(data) % START.size
            self._partial = data[whole:]
            for attempt, pid in START.iter_unpack(data[:whole]):
                self._starts[pid] += 1
                if (job := self._running.get(attempt)) is not None:
                    job.pid = pid
                    if job.on_start is not None:
                        job.on_start(pid)
            if len(data) < 65536:
                return  # the pipe is empty: spare the syscall that would say so

    def _drain_output(self) -> None:
        """The loop calls this when running calls printed: each record to its job."""
        try:
            data = self._output_partial + os.read(self._output_reader.fileno(), 65536)
        except (BlockingIOError, OSError):
            return
        view, at, size = memoryview(data), 0, OUTPUT.size
        while len(data) - at >= size:
            attempt, kind, length = OUTPUT.unpack_from(view, at)
            if len(data) - at - size < length:
                break
            text = bytes(view[at + size : at + size + length]).decode("utf-8", "replace")
            at += size + length
            job = self._running.get(attempt)
            if job is not None and job.on_output is not None:
                job.on_output(kind, text)
        self._output_partial = data[at:]

    def _finish(self, job: _Job[Any], error: BaseException | None, result: Any = None) -> None:
        if job.deadline is not None:
            job.deadline.cancel()
        if job.outcome.done():
            return  # the caller was cancelled
        if error is not None:
            job.outcome.set_exception(error)
        else:
            job.outcome.set_result(result)

    def _fail(self, job: _Job[Any], reason: str, why: str) -> None:
        self._finish(job, DeliveryError(f"{job.label}: {why}", reason=reason))

    def _close(self, reason: str, why: str) -> None:
        self._phase = _Phase.CLOSED
        self._closed = (reason, why)
        for job in [*self._waiting, *self._suspects, *self._running.values()]:
            self._fail(job, reason, f"did not finish, {why}")
        self._waiting.clear()
        self._suspects.clear()
        self._running.clear()
