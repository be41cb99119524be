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
fixed-size writes below ``PIPE_BUF``, so workers never interleave them and need no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import multiprocessing
import os
import pickle
import struct
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Generic, Self, TypeVar

import anyio

from xml_pipeline.errors import DeliveryError

__all__ = ["PoolStats", "ProcessPool"]

T = TypeVar("T")

_START = struct.Struct("=QI")  # (attempt id, worker pid)
_worker_start_pipe: Connection | None = None  # set in each worker by _init_worker


def _init_worker(
    pipe: Connection, initializer: Callable[..., object] | None, initargs: tuple[Any, ...]
) -> None:
    global _worker_start_pipe
    _worker_start_pipe = pipe
    if initializer is not None:
        initializer(*initargs)


def _run_attempt(attempt: int, call: bytes) -> Any:
    assert _worker_start_pipe is not None, "worker started without ProcessPool's initializer"
    os.write(_worker_start_pipe.fileno(), _START.pack(attempt, os.getpid()))
    # The call is unpickled here, after the start is reported, so that a function the worker
    # cannot import or arguments it cannot rebuild fail as an ordinary exception of this call
    # instead of killing the worker before anyone knows which call it was running.
    fn, args = pickle.loads(call)
    try:
        return fn(*args)
    except Exception:
        raise
    except BaseException as exc:  # SystemExit, KeyboardInterrupt: would stop the parent's loop
        raise RuntimeError(f"raised {type(exc).__name__}: {exc}") from None


def _live_processes(executor: ProcessPoolExecutor) -> list[BaseProcess]:
    # CPython keeps the workers in `_processes` (typed in typeshed); there is no public view.
    # `exitcode` polls the process sentinel, so a reaped pid is never signalled.
    return [p for p in dict(executor._processes or {}).values() if p.exitcode is None]


def _stop_executor(executor: ProcessPoolExecutor, busy: bool) -> None:
    # Blocks until the workers are gone; busy workers are killed, idle ones exit on their own.
    if busy:
        for process in _live_processes(executor):
            process.kill()
    executor.shutdown(wait=True, cancel_futures=True)


def _preload_in_forkserver() -> None:
    # Every worker imports this package (hundreds of ms with lxml and friends). A forkserver
    # that preloads it forks ready workers instead, so starts and rebuilds take milliseconds.
    # No effect once the forkserver runs; preloads set by others are kept.
    server = forkserver._forkserver
    modules = list(getattr(server, "_preload_modules", ["__main__"]))
    if __name__ not in modules:
        server.set_forkserver_preload([*modules, __name__])


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
    """

    submitted: int = 0
    completed: int = 0
    crashes: int = 0
    rebuilds: int = 0
    timeouts: int = 0
    retried: int = 0


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


class ProcessPool:
    """Runs picklable module-level functions in worker processes and survives their crashes.

    Open it with ``async with`` (or call `aclose` when done). ``fn``, its arguments and its
    result travel by pickle, so keep them small plain data. A call may run more than once when
    a worker crashes under it, so ``fn`` should be safe to repeat. Calls are served in order,
    at most ``workers`` at a time; fairness between callers is theirs to arrange.

    Raises:
        ValueError: ``workers``, ``max_crashes`` or ``max_tasks_per_child`` is below 1, or
            ``mp_context`` is "fork" (forking a threaded process can deadlock the child).
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
        self._initargs = (initializer, initargs)  # what _init_worker needs besides the pipe
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
        self._watching = False  # the loop watches the start pipe (see _reap_abandoned)

    async def __aenter__(self) -> Self:
        if self._phase is not _Phase.NEW:
            raise RuntimeError("a ProcessPool can be opened only once")
        self._loop = asyncio.get_running_loop()
        if self._context.get_start_method() == "forkserver":
            _preload_in_forkserver()
        self._start_reader, self._start_writer = self._context.Pipe(duplex=False)
        os.set_blocking(self._start_reader.fileno(), False)
        self._phase = _Phase.REBUILDING
        self._rebuild = self._loop.create_task(self._replace_executor(None))
        try:
            await asyncio.shield(self._rebuild)
        finally:
            if self._phase is not _Phase.SERVING:  # cancelled, or the workers cannot start
                await self.aclose()
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
            self._start_reader.close()
            self._start_writer.close()

    async def run(
        self, fn: Callable[..., T], *args: Any, timeout: float | None = None, label: str = ""
    ) -> T:
        """Run ``fn(*args)`` in a worker process and return its result.

        Exceptions raised by ``fn`` propagate as they are. ``timeout`` counts from this call,
        waiting for a worker included. When the call times out or its caller is cancelled
        while ``fn`` runs, that worker is killed and replaced; other calls are unaffected.

        Raises:
            DeliveryError: ``reason="timeout"`` when ``fn`` did not finish in time;
                ``"worker_crash"`` when it crashed its worker ``max_crashes`` times running
                alone, or workers cannot be started; ``"shutdown"`` when the pool closed.
            RuntimeError: the pool was never opened.
        """
        if self._phase is _Phase.NEW:
            raise RuntimeError("open the pool first: `async with ProcessPool() as pool`")
        name = label or f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
        call = pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)  # fails here, early
        job: _Job[T] = _Job(call, name, self._loop.create_future())
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
            if len(self._running) >= self._workers:
                return  # a call submitted only when a worker is free starts at once
            job = self._waiting.popleft()
            if not self._submit(job):
                self._waiting.appendleft(job)

    def _submit(self, job: _Job[Any]) -> bool:
        assert self._executor is not None
        attempt = next(self._attempts)
        try:
            cf = self._executor.submit(_run_attempt, attempt, job.call)
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
        # shorter and without wrap_future's hang when ``fn`` raises StopIteration.
        with contextlib.suppress(RuntimeError):  # the loop was closed under an open pool
            self._loop.call_soon_threadsafe(self._settle, job, attempt, cf)

    def _settle(self, job: _Job[Any], attempt: int, cf: Future[Any]) -> None:
        if self._running.get(attempt) is not job:
            return  # superseded: requeued after a break, abandoned, or the pool closed
        self._drain_starts()  # keeps the start pipe from filling up
        if isinstance(cf.exception(), BrokenProcessPool):
            self._break(culprit_known=False)
        else:
            del self._running[attempt]
            self._complete(job, cf)
            self._dispatch()

    def _complete(self, job: _Job[Any], cf: Future[Any]) -> None:
        if self._suspects and self._suspects[0] is job:
            self._suspects.popleft()  # the probe finished alone: it is innocent
        if job.abandoned:
            return
        self._counts["completed"] += 1
        error = cf.exception()
        if (error is not None and not isinstance(error, Exception)) or isinstance(
            error, StopIteration
        ):  # an asyncio Future cannot carry StopIteration; SystemExit would stop the loop
            wrapped = RuntimeError(f"{job.label}: raised {type(error).__name__}")
            wrapped.__cause__ = error
            error = wrapped
        self._finish(job, error, None if error else cf.result())

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
            if self._phase is not _Phase.CLOSED:
                self._close("worker_crash", f"worker processes cannot start: {exc}")
            return
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
        for _ in range(3):  # a worker may have been killed while starting
            executor = ProcessPoolExecutor(
                self._workers,
                mp_context=self._context,
                initializer=_init_worker,
                initargs=(self._start_writer, *self._initargs),
                max_tasks_per_child=self._max_tasks_per_child,
            )
            try:  # every submit spawns a worker while none is idle: do that here
                warm_up = [executor.submit(os.getpid) for _ in range(self._workers)]
                while len(executor._processes) < self._workers:
                    warm_up.append(executor.submit(os.getpid))
                for call in warm_up:
                    call.result()
                return executor
            except BrokenProcessPool:
                _stop_executor(executor, busy=True)
        raise RuntimeError("they died while starting, 3 times in a row; check the initializer")

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
            else:
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
        # Kills the workers of abandoned calls. While one has not reported its pid yet (it was
        # submitted but has not started), the start pipe is watched; otherwise it is only
        # drained when a call completes, which saves a loop wake-up per call.
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
            whole = len(data) - len(data) % _START.size
            self._partial = data[whole:]
            for attempt, pid in _START.iter_unpack(data[:whole]):
                if (job := self._running.get(attempt)) is not None:
                    job.pid = pid
            if len(data) < 65536:
                return  # the pipe is empty: spare the syscall that would say so

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
