"""Shared-state backends behind one protocol: memory (default), multiprocessing manager, Redis."""

from xml_pipeline.backends.base import (
    Backend,
    DeadLetter,
    DeadLetterCounts,
    ImmediateBackend,
    PruneResult,
    RunSnapshot,
    ThreadRecord,
)
from xml_pipeline.backends.factory import open_backend
from xml_pipeline.backends.manager import ManagerBackend, ManagerServer, start_manager_server
from xml_pipeline.backends.memory import MemoryBackend
from xml_pipeline.backends.redis import RedisBackend

__all__ = [
    "Backend",
    "DeadLetter",
    "DeadLetterCounts",
    "ImmediateBackend",
    "ManagerBackend",
    "ManagerServer",
    "MemoryBackend",
    "PruneResult",
    "RedisBackend",
    "RunSnapshot",
    "ThreadRecord",
    "open_backend",
    "start_manager_server",
]
