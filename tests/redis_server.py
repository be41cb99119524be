"""A private redis-server for tests: a subprocess on a free port, never the system's 6379.

Import the fixtures into a conftest (``from tests.redis_server import redis_server, redis_url``):
``redis_server`` is one server per test session (``redis_session``, which tests/conftest.py
provides); ``redis_url`` flushes it before each test. Tests that stop, pause or restart a
server start their own `RedisServer` instead. `RedisServer.busy_script` makes a server busy
the way a slow client does (a Lua loop), and `RedisServer.pause` stops it the way an
overloaded or frozen host does (SIGSTOP).

The server runs with ``KEYS`` renamed away, so any code path that uses it fails loudly. A
missing ``redis-server`` binary fails the test (it never skips): CI installs it. So that
``pytest -m "not redis"`` (the README's way to leave Redis tests out) leaves out every test
that needs a server, a test not marked ``redis`` that starts one or asks for these fixtures
fails, saying to mark it (``tests/conftest.py`` tells this module which test runs).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.processes import freeze

# Whether the test being run is marked ``redis``: set by tests/conftest.py before each test's
# setup; None outside a test run (benchmarks, child processes), where anything goes.
running_test_is_marked: bool | None = None


def require_redis_mark() -> None:
    """Fail the running test if it needs a redis-server but is not marked ``redis``."""
    if running_test_is_marked is False:
        pytest.fail(
            "this test needs a redis-server but is not marked redis: add @pytest.mark.redis "
            "(or the module's pytestmark, or marks= on a redis parameter) so that "
            '`pytest -m "not redis"` leaves it out where redis-server is not installed',
            pytrace=False,
        )


__all__ = ["RedisServer", "free_port", "redis_server", "redis_url"]

_START_TIMEOUT = 10.0

# Keeps the server inside one script for ARGV[1] microseconds by its own clock.
_BUSY_LOOP = """
local t0 = redis.call('TIME')
local stop = tonumber(t0[1]) * 1000000 + tonumber(t0[2]) + tonumber(ARGV[1])
repeat
  local t = redis.call('TIME')
until tonumber(t[1]) * 1000000 + tonumber(t[2]) >= stop
return 1
"""


def free_port() -> int:
    """A local TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` subprocess on a free local port, without persistence unless asked.

    ``start()`` after ``stop()`` restarts it on the same port (data is gone: nothing is
    saved), which is how tests simulate a Redis restart. With ``appendonly`` it keeps an
    append-only file in its directory, fsynced on every write (``appendfsync always``), so a
    restart after ``stop()`` (a SIGKILL) brings back everything it acknowledged.

    Raises:
        RuntimeError: ``redis-server`` is not on PATH, or the server did not answer in time.
    """

    def __init__(self, *, port: int | None = None, appendonly: bool = False) -> None:
        require_redis_mark()
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not on PATH: install it (apt-get install redis-server, "
                "brew install redis) to run the Redis tests"
            )
        self._binary = binary
        self.port = free_port() if port is None else port
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.TemporaryDirectory(prefix="xp-redis-")
        self._process: subprocess.Popen[bytes] | None = None
        self._appendonly = appendonly

    def __repr__(self) -> str:
        return f"RedisServer(url={self.url!r})"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (again, on the same port) and wait until it answers PING."""
        if self.running:
            return
        log = Path(self._dir.name) / "redis.log"
        # fmt: off
        args = [
            self._binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self._appendonly else "no",
            "--appendfsync", "always",
            "--dir", self._dir.name,
            "--logfile", str(log),
            "--rename-command", "KEYS", "",
        ]
        # fmt: on
        self._process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                self._process = None
                raise RuntimeError(f"redis-server on port {self.port} exited at start:\n{tail}")
            try:
                with self.client() as client:
                    client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"redis-server on port {self.port} did not answer within "
                        f"{_START_TIMEOUT:g} s"
                    ) from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Kill the server (SIGKILL: no goodbye to clients, like a crash) and wait for it."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        self._dir.cleanup()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are still accepted, nothing is answered."""
        assert self._process is not None, "the server is not running"
        freeze(self._process.pid)  # returns once it is really stopped

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT); it answers what it was sent meanwhile."""
        assert self._process is not None, "the server is not running"
        self._process.send_signal(signal.SIGCONT)

    @contextlib.contextmanager
    def busy_script(self, seconds: float) -> Iterator[None]:
        """Another client runs a Lua busy loop for ``seconds`` while the block runs.

        The server answers nobody meanwhile (or, past its ``busy-reply-threshold``, answers
        ``BUSY``). On entry the script has been sent; on exit it has ended.
        """
        connected = threading.Event()
        failures: list[BaseException] = []

        def run() -> None:
            try:
                with redis.Redis(
                    host="127.0.0.1", port=self.port, socket_timeout=seconds + 10
                ) as client:
                    client.ping()
                    connected.set()
                    client.eval(_BUSY_LOOP, 0, round(seconds * 1_000_000))
            except BaseException as exc:
                failures.append(exc)
                connected.set()

        thread = threading.Thread(target=run, name="redis-busy-script", daemon=True)
        thread.start()
        connected.wait(_START_TIMEOUT)
        time.sleep(0.05)  # the EVAL leaves right after the PING: let the server start it
        try:
            yield
        finally:
            thread.join(seconds + 15)
        if failures:
            raise RuntimeError(f"the busy script failed: {failures[0]!r}") from failures[0]

    def client(self) -> redis.Redis:
        """A synchronous client for the test's own inspection; close it (``with``)."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def flush(self) -> None:
        """Delete every key (scripts stay loaded)."""
        with self.client() as client:
            client.flushall()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@pytest.fixture(scope="session")
def redis_session() -> Iterator[RedisServer]:
    """One private redis-server for the whole test session (tests ask for `redis_server`)."""
    global running_test_is_marked
    server: RedisServer | None = None
    problem = ""
    # started for the session, not for the test that happens to come first: `redis_server`
    # checks that test's mark, and a failure here would be cached for the whole session
    marked, running_test_is_marked = running_test_is_marked, None
    try:
        server = RedisServer()
        server.start()
    except RuntimeError as exc:
        problem = str(exc)
    finally:
        running_test_is_marked = marked
    if problem or server is None:
        if server is not None:
            server.close()
        pytest.fail(problem, pytrace=False)  # never skip: CI installs redis-server
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_server(redis_session: RedisServer) -> RedisServer:
    """The session's private redis-server, for a test marked ``redis``."""
    require_redis_mark()
    return redis_session


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL, flushed: each test starts with an empty Redis."""
    if not redis_server.running:  # a test stopped it: bring it back for the next ones
        redis_server.start()
    redis_server.flush()
    return redis_server.url
