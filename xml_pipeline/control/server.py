"""`ControlPlane`: the control plane's app served by uvicorn inside the organism's event loop.

Started by `Organism.__aenter__` when it has a ``control:`` section (or ``control=``), stopped
by `Organism.aclose`. uvicorn runs as a task of the organism's loop (``Server.serve()``), on a
socket bound here first, so a port in use fails the organism's start naming the port, and the
port bound is known (``listen: 127.0.0.1:0`` picks a free one).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

from xml_pipeline._errors import UsageError
from xml_pipeline._runtime.hooks import Hooks
from xml_pipeline.control.settings import ControlConfig
from xml_pipeline.control.source import Controlled, OrganismSource

try:
    import uvicorn

    from xml_pipeline.control.app import build_app
    from xml_pipeline.control.events import EventHub
except ImportError as exc:  # the [web] extra is not installed
    raise UsageError(
        f"the control plane needs starlette and uvicorn ({exc.name} is missing); "
        "pip install 'xml-pipeline[web]', or run without a control plane (no control: section, "
        "no --control, no Organism(control=...))"
    ) from None

__all__ = ["ControlPlane"]

log = logging.getLogger("xml_pipeline.control")

_STOP_SECONDS = 5  # how long stopping waits for open requests (event streams end at once)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost`` counts)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve beyond this machine


class _StalledStreams(logging.Filter):
    """uvicorn logs an error when a response ends unfinished: that is how a stalled
    event-stream client is cut off (the hub counts it), not a fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("ASGI callable returned without completing")


logging.getLogger("uvicorn.error").addFilter(_StalledStreams())


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers: signals belong to the organism's owner
    (`organism run` stops gracefully on SIGTERM; an embedding application has its own)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ControlPlane:
    """One organism's control plane: bound, served and stopped with it."""

    def __init__(self, organism: Controlled, config: ControlConfig, hooks: Hooks) -> None:
        self.config = config
        self.host, self.port = config.host_port
        self.token = os.environ.get(config.token_env) or None
        if self.token is None and not is_loopback(self.host):
            raise UsageError(
                f"control plane: listen {config.listen} is beyond loopback and "
                f"${config.token_env} is not set: anyone who can reach the port could steer "
                f"the organism; set {config.token_env} to a secret token (or token_env to the "
                "variable holding one), or listen on 127.0.0.1"
            )
        self.source = OrganismSource(organism)
        self.hub = EventHub(self.source, client_buffer=config.client_buffer)
        self._hooks = hooks
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        """The base URL it serves on (with the port bound)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind the port, subscribe to the hooks and serve.

        Raises:
            UsageError: the port is in use or cannot be bound (named, with what to do).
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            problem = (
                f"cannot listen on {self.config.listen} (port {self.port}): {exc.strerror or exc}"
            )
            refused = UsageError(
                f"control plane: {problem}; stop what uses the port or set control.listen to "
                "another one (port 0 picks a free one)"
            )
            # what went wrong without the setting to change: `organism run --control` names its
            # flag instead
            refused.listen_problem = problem  # type: ignore[attr-defined]
            raise refused from None
        sock.setblocking(False)
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        app = build_app(self.source, self.hub, self.token)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=_STOP_SECONDS,
        )
        server = _Server(config)
        self._server = server
        self.hub.start(self._hooks)
        self._task = asyncio.get_running_loop().create_task(
            server.serve(sockets=[sock]), name=f"control plane {self.url}"
        )
        while not server.started and not self._task.done():
            await asyncio.sleep(0.005)
        if self._task.done():
            await self.aclose()
            raise UsageError(f"control plane: uvicorn did not start on {self.url}")
        log.info("control plane on %s", self.url)
        if self.token is None:
            log.warning(
                "control plane on %s has no token: any local user or process can read and "
                "steer the organism; set $%s to a secret token before starting it to require "
                "one (clients send it the same way)",
                self.url, self.config.token_env,
            )  # fmt: skip

    async def aclose(self) -> None:
        """End the event streams and stop serving (open requests get a few seconds)."""
        await self.hub.aclose()
        server, task = self._server, self._task
        self._server = self._task = None
        if server is not None and task is not None:
            server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(task), _STOP_SECONDS * 2)
            except TimeoutError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            except Exception:
                log.exception("control plane: uvicorn failed while stopping")
        if self._socket is not None:
            self._socket.close()
            self._socket = None
