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
from xml_pipeline.backends.manager import ManagerBackend
from xml_pipeline.config import BackendConfig

pytestmark = pytest.mark.anyio


@payload
@dataclass
class Ping:
    n: int


async def slow_echo(msg: Ping, meta: HandlerMetadata) -> HandlerResponse:
    await anyio.sleep(0.3)
    return HandlerResponse.respond(msg)


async def test_organism_keeps_serving_after_its_state_server_is_killed() -> None:
    """The server the organism started is started again, empty: the conversations it held are
    each reported lost (none hangs), and new requests are answered."""
    org = Organism([Listener("echo", Ping, slow_echo)], backend=BackendConfig(type="manager"))
    children = {p.pid for p in multiprocessing.active_children()}
    async with org:
        [pid] = {p.pid for p in multiprocessing.active_children()} - children  # its server
        assert await org.request("echo", Ping(n=1), timeout=10) == Ping(n=1)
        in_flight = [
            asyncio.ensure_future(org.request("echo", Ping(n=i), timeout=30)) for i in range(5)
        ]
        await anyio.sleep(0.1)  # the five are inside the handler now
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
