"""What only the memory backend does: eviction of expired entries without a sweeper."""

from __future__ import annotations

import anyio
import pytest

from xml_pipeline.backends import MemoryBackend

ROOT = "root"


@pytest.mark.anyio
async def test_sweep_evicts_expired_conversations() -> None:
    # a TTL long enough that no record expires while the 20 are made, even on a loaded
    # machine (an extend evicts expired entries itself, which the count below would miss)
    backend = MemoryBackend(thread_ttl_seconds=0.5)
    await backend.put_root(ROOT, "organism")
    for n in range(10):
        await backend.extend(ROOT, f"a{n}", "alpha", b"<ask/>")
        await backend.extend(f"a{n}", f"b{n}", "beta")
    await anyio.sleep(0.6)
    assert await backend.sweep() == 20
    assert await backend.sweep() == 0
    assert await backend.count() == 1


@pytest.mark.anyio
async def test_abandoned_entries_do_not_accumulate_without_a_sweep() -> None:
    """Each extend evicts expired entries from the front, so memory stays bounded."""
    backend = MemoryBackend(thread_ttl_seconds=0.05)
    await backend.put_root(ROOT, "organism")
    for n in range(500):
        await backend.extend(ROOT, f"old{n}", "alpha", b"<ask/>")
    await anyio.sleep(0.1)
    await backend.extend(ROOT, "live", "alpha")
    for n in range(500):
        await backend.extend("live", f"new{n}", "beta")
        await backend.prune(f"new{n}")
    state = backend._state
    assert len(state._records) == 1
    assert list(state._conversations) == ["live"]


@pytest.mark.anyio
async def test_two_memory_backends_share_nothing() -> None:
    first, second = MemoryBackend(), MemoryBackend()
    await first.put_root(ROOT, "first")
    await first.extend(ROOT, "a", "alpha")
    assert await second.get("a") is None
    assert await second.count() == 0


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="thread_ttl_seconds"):
        MemoryBackend(thread_ttl_seconds=-1)
    with pytest.raises(ValueError, match="history_max_entries"):
        MemoryBackend(history_max_entries=0)
