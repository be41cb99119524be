"""An organism on its own manager server survives the server being killed (SIGKILL)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from dataclasses import dataclass

import anyio
import pytest

from xml_pipeline import (
    DeliveryError,
    HandlerMetadata,
    HandlerResponse,
    Listener,
    Organism,
    payload,
)
from xml_pipeline._config import BackendConfig
from xml_pipeline.backends.manager import ManagerBackend

pytestmark = pytest.mark.anyio


@payload
@dataclass
class Ping:
    n: int


inside: list[int] = []  # pings whose handler is running (handlers run in this process)


async def slow_echo(msg: Ping, meta: HandlerMetadata) -> HandlerResponse:
    inside.append(msg.n)
    await anyio.sleep(1.0)
    return HandlerResponse.respond(msg)


def _state_servers() -> set[int | None]:
    # BaseManager names its server process after the manager class
    return {p.pid for p in multiprocessing.active_children() if p.name.startswith("_StateManager")}


async def test_organism_keeps_serving_after_its_state_server_is_killed() -> None:
    """The server the organism started is started again, empty: the conversations it held are
    each reported lost (none hangs), and new requests are answered."""
    org = Organism([Listener("echo", Ping, slow_echo)], backend=BackendConfig(type="manager"))
    servers_before = _state_servers()
    async with org:
        [pid] = _state_servers() - servers_before  # the one the organism started
        assert await org.request("echo", Ping(n=1), timeout=10) == Ping(n=1)
        inside.clear()
        in_flight = [
            asyncio.ensure_future(org.request("echo", Ping(n=i), timeout=30)) for i in range(5)
        ]
        with anyio.fail_after(20):
            while len(inside) < 5:  # the five conversations are open, their handlers running
                await anyio.sleep(0.005)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        outcomes = await asyncio.gather(*in_flight, return_exceptions=True)
        lost = [o for o in outcomes if isinstance(o, DeliveryError)]
        assert len(lost) == 5, outcomes  # their chains are gone: each reported, none hangs
        assert {e.reason for e in lost} <= {"backend_error", "backend_unreachable"}
        with anyio.fail_after(20):
            assert await org.request("echo", Ping(n=2), timeout=10) == Ping(n=2)
        backend = org.registry.backend
        assert isinstance(backend, ManagerBackend) and backend.server is not None
        assert backend.server.restarts == 1 and backend.server.pid not in (None, pid)
