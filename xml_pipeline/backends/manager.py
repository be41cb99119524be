"""The multiprocessing-manager backend: one state server shared by the processes of one host.

`start_manager_server` runs a `multiprocessing.managers.BaseManager` server in a child process
(started with "spawn" or "forkserver", never a plain fork). The server holds one
`_SharedState`: a `_MemoryState` per namespace (the same synchronous core as `MemoryBackend`,
so the rules are written once) behind one lock, so every operation is atomic across processes.

`ManagerBackend` is the client. It speaks the manager's own request protocol over a small pool
of authenticated connections it owns (a `BaseProxy` keeps one connection per calling thread,
which could not be closed on ``aclose()``), and it runs each blocking request in a worker
thread so the event loop never waits on a socket.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import secrets
import threading
import time
from multiprocessing.connection import Client, Connection
from multiprocessing.managers import BaseManager
from types import TracebackType
from typing import Any, Literal

import anyio
import anyio.to_thread

from ..errors import BackendError
from .base import PruneResult, ThreadRecord
from .memory import _check_settings, _MemoryState

__all__ = ["ManagerBackend", "ManagerServer", "start_manager_server"]

_TYPEID = "xml_pipeline_state"
_CONNECT_TIMEOUT = 5.0
_REPLY_TIMEOUT = 10.0  # one operation is a dict update under a lock: far below this
# The _MemoryState methods a client may call; anything else is refused by the server.
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
        "history_append",
        "history",
        "sweep",
    }
)


class _SharedState:
    """The server-side object: one `_MemoryState` per namespace, one lock around every call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spaces: dict[str, _MemoryState] = {}

    def call(self, namespace: str, method: str, args: tuple[Any, ...]) -> Any:
        if method not in _METHODS:
            raise AttributeError(f"the shared state has no operation {method!r}")
        with self._lock:
            state = self._spaces.get(namespace)
            if state is None:
                state = self._spaces[namespace] = _MemoryState()
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


class ManagerServer:
    """A running state server, in a child process of this one.

    Returned by `start_manager_server`; pass ``address`` and ``authkey`` to `ManagerBackend`
    in every process that shares the state. The server exits with `shutdown`, at the end of a
    ``with`` block, when this process exits, or when this process dies.
    """

    def __init__(self, manager: _StateManager, authkey: bytes) -> None:
        self._manager = manager
        address = manager.address
        assert isinstance(address, tuple)
        self.address: tuple[str, int] = (str(address[0]), int(address[1]))
        self.authkey = authkey

    def __repr__(self) -> str:
        return f"ManagerServer(address={self.address!r})"

    def shutdown(self) -> None:
        """Stop the server process; its state is gone. Safe to call twice."""
        self._manager.shutdown()

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
) -> ManagerServer:
    """Start a state server in a child process and return once it accepts connections.

    Use it in the process that owns an organism whose pumps run in several local processes;
    the other processes connect with ``ManagerBackend(server.address, server.authkey)``.

    Args:
        address: where to listen; port 0 picks a free port (read it from ``.address``).
        authkey: the shared secret clients must present; a random one when ``None``.
        start_method: how the child process starts ("spawn" or "forkserver"; never a plain
            fork, which is unsafe from a process that runs threads).

    Raises:
        BackendError: the server could not be started (for instance, the port is in use).
    """
    key = secrets.token_bytes(32) if authkey is None else authkey
    manager = _StateManager(
        address=address, authkey=key, ctx=multiprocessing.get_context(start_method)
    )
    try:
        manager.start(initializer=_init_server, initargs=(os.getpid(),))
    except (OSError, EOFError) as exc:
        raise BackendError(
            f"could not start the state server on {address[0]}:{address[1]}: {exc!r}; "
            "choose a free port, or port 0 to pick one",
            reason="backend_unreachable",
        ) from exc
    return ManagerServer(manager, key)


class ManagerBackend:
    """Shared state in a `start_manager_server` server, for the processes of one host.

    Every operation is one request, applied by the server under its lock (atomic across
    processes). Several organisms can share one server under different ``namespace`` values;
    they never see each other's records. Requests run in worker threads, at most
    ``max_connections`` at a time, one pooled connection each.

    Raises:
        ValueError: ``thread_ttl_seconds`` is not positive or ``history_max_entries`` < 1.
    """

    def __init__(
        self,
        address: tuple[str, int],
        authkey: bytes,
        *,
        namespace: str = "xp",
        thread_ttl_seconds: float = 3600,
        history_max_entries: int = 100,
        max_connections: int = 8,
        reply_timeout_seconds: float = _REPLY_TIMEOUT,
    ) -> None:
        _check_settings(thread_ttl_seconds, history_max_entries)
        self._reply_timeout = reply_timeout_seconds
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections!r}")
        self._address = (address[0], int(address[1]))
        self._authkey = authkey
        self._namespace = namespace
        self._ttl = float(thread_ttl_seconds)
        self._max_entries = history_max_entries
        self._limiter = anyio.CapacityLimiter(max_connections)
        self._idle: collections.deque[Connection] = collections.deque()
        self._pool_lock = threading.Lock()
        self._ident: str | None = None
        self._closed = False

    def __repr__(self) -> str:
        host, port = self._address
        return f"ManagerBackend(address=({host!r}, {port}), namespace={self._namespace!r})"

    @property
    def _where(self) -> str:
        return f"{self._address[0]}:{self._address[1]}"

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect to the server and check the authkey.

        Raises:
            BackendError: the server is unreachable or refused the authkey; the message names
                the address and the cause.
        """
        try:
            with anyio.fail_after(_CONNECT_TIMEOUT):
                self._ident = await anyio.to_thread.run_sync(
                    self._create_blocking, abandon_on_cancel=True
                )
        except TimeoutError as exc:
            raise self._unreachable(exc, f"no answer within {_CONNECT_TIMEOUT:g} s") from exc
        self._closed = False

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

    async def history_append(self, conversation: str, entry: bytes) -> None:
        """Append one entry, keep the newest ``history_max_entries``, refresh the TTL.

        Raises:
            BackendError: the server is unreachable.
        """
        await self._call("history_append", conversation, entry, self._ttl, self._max_entries)

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
        conn = self._checkout()
        try:
            conn.send((ident, "call", (self._namespace, method, args), {}))
            # a stopped server or a half-open link must not hang the caller (and, through the
            # thread limiter, every other caller) forever
            if not conn.poll(self._reply_timeout):
                raise TimeoutError(f"no reply within {self._reply_timeout:g} s")
            kind, result = conn.recv()
        except (OSError, EOFError) as exc:  # TimeoutError is an OSError
            conn.close()
            raise self._unreachable(exc, f"the connection failed during {method}") from exc
        self._checkin(conn)
        if kind == "#RETURN":
            return result
        if kind == "#ERROR" and isinstance(result, ValueError):
            raise result
        raise BackendError(
            f"the state server at {self._where} failed {method}: {result}",
            reason="backend_error",
        )

    def _checkout(self) -> Connection:
        try:
            return self._idle.pop()
        except IndexError:
            pass
        try:
            conn = Client(self._address, authkey=self._authkey)
            _request(conn, None, "accept_connection", ("xml-pipeline",))
        except (OSError, EOFError, multiprocessing.AuthenticationError) as exc:
            raise self._unreachable(exc, "could not connect") from exc
        return conn

    def _checkin(self, conn: Connection) -> None:
        with self._pool_lock:
            if not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def _create_blocking(self) -> str:
        try:
            with Client(self._address, authkey=self._authkey) as conn:
                ident, _exposed = _request(conn, None, "create", (_TYPEID,))
        except (OSError, EOFError, multiprocessing.AuthenticationError) as exc:
            raise self._unreachable(exc, "could not connect") from exc
        return str(ident)

    def _release_blocking(self, ident: str) -> None:
        # Drop this client's reference to the server object; the server keeps the state.
        try:
            with Client(self._address, authkey=self._authkey) as conn:
                _request(conn, None, "decref", (ident,))
        except (OSError, EOFError, multiprocessing.AuthenticationError):
            pass  # the server is gone: nothing left to release

    def _unreachable(self, exc: BaseException, what: str) -> BackendError:
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


def _request(conn: Connection, ident: str | None, name: str, args: tuple[Any, ...]) -> Any:
    """One request of the manager protocol (what `multiprocessing.managers.dispatch` does)."""
    conn.send((ident, name, args, {}))
    kind, result = conn.recv()
    if kind == "#RETURN":
        return result
    if kind == "#ERROR" and isinstance(result, BaseException):
        raise result
    raise BackendError(f"the state server refused {name}: {result}", reason="backend_error")
