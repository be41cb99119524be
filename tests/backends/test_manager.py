"""What only the manager backend does: its server process, addresses, keys, namespaces."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from multiprocessing.managers import BaseManager
from multiprocessing.process import BaseProcess
from pathlib import Path

import anyio
import pytest

from tests.processes import freeze, thaw
from tests.redis_server import free_port
from xml_pipeline._errors import BackendError
from xml_pipeline.backends import ManagerBackend, ManagerServer, start_manager_server
from xml_pipeline.backends import manager as manager_module

pytestmark = pytest.mark.anyio

ROOT = "root"


async def test_server_reports_its_real_port(manager_server: ManagerServer) -> None:
    host, port = manager_server.address
    assert host == "127.0.0.1"
    assert port > 0
    assert len(manager_server.authkey) >= 32


async def test_clients_in_one_namespace_share_state(manager_server: ManagerServer) -> None:
    """Two clients (as two processes would have) see each other's records."""
    first = ManagerBackend(manager_server.address, manager_server.authkey, namespace="shared-1")
    second = ManagerBackend(manager_server.address, manager_server.authkey, namespace="shared-1")
    await first.open()
    await second.open()
    try:
        await first.put_root(ROOT, "organism")
        await first.extend(ROOT, "a", "alpha", b"<ask/>")
        assert await second.chain("a") == ["organism", "alpha"]
        result = await second.prune("a")
        assert result is not None and result.conversation_ended
        assert await first.count() == 1
    finally:
        await first.aclose()
        await second.aclose()


async def test_namespaces_keep_organisms_apart(manager_server: ManagerServer) -> None:
    first = ManagerBackend(manager_server.address, manager_server.authkey, namespace="ns-one")
    second = ManagerBackend(manager_server.address, manager_server.authkey, namespace="ns-two")
    await first.open()
    await second.open()
    try:
        await first.put_root(ROOT, "first")
        await second.put_root(ROOT, "second")
        await first.extend(ROOT, "a", "alpha", b"<one/>")
        assert await second.get("a") is None
        assert await second.history("a") == []
        assert await second.count() == 1
        assert await first.count() == 2
    finally:
        await first.aclose()
        await second.aclose()


async def test_unreachable_server_names_the_address_cause_remedy_and_wait() -> None:
    port = free_port()
    backend = ManagerBackend(("127.0.0.1", port), b"key", reconnect_seconds=0.3)
    with pytest.raises(BackendError) as caught:
        await backend.open()
    await backend.aclose()
    error = caught.value
    assert error.reason == "backend_unreachable"
    assert f"127.0.0.1:{port}" in error.message
    assert "ConnectionRefusedError" in error.message
    assert "start the server" in error.message
    assert _waits(error.message)[0] >= 0.3, error.message


async def test_wrong_authkey_is_reported_as_such(manager_server: ManagerServer) -> None:
    backend = ManagerBackend(manager_server.address, b"not the key")
    with pytest.raises(BackendError, match="authkey does not match"):
        await backend.open()
    await backend.aclose()


async def test_operation_before_open_says_to_open_first(manager_server: ManagerServer) -> None:
    backend = ManagerBackend(manager_server.address, manager_server.authkey)
    with pytest.raises(BackendError, match="open"):
        await backend.count()


async def test_a_stopped_server_fails_operations_after_the_reconnect_window_then_at_once() -> None:
    """A server given by address that goes away: each caller waits out the reconnect window
    once (a restarted server would be found), says how long, then callers fail at once."""
    with start_manager_server() as server:
        backend = ManagerBackend(server.address, server.authkey, reconnect_seconds=1.0)
        await backend.open()
        await backend.put_root(ROOT, "organism")
        server.shutdown()
        started = time.monotonic()
        with anyio.fail_after(30), pytest.raises(BackendError) as caught:
            await backend.extend(ROOT, "a", "alpha")
        assert time.monotonic() - started >= 1.0, "it waited for the server to come back"
        error = caught.value
        assert error.reason == "backend_unreachable"
        assert "start the server" in error.message
        waited, away = _waits(error.message)
        assert 1.0 <= waited <= away, error.message
        with pytest.raises(BackendError) as caught:
            await backend.get(ROOT)
        waited, away = _waits(caught.value.message)
        assert waited < 1.0 <= away, "the window was waited out once, not again"
        await backend.aclose()


def _waits(message: str) -> tuple[float, float]:
    """(waited, away) in seconds, as an unreachable-server message states them."""
    found = re.search(r"waited (\d+\.\d) s; away for (\d+\.\d) s", message)
    assert found is not None, message
    return float(found.group(1)), float(found.group(2))


async def test_a_killed_server_is_started_again_empty_and_clients_reconnect() -> None:
    """SIGKILL the server mid-use: its owner starts it again at the same address; the owning
    client and a client that knows only the address both recover, and the state is empty."""
    with start_manager_server() as server:
        owner = ManagerBackend(server.address, server.authkey, namespace="k", server=server)
        other = ManagerBackend(server.address, server.authkey, namespace="k")
        await owner.open()
        await other.open()
        await owner.put_root(ROOT, "organism")
        await owner.extend(ROOT, "a", "alpha")
        assert await other.chain("a") == ["organism", "alpha"]  # both have a pooled connection
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with anyio.fail_after(20):
            while server.restarts == 0:
                await anyio.sleep(0.01)
        assert server.pid not in (None, pid) and server.address == owner.server.address  # type: ignore[union-attr]
        assert await owner.get(ROOT) is None, "the restarted server is empty"
        assert await other.get("a") is None
        await other.put_root(ROOT, "organism")
        await owner.extend(ROOT, "b", "beta")
        assert await other.chain("b") == ["organism", "beta"]
        assert server.gone is None
        await owner.aclose()
        await other.aclose()


async def test_a_client_recovers_when_a_new_server_takes_the_same_address() -> None:
    """Server replaced while the client holds no connection: the new server does not know
    the client's handle; the client gets a new one and the request is sent again once."""
    first = start_manager_server(restart=False)
    address, key = first.address, first.authkey
    client = ManagerBackend(address, key, namespace="swap")
    await client.open()  # leaves no pooled connection behind
    first.shutdown()
    with start_manager_server(address, key) as second:
        await client.put_root(ROOT, "organism")
        assert await client.count() == 1
        assert second.pid is not None
    await client.aclose()


async def test_a_server_that_dies_for_good_is_reported_with_its_pid_and_signal() -> None:
    """restart=False: the owner's client says the server it started died (pid, signal),
    not "start a server there"."""
    with start_manager_server(restart=False) as server:
        backend = ManagerBackend(
            server.address, server.authkey, server=server, reconnect_seconds=60
        )
        await backend.open()
        await backend.put_root(ROOT, "organism")
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with anyio.fail_after(10):
            while server.gone is None:
                await anyio.sleep(0.01)
        with anyio.fail_after(30), pytest.raises(BackendError) as caught:
            await backend.get(ROOT)  # nothing to wait for: not the 60 s reconnect window
        message = caught.value.message
        assert f"pid {pid} died (killed by SIGKILL)" in message
        assert "this process started" in message and "start the server" not in message
        await backend.aclose()


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="thread_ttl_seconds"):
        ManagerBackend(("127.0.0.1", 1), b"k", thread_ttl_seconds=0)
    with pytest.raises(ValueError, match="max_connections"):
        ManagerBackend(("127.0.0.1", 1), b"k", max_connections=0)


async def test_a_hung_server_fails_operations_after_the_reply_timeout_instead_of_hanging() -> None:
    """SIGSTOP the server: before, every caller (and the thread limiter) waited forever."""
    with start_manager_server() as server:
        backend = ManagerBackend(server.address, server.authkey, reply_timeout_seconds=0.5)
        await backend.open()
        await backend.put_root(ROOT, "organism")
        pid = server.pid
        assert pid is not None
        freeze(pid)
        try:
            with anyio.fail_after(10), pytest.raises(BackendError) as caught:
                await backend.extend(ROOT, "a", "alpha")
            assert caught.value.reason == "backend_unreachable"
            assert "no reply within 0.5 s" in caught.value.message
        finally:
            thaw(pid)
        # the timed-out request may still have run once the server woke: timeouts cannot say
        assert await backend.get(ROOT) is not None, "a fresh connection works again"
        await backend.aclose()


def test_a_server_left_open_stops_quietly_with_its_process(tmp_path: Path) -> None:
    """A script that never shuts its server down: at exit the server stops and is not taken
    for a crash (no restart, nothing logged)."""
    script = tmp_path / "left_open.py"
    script.write_text(
        "import logging\n"
        "from xml_pipeline.backends import start_manager_server\n"
        'if __name__ == "__main__":\n'
        "    logging.basicConfig(level=logging.INFO)\n"
        "    server = start_manager_server()\n"
        "    print(server.pid)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    pid = int(done.stdout)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a reaper that is not ours does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_cpython_still_speaks_the_manager_protocol_we_speak() -> None:
    """The client speaks CPython's private manager protocol (there is no public one): this
    fails, naming what changed, when an interpreter speaks it differently."""
    import multiprocessing.managers as managers
    from multiprocessing.connection import Client

    from xml_pipeline.backends import manager as ours

    version = sys.version.split()[0]
    for name in (ours._CREATE, ours._ACCEPT, ours._DECREF):
        assert name in managers.Server.public, (
            f"Python {version}: the manager server no longer serves {name!r}; "
            "xml_pipeline/backends/manager.py must follow multiprocessing.managers"
        )
    with start_manager_server() as server:
        # a fresh connection serves one request (here: create), then closes
        with Client(server.address, authkey=server.authkey) as conn:
            ident, exposed = ours._request(conn, None, ours._CREATE, (ours._TYPEID,))
        assert "call" in exposed
        # accept_connection turns a connection into one that serves calls
        with Client(server.address, authkey=server.authkey) as conn:
            ours._request(conn, None, ours._ACCEPT, ("xml-pipeline",))
            conn.send(ours._message(ident, "call", ("ns", "count", ())))
            kind, result = conn.recv()
            assert (kind, result) == (ours._RETURN, 0), f"Python {version}: reply was {kind!r}"
            conn.send(ours._message(ident, "call", ("ns", "no_such_method", ())))
            kind, result = conn.recv()
            assert kind == ours._ERROR and isinstance(result, AttributeError), (
                f"Python {version}: an error came back as {kind!r}, {result!r}"
            )
            conn.send(ours._message("not-an-ident", "call", ("ns", "count", ())))
            kind, result = conn.recv()
            assert kind == ours._TRACEBACK and ours._unknown_ident(result, "not-an-ident"), (
                f"Python {version}: an unknown object came back as {kind!r}, {result!r}"
            )
        with Client(server.address, authkey=server.authkey) as conn:
            ours._request(conn, None, ours._DECREF, (ident,))


# -- the CPython internal the state server relies on (issue 10, item 8) ------------------------


def test_manager_process_internal_is_what_the_backend_expects() -> None:
    """BaseManager._process is still the started server's process: the backend watches its
    sentinel to restart a dead server and reports its pid (`manager._server_process`)."""
    with start_manager_server() as server:
        process = manager_module._server_process(server._manager)  # raises if CPython changed it
        assert isinstance(process, BaseProcess) and process.is_alive()
        assert process.pid == server.pid
    assert server.pid is None


@pytest.mark.parametrize("held", ["missing", "not a process"])
def test_a_changed_manager_process_internal_fails_loudly(held: str) -> None:
    """Should a Python release move the server's process, the backend says so plainly rather
    than run a server nobody watches (before: getattr(..., None) and no restarts, silently)."""
    manager = BaseManager()  # never started: it has no _process
    if held != "missing":
        manager._process = held  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match=r"BaseManager\._process, a multiprocessing") as e:
        manager_module._server_process(manager)
    assert "report this as a bug" in str(e.value)
    if held == "missing":  # a start() that failed before it made the process
        assert manager_module._server_process(manager, started=False) is None
