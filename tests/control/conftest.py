"""The control plane's fixtures: the slow organism, served on a free port, and a real client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from xml_pipeline import Organism

SLOW = Path(__file__).resolve().parent / "slow" / "organism.yaml"
TOKEN = "t0ken-for-tests"

__all__ = ["SLOW", "TOKEN", "client_of", "job"]


def job(org: Organism, seconds: float, lines: int = 0) -> object:
    """A ``Job`` payload of the slow organism, of the class its listeners were loaded with
    (its slow_handlers module is imported by the organism loader, never by the tests: a plain
    ``import`` here would take the module name from other tests)."""
    return org.listeners[0].payload_class(seconds=seconds, lines=lines)


def client_of(org: Organism, token: str | None = TOKEN) -> httpx.AsyncClient:
    """A real HTTP client of ``org``'s control plane, sending ``token``."""
    assert org.control_url is not None
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.AsyncClient(base_url=org.control_url, headers=headers, timeout=10)


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("XP_CONTROL_TOKEN", TOKEN)
    return TOKEN


@pytest.fixture
async def slow(token: str) -> AsyncIterator[Organism]:
    """The slow organism running, its control plane on a free port with the test token."""
    async with Organism.from_yaml(SLOW) as org:
        yield org


def options(**control: Any) -> dict[str, Any]:
    return {"control": {"listen": "127.0.0.1:0", **control}}
