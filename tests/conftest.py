"""Shared fixtures: async tests run on asyncio and on asyncio+uvloop."""

from __future__ import annotations

import os
from typing import Any

import pytest

import tests.redis_server as private_redis
from tests.redis_server import redis_session

__all__ = ["anyio_backend", "redis_session"]

# Commands the tests run (pytest, the CLI's argparse help, the examples' READMEs) lay their
# output out to the terminal's width, which they read from COLUMNS: CI's terminal is wider than
# a reader's, and a test comparing output with a README must see what the README shows. Every
# process the suite starts inherits this; the suite's own width is set before it starts.
os.environ["COLUMNS"] = "80"
# Nor do the pytest runs the suite starts (an example's README, the plugin's tests) take the
# options this run was started with: `PYTEST_ADDOPTS=--durations=40 python -m pytest` would
# change what they print. This run has read them already.
for _name in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
    os.environ.pop(_name, None)


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
