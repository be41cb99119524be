"""Fixtures for the metrics tests: a private redis-server per session."""

from __future__ import annotations

from tests.redis_server import redis_server, redis_url

__all__ = ["redis_server", "redis_url"]
