"""Shared fixtures: async tests run on asyncio and on asyncio+uvloop."""

from __future__ import annotations

from typing import Any

import pytest

import tests.redis_server as private_redis
from tests.redis_server import redis_session

__all__ = ["anyio_backend", "redis_session"]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tell tests/redis_server.py whether this test is marked ``redis`` (before its fixtures)."""
    private_redis.running_test_is_marked = item.get_closest_marker("redis") is not None


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Every async test runs once per event loop the product supports."""
    return request.param  # type: ignore[no-any-return]
