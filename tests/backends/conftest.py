"""Fixtures for the backend tests: a private redis-server and a state server per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_server import redis_server, redis_url
from xml_pipeline.backends import ManagerServer, start_manager_server

__all__ = ["manager_server", "redis_server", "redis_url"]


@pytest.fixture(scope="session")
def manager_server() -> Iterator[ManagerServer]:
    """One state server for the session; tests keep apart by namespace."""
    with start_manager_server() as server:
        yield server
