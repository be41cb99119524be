"""Shared-state backends behind one protocol: memory (default), multiprocessing manager, Redis."""

from .base import Backend, PruneResult, ThreadRecord
from .manager import ManagerBackend, ManagerServer, start_manager_server
from .memory import MemoryBackend
from .redis import RedisBackend

__all__ = [
    "Backend",
    "ManagerBackend",
    "ManagerServer",
    "MemoryBackend",
    "PruneResult",
    "RedisBackend",
    "ThreadRecord",
    "start_manager_server",
]
