"""An organism on Redis survives the server being killed and started again."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import anyio
import pytest

from tests.redis_server import RedisServer
from xml_pipeline import (
    BackendError,
    DeliveryError,
    HandlerMetadata,
    HandlerResponse,
    Listener,
    Organism,
    payload,
)
from xml_pipeline._config import BackendConfig

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@payload
@dataclass
class Ping:
    n: int


async def slow_echo(msg: Ping, meta: HandlerMetadata) -> HandlerResponse:
    await anyio.sleep(0.3)
    return HandlerResponse.respond(msg)


async def test_organism_keeps_serving_after_redis_restarts_and_reports_what_was_lost() -> None:
    with RedisServer() as server:
        backend = BackendConfig(type="redis", redis_url=server.url, redis_prefix="restart:")
        org = Organism([Listener("echo", Ping, slow_echo)], backend=backend)
        async with org:
            assert await org.request("echo", Ping(n=1), timeout=10) == Ping(n=1)
            in_flight = [
                asyncio.ensure_future(org.request("echo", Ping(n=i), timeout=30)) for i in range(5)
            ]
            await anyio.sleep(0.1)  # the five are inside the handler now
            server.stop()
            with pytest.raises((BackendError, DeliveryError)):
                await org.request("echo", Ping(n=99), timeout=10)
            server.start()  # same port, empty: the root record and the chains are gone
            outcomes = await asyncio.gather(*in_flight, return_exceptions=True)
            lost = [o for o in outcomes if isinstance(o, DeliveryError)]
            assert len(lost) == 5, outcomes  # their chains are gone: each reported, none hangs
            assert {e.reason for e in lost} <= {"backend_error", "backend_unreachable"}
            with anyio.fail_after(20):
                assert await org.request("echo", Ping(n=2), timeout=10) == Ping(n=2)
            assert org.stats.lost + org.stats.failed >= 5
