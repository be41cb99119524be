"""The multiprocessing-manager backend: one state server shared by the processes of one host.

`start_manager_server` runs a `multiprocessing.managers.BaseManager` server in a child process
(started with "spawn" or "forkserver", never a plain fork). The server holds one
`_SharedState`: a `StateCore` per namespace (the same synchronous core as `MemoryBackend`,
so the rules are written once) behind one lock, so every operation is atomic across processes.

`ManagerBackend` is the client. It speaks the manager's own request protocol over a small pool
of authenticated connections it owns (a `BaseProxy` keeps one connection per calling thread,
which could not be closed on ``aclose()``), and it runs each blocking request in a worker
thread so the event loop never waits on a socket.

A server that dies is restarted at the same address by the `ManagerServer` that started it,
empty (like a Redis restarted without persistence). Clients recover on their own: a pooled
connection to a dead server is noticed before use and replaced, the client's handle on the
shared state is created again, and connecting is retried for ``reconnect_seconds`` while a
server is being restarted. A request that was in flight when its server died fails: whether it
was applied is unknown, so it is never sent twice.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import multiprocessing
import os
import platform
import secrets
import signal
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Client, Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.managers import BaseManager
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any, Literal

import anyio
import anyio.to_thread

from xml_pipeline._errors import BackendError
from xml_pipeline._main_guard import guard_error, leave_if_importing_main, unimportable_main
from xml_pipeline.backends.base import (
    DeadLetter,
    DeadLetterCounts,
    PruneResult,
    RunSnapshot,
    ThreadRecord,
)
from xml_pipeline.backends.rules import DEFAULTS, StateCore, check_settings

__all__ = ["ManagerBackend", "ManagerServer", "start_manager_server"]

log = logging.getLogger("xml_pipeline.backends.manager")

_TYPEID = "xml_pipeline_state"
_CONNECT_TIMEOUT = 5.0
_RECONNECT = 5.0  # how long a client keeps trying to connect before it gives up
_REPLY_TIMEOUT = 10.0  # one operation is a dict update under a lock: far below this
# The StateCore methods a client may call; anything else is refused by the server.
_METHODS = frozenset(
    {
        "put_root",
        "extend",
        "prune",
        "get",
        "chain",
        "retire_conversation",
        "abandon",
        "count",
        "history",
        "sweep",
        "add_dead_letters",
        "dead_letters",
        "get_dead_letter",
        "delete_dead_letters",
        "dead_letter_counts",
        "put_runs",
        "run_snapshots",
        "push_run_command",
        "delete_runs",
    }
)


class _SharedState:
    """The server-side object: one `StateCore` per namespace, one lock around every call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spaces: dict[str, StateCore] = {}

    def call(self, namespace: str, method: str, args: tuple[Any, ...]) -> Any:
        if method not in _METHODS:
            raise AttributeError(f"the shared state has no operation {method!r}")
        with self._lock:
            state = self._spaces.get(namespace)
            if state is None:
                state = self._spaces[namespace] = StateCore()
            return getattr(state, method)(*args)


_server_state: _SharedState | None = None
_server_state_lock = threading.Lock()


def _get_server_state() -> _SharedState:
    """The registered factory: every client gets the one state of this server process."""
    global _server_state
    with _server_state_lock:
        if _server_state is None:
            _server_state = _SharedState()
        return _server_state


def _init_server(parent_pid: int) -> None:
    """Runs in the server process before it serves: exit when the starting process is gone."""

    def watch_parent() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch_parent, name="xml-pipeline-parent-watch", daemon=True).start()


class _StateManager(BaseManager):
    pass


_StateManager.register(_TYPEID, callable=_get_server_state, exposed=("call",))


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit status {code}"


class ManagerServer:
    """A running state server, in a child process of this one.

    Returned by `start_manager_server`; pass ``address`` and ``authkey`` to `ManagerBackend`
    in every process that shares the state. The server exits with `shutdown`, at the end of a
    ``with`` block, when this process exits, or when this process dies.

    When the server process dies otherwise (killed, out of memory), it is started again at the
    same address, empty, unless ``restart`` was false; the death is logged with its pid and
    exit status, and clients reconnect on their own.

    Attributes:
        address: ``(host, port)`` the server listens on (the real port when 0 was asked for).
        authkey: the secret clients present.
        restarts: how many times the server was started again after dying.
        gone: why the server is gone for good (shut down, or died and was not or could not
            be started again: pid and exit status), or ``None`` while it serves.
    """

    def __init__(
        self,
        manager: _StateManager,
        authkey: bytes,
        *,
        context: BaseContext | None = None,
        restart: bool = False,
    ) -> None:
        self._manager = manager
        address = manager.address
        assert isinstance(address, tuple)
        self.address: tuple[str, int] = (str(address[0]), int(address[1]))
        self.authkey = authkey
        self.restarts = 0
        self.gone: str | None = None
        self._context = context
        self._restart = restart
        self._serving = threading.Event()  # cleared while the server is down or restarting
        self._serving.set()
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()  # wakes the watcher up at shutdown
        self._watcher: threading.Thread | None = None
        if self._process() is not None:
            self._watcher = threading.Thread(
                target=self._watch, name="xml-pipeline-state-server-watch", daemon=True
            )
            self._watcher.start()
            # multiprocessing stops the server at exit (an atexit hook registered before this
            # one, so it runs after it): that death must not be taken for a crash
            atexit.register(self._stop_watching)

    def __repr__(self) -> str:
        return f"ManagerServer(address={self.address!r})"

    @property
    def pid(self) -> int | None:
        """The pid of the server process now serving (``None`` once it is gone)."""
        process = self._process()
        return None if process is None or self.gone is not None else process.pid

    def _process(self) -> BaseProcess | None:
        return _server_process(self._manager)

    def wait_serving(self, timeout: float) -> bool:
        """Block until the server serves (it may be restarting); whether it does."""
        return self._serving.wait(timeout) and self.gone is None

    def shutdown(self) -> None:
        """Stop the server process; its state is gone. Safe to call twice."""
        if self.gone is None:
            self.gone = "it was shut down"
        self._stop_watching()
        atexit.unregister(self._stop_watching)
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join()
        self._manager.shutdown()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _stop_watching(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _watch(self) -> None:
        # One thread per server: sleeps on the process sentinel, so a death is seen at once.
        while True:
            process = self._process()
            if process is None:  # joined by its manager: there is nothing left to watch
                return
            wait([process.sentinel, self._wake_r])
            if self._stopping:
                return
            process.join()
            self._serving.clear()
            died = f"pid {process.pid} died ({_exit_text(process.exitcode)})"
            if not self._restart:
                self.gone = f"{died}; it is not started again (restart=False)"
                log.error("the state server at %s is gone: %s", self._where, self.gone)
                self._serving.set()
                return
            log.warning("the state server at %s: %s; starting it again, empty", self._where, died)
            try:
                self._start_again()
            except Exception as exc:
                self.gone = f"{died} and could not be started again: {exc}"
                log.error("the state server at %s is gone: %s", self._where, self.gone)
                self._serving.set()
                return
            self.restarts += 1
            log.warning("the state server at %s serves again as pid %s", self._where, self.pid)
            self._serving.set()

    def _start_again(self) -> None:
        self._manager.shutdown()  # the dead one: only clears its bookkeeping
        deadline = time.monotonic() + _CONNECT_TIMEOUT
        while True:
            context = self._context or multiprocessing.get_context("spawn")
            manager = _StateManager(address=self.address, authkey=self.authkey, ctx=context)
            try:
                manager.start(initializer=_init_server, initargs=(os.getpid(),))
            except (OSError, EOFError) as exc:  # the port is held by someone else for now
                if time.monotonic() > deadline or self._stopping:
                    raise BackendError(f"{exc!r}", reason="backend_unreachable") from exc
                time.sleep(0.1)
                continue
            self._manager = manager
            return

    @property
    def _where(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def __enter__(self) -> ManagerServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


def start_manager_server(
    address: tuple[str, int] = ("127.0.0.1", 0),
    authkey: bytes | None = None,
    *,
    start_method: Literal["spawn", "forkserver"] = "spawn",
    restart: bool = True,
) -> ManagerServer:
    """Start a state server in a child process and return once it accepts connections.

    Use it in the process that owns an organism whose pumps run in several local processes;
    the other processes connect with ``ManagerBackend(server.address, server.authkey)``. The
    child process imports the main script again, so call this under
    ``if __name__ == "__main__":``.

    Args:
        address: where to listen; port 0 picks a free port (read it from ``.address``).
        authkey: the shared secret clients must present; a random one when ``None``.
        start_method: how the child process starts ("spawn" or "forkserver"; never a plain
            fork, which is unsafe from a process that runs threads).
        restart: start the server again, empty, at the same address when its process dies.

    Raises:
        BackendError: the server could not be started (for instance, the port is in use).
        UsageError: the child process could not import the main script (it was read from
            standard input), or the script started a server again as the child imported it
            (no ``if __name__ == "__main__":`` guard).
    """
    leave_if_importing_main()  # a child running an unguarded script: see _main_guard
    problem = unimportable_main("the state server")
    if problem is not None:
        raise problem
    key = secrets.token_bytes(32) if authkey is None else authkey
    context = multiprocessing.get_context(start_method)
    manager = _StateManager(address=address, authkey=key, ctx=context)
    try:
        manager.start(initializer=_init_server, initargs=(os.getpid(),))
    except (OSError, EOFError) as exc:
        process = _server_process(manager, started=False)
        if process is not None:
            process.join(_CONNECT_TIMEOUT)
            error = guard_error("the state server", process.exitcode)
            if error is not None:
                raise error from None
        raise BackendError(
            f"could not start the state server on {address[0]}:{address[1]}: {exc!r}; "
            "choose a free port, or port 0 to pick one",
            reason="backend_unreachable",
        ) from exc
    return ManagerServer(manager, key, context=context, restart=restart)


class ManagerBackend:
    """Shared state in a `start_manager_server` server, for the processes of one host.

    Every operation is one request, applied by the server under its lock (atomic across
    processes). Several organisms can share one server under different ``namespace`` values;
    they never see each other's records. Requests run in worker threads, at most
    ``max_connections`` at a time, one pooled connection each.

    When the server goes away, each request keeps trying to connect for ``reconnect_seconds``
    (a server being restarted comes back meanwhile), then fails; once the server has been
    away that long, requests fail at once until it is back. Pass ``server`` when this process
    started the server: a death it cannot recover from is then reported as such.

    Raises:
        ValueError: ``thread_ttl_seconds`` is not positive or ``history_max_entries`` < 1.
    """

    def __init__(
        self,
        address: tuple[str, int],
        authkey: bytes,
        *,
        namespace: str = "xp",
        thread_ttl_seconds: float = DEFAULTS.thread_ttl_seconds,
        history_max_entries: int = DEFAULTS.history_max_entries,
        max_connections: int = 8,
        reply_timeout_seconds: float = _REPLY_TIMEOUT,
        reconnect_seconds: float = _RECONNECT,
        server: ManagerServer | None = None,
    ) -> None:
        check_settings(
            "ManagerBackend()",
            thread_ttl_seconds=thread_ttl_seconds,
            history_max_entries=history_max_entries,
        )
        self._reply_timeout = reply_timeout_seconds
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections!r}")
        if not reconnect_seconds >= 0:
            raise ValueError(f"reconnect_seconds must be >= 0, got {reconnect_seconds!r}")
        self._address = (address[0], int(address[1]))
        self._authkey = authkey
        self._namespace = namespace
        self._ttl = float(thread_ttl_seconds)
        self._max_entries = history_max_entries
        self._limiter = anyio.CapacityLimiter(max_connections)
        self._idle: collections.deque[Connection] = collections.deque()
        self._pool_lock = threading.Lock()
        self._ident: str | None = None
        self._ident_lock = threading.Lock()
        # a connection to the server failed: the server may have been replaced, and this
        # client's handle on the shared state (its ident) with it
        self._stale = False
        self._down_since: float | None = None  # when connecting started to fail
        self._reconnect = reconnect_seconds
        self._server = server
        self._closed = False

    def __repr__(self) -> str:
        host, port = self._address
        return f"ManagerBackend(address=({host!r}, {port}), namespace={self._namespace!r})"

    @property
    def server(self) -> ManagerServer | None:
        """The server this client was given as started by this process, if any."""
        return self._server

    @property
    def _where(self) -> str:
        return f"{self._address[0]}:{self._address[1]}"

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect to the server and check the authkey.

        Raises:
            BackendError: the server is unreachable (after ``reconnect_seconds``) or refused
                the authkey; the message names the address, the cause and how long it waited.
        """
        self._closed = False
        limit = _CONNECT_TIMEOUT + self._reconnect
        try:
            with anyio.fail_after(limit):
                self._ident = await anyio.to_thread.run_sync(
                    self._create_ident, abandon_on_cancel=True
                )
        except TimeoutError as exc:
            raise self._unreachable(exc, f"no answer within {limit:g} s") from exc
        self._stale = False

    async def aclose(self) -> None:
        """Close this client's connections; the state stays in the server."""
        with self._pool_lock:
            self._closed = True
            idle = list(self._idle)
            self._idle.clear()
        for conn in idle:
            conn.close()
        ident, self._ident = self._ident, None
        if ident is not None:
            await anyio.to_thread.run_sync(self._release_blocking, ident)

    # -- the protocol -------------------------------------------------------------------------

    async def put_root(self, thread_id: str, name: str) -> None:
        """Create (or keep, if present) the root record; the root has no TTL."""
        await self._call("put_root", thread_id, name)

    async def extend(
        self, parent_id: str, child_id: str, listener: str, history_entry: bytes | None = None
    ) -> ThreadRecord | None:
        """Create ``child_id`` under ``parent_id`` (see `Backend.extend`).

        Raises:
            ValueError: ``child_id`` is already in use under another parent.
            BackendError: the server is unreachable.
        """
        result: ThreadRecord | None = await self._call(
            "extend", parent_id, child_id, listener, history_entry, self._ttl, self._max_entries
        )
        return result

    async def prune(self, thread_id: str, history_entry: bytes | None = None) -> PruneResult | None:
        """Retire ``thread_id`` and tell where its response goes (see `Backend.prune`).

        Raises:
            BackendError: the server is unreachable.
        """
        result: PruneResult | None = await self._call(
            "prune", thread_id, history_entry, self._ttl, self._max_entries
        )
        return result

    async def get(self, thread_id: str) -> ThreadRecord | None:
        """The record of ``thread_id`` (refreshing its TTL), or ``None``.

        Raises:
            BackendError: the server is unreachable.
        """
        result: ThreadRecord | None = await self._call("get", thread_id, self._ttl)
        return result

    async def chain(self, thread_id: str) -> list[str] | None:
        """Listener names from the root down to ``thread_id``, or ``None`` when unknown.

        Raises:
            BackendError: the server is unreachable.
        """
        result: list[str] | None = await self._call("chain", thread_id)
        return result

    async def retire_conversation(self, conversation: str) -> int:
        """Remove every record and the history of a conversation; returns records removed.

        Raises:
            BackendError: the server is unreachable.
        """
        result: int = await self._call("retire_conversation", conversation)
        return result

    async def abandon(self, conversation: str) -> int:
        """Retire a conversation whose opening call may still arrive (see `Backend.abandon`).

        Raises:
            BackendError: the server is unreachable.
        """
        result: int = await self._call("abandon", conversation)
        return result

    async def count(self) -> int:
        """Number of live thread records in this namespace, the root included.

        Raises:
            BackendError: the server is unreachable.
        """
        result: int = await self._call("count")
        return result

    async def history(self, conversation: str) -> list[bytes]:
        """The conversation's history, oldest first (empty when none).

        Raises:
            BackendError: the server is unreachable.
        """
        result: list[bytes] = await self._call("history", conversation)
        return result

    async def sweep(self) -> int:
        """Evict every expired record and conversation of this namespace now.

        Raises:
            BackendError: the server is unreachable.
        """
        result: int = await self._call("sweep")
        return result

    async def add_dead_letters(
        self, letters: Sequence[DeadLetter], max_entries: int
    ) -> list[DeadLetter]:
        """Keep ``letters`` in the server, in one request (see `Backend.add_dead_letters`).

        Raises:
            BackendError: the server is unreachable.
        """
        result: list[DeadLetter] = await self._call("add_dead_letters", list(letters), max_entries)
        return result

    async def dead_letters(
        self,
        *,
        reason: str | None = None,
        listener: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        """The kept dead letters, oldest first, filtered (see `Backend.dead_letters`).

        Raises:
            BackendError: the server is unreachable.
        """
        result: list[DeadLetter] = await self._call("dead_letters", reason, listener, since, limit)
        return result

    async def get_dead_letter(self, letter_id: str) -> DeadLetter | None:
        """The dead letter with this id, or ``None``.

        Raises:
            BackendError: the server is unreachable.
        """
        result: DeadLetter | None = await self._call("get_dead_letter", letter_id)
        return result

    async def delete_dead_letters(self, letter_ids: Sequence[str]) -> int:
        """Remove the dead letters with these ids; returns how many were removed.

        Raises:
            BackendError: the server is unreachable.
        """
        result: int = await self._call("delete_dead_letters", list(letter_ids))
        return result

    async def dead_letter_counts(self) -> DeadLetterCounts:
        """How many dead letters are kept, and how many were dropped beyond the bound.

        Raises:
            BackendError: the server is unreachable.
        """
        kept, dropped = await self._call("dead_letter_counts")
        return DeadLetterCounts(kept, dropped)

    async def put_runs(
        self, process: str, snapshot: bytes, forget_after_seconds: float
    ) -> list[bytes]:
        """Keep the runs of ``process``; take its commands (see `Backend.put_runs`).

        Raises:
            BackendError: the server is unreachable.
        """
        result: list[bytes] = await self._call("put_runs", process, snapshot, forget_after_seconds)
        return result

    async def run_snapshots(self) -> list[RunSnapshot]:
        """Every process's runs not forgotten yet (see `Backend.run_snapshots`).

        Raises:
            BackendError: the server is unreachable.
        """
        found = await self._call("run_snapshots")
        return [RunSnapshot(*item) for item in found]

    async def push_run_command(self, process: str, command: bytes) -> bool:
        """Queue ``command`` for ``process`` (see `Backend.push_run_command`).

        Raises:
            BackendError: the server is unreachable.
        """
        result: bool = await self._call("push_run_command", process, command)
        return result

    async def delete_runs(self, process: str) -> None:
        """Remove the runs of ``process`` and its commands.

        Raises:
            BackendError: the server is unreachable.
        """
        await self._call("delete_runs", process)

    # -- requests -----------------------------------------------------------------------------

    async def _call(self, method: str, *args: Any) -> Any:
        ident = self._ident
        if ident is None:
            raise BackendError(
                f"the state server client for {self._where} is not open; "
                "call `await backend.open()` first",
                reason="backend_error",
            )
        return await anyio.to_thread.run_sync(
            self._call_blocking, ident, method, args, limiter=self._limiter
        )

    def _call_blocking(self, ident: str, method: str, args: tuple[Any, ...]) -> Any:
        if self._stale:
            ident = self._renew_ident(ident)
        conn = self._checkout()
        try:
            if self._stale:  # the checkout found the server gone: it may be a new one now
                ident = self._renew_ident(ident)
            kind, result = self._send(conn, ident, method, args)
            if kind == _TRACEBACK and _unknown_ident(result, ident):
                # a restarted server, reached before any failure told us: it refused the
                # request before running anything, so sending it again is safe
                kind, result = self._send(conn, self._renew_ident(ident), method, args)
        except BaseException:
            conn.close()
            raise
        self._checkin(conn)
        if kind == _RETURN:
            return result
        if kind == _ERROR and isinstance(result, ValueError):
            raise result
        raise BackendError(
            f"the state server at {self._where} failed {method}: {result}",
            reason="backend_error",
        )

    def _send(
        self, conn: Connection, ident: str, method: str, args: tuple[Any, ...]
    ) -> tuple[str, Any]:
        try:
            conn.send(_message(ident, "call", (self._namespace, method, args)))
            # a stopped server or a half-open link must not hang the caller (and, through the
            # thread limiter, every other caller) forever
            if not conn.poll(self._reply_timeout):
                raise TimeoutError(f"no reply within {self._reply_timeout:g} s")
            kind, result = conn.recv()
        except (OSError, EOFError) as exc:  # TimeoutError is an OSError
            # Never sent again: the server may have applied it before it died or stalled.
            self._stale = True
            raise self._unreachable(exc, f"the connection failed during {method}") from exc
        return kind, result

    def _checkout(self) -> Connection:
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                break
            if not conn.poll(0):
                return conn
            # readable while idle: the server closed it (it died, or was restarted)
            conn.close()
            self._stale = True
        conn = self._connect()
        try:
            _request(conn, None, _ACCEPT, ("xml-pipeline",))
        except (OSError, EOFError) as exc:
            conn.close()
            self._stale = True
            raise self._unreachable(exc, "the connection failed as it opened") from exc
        return conn

    def _checkin(self, conn: Connection) -> None:
        with self._pool_lock:
            if not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def _connect(self) -> Connection:
        """An authenticated connection; retried while the server is away, up to the
        reconnect window (counted from when it went away, so an outage is waited out once)."""
        started = time.monotonic()
        pause = 0.02
        while True:
            try:
                conn = Client(self._address, authkey=self._authkey)
            except multiprocessing.AuthenticationError as exc:
                raise self._unreachable(exc, "could not connect") from exc
            except (OSError, EOFError) as exc:
                now = time.monotonic()
                if self._down_since is None:
                    self._down_since = now
                away = now - self._down_since
                left = self._reconnect - away
                if left <= 0 or (self._server is not None and self._server.gone is not None):
                    waited = f"waited {now - started:.1f} s; away for {away:.1f} s"
                    raise self._unreachable(exc, f"no connection accepted ({waited})") from exc
                if self._server is not None and not self._server.wait_serving(0):
                    self._server.wait_serving(left)  # it is being started again
                else:
                    time.sleep(min(pause, left))
                    pause = min(pause * 2, 0.5)
                continue
            self._down_since = None
            return conn

    def _create_ident(self) -> str:
        """Ask the server for a handle on the shared state (one connection, one request)."""
        conn = self._connect()
        try:
            ident, _exposed = _request(conn, None, _CREATE, (_TYPEID,))
        except (OSError, EOFError) as exc:
            raise self._unreachable(exc, "the connection failed as it opened") from exc
        finally:
            conn.close()
        return str(ident)

    def _renew_ident(self, used: str) -> str:
        """A handle valid on the server now serving (``used`` may be from a dead one)."""
        with self._ident_lock:
            if self._ident == used or self._stale:
                self._stale = False
                try:
                    self._ident = self._create_ident()
                except BaseException:
                    self._stale = True
                    raise
            return self._ident or used

    def _release_blocking(self, ident: str) -> None:
        # Drop this client's reference to the server object; the server keeps the state.
        try:
            with Client(self._address, authkey=self._authkey) as conn:
                _request(conn, None, _DECREF, (ident,))
        except (OSError, EOFError, multiprocessing.AuthenticationError):
            pass  # the server is gone: nothing left to release

    def _unreachable(self, exc: BaseException, what: str) -> BackendError:
        server = self._server
        if server is not None and server.gone is not None:
            return BackendError(
                f"the state server this process started at {self._where} is gone: "
                f"{server.gone}; {what}: {exc!r}. Its state is lost: restart the organism",
                reason="backend_unreachable",
            )
        if isinstance(exc, multiprocessing.AuthenticationError):
            hint = "the authkey does not match the server's; pass the server's authkey"
        else:
            hint = (
                "start the server (start_manager_server) or fix the manager address "
                "in organism.yaml"
            )
        return BackendError(
            f"state server at {self._where} unreachable: {what}: {exc!r}; {hint}",
            reason="backend_unreachable",
        )


def _server_process(manager: BaseManager, *, started: bool = True) -> BaseProcess | None:
    """The process a manager runs its server in (``None`` once joined).

    The backend's one use of ``BaseManager._process``: there is no public view of the server's
    process, and `ManagerServer` needs it to see the server die (its sentinel), to say its pid
    and to tell a child that died for want of a main guard. CPython 3.11-3.14 set it in
    ``start()``; ``started=False`` accepts its absence (``start()`` failed before making the
    process). The test ``test_manager_process_internal_is_what_the_backend_expects`` fails if
    that changes.

    Raises:
        RuntimeError: this Python keeps the process elsewhere or in another shape.
    """
    held: object = getattr(manager, "_process", AttributeError)
    if held is None or isinstance(held, BaseProcess):
        return held
    if held is AttributeError and not started:
        return None
    found = "no such attribute" if held is AttributeError else type(held).__name__
    raise RuntimeError(
        "ManagerServer finds the state server's process in BaseManager._process, a "
        f"multiprocessing process, but Python {platform.python_version()} has {found} there; "
        "run a Python version xml-pipeline supports and report this as a bug"
    )


def _unknown_ident(traceback_text: object, ident: str) -> bool:
    """Whether the server's traceback says it does not know ``ident`` (it was restarted)."""
    if not isinstance(traceback_text, str):
        return False
    lines = traceback_text.rstrip().splitlines()
    return bool(lines) and lines[-1] == f"KeyError: {ident!r}"


# CPython's manager wire protocol (multiprocessing.managers: Server.serve_client and
# handle_request, and dispatch), which has no public API. A request is the tuple
# (object ident, method name, args, kwargs); a reply is (kind, result). Every use of it is in
# _message, _request and the kinds below, and
# tests/backends/test_manager.py::test_cpython_still_speaks_the_manager_protocol_we_speak pins
# it against the running interpreter, failing with a message that names what changed.
_RETURN, _ERROR, _TRACEBACK = "#RETURN", "#ERROR", "#TRACEBACK"
_CREATE, _ACCEPT, _DECREF = "create", "accept_connection", "decref"


def _message(ident: str | None, name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """A request of the manager protocol."""
    return (ident, name, args, {})


def _request(conn: Connection, ident: str | None, name: str, args: tuple[Any, ...]) -> Any:
    """One request of the manager protocol (what `multiprocessing.managers.dispatch` does)."""
    conn.send(_message(ident, name, args))
    kind, result = conn.recv()
    if kind == _RETURN:
        return result
    if kind == _ERROR and isinstance(result, BaseException):
        raise result
    raise BackendError(f"the state server refused {name}: {result}", reason="backend_error")
