"""Building and opening a backend from its configuration (``backend:`` in organism.yaml).

The one place that knows which class serves which ``type``, that a manager backend with no
``manager_address`` starts (and stops) a state server of its own, which backends outlive this
process, and how each is named for people.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from xml_pipeline._settings import BackendConfig
from xml_pipeline.backends.base import Backend
from xml_pipeline.backends.manager import ManagerBackend
from xml_pipeline.backends.memory import MemoryBackend

__all__ = ["describe_backend", "is_durable", "kept_across_runs", "open_backend"]


def kept_across_runs(config: BackendConfig | Backend) -> BackendConfig | Backend:
    """What each run of an organism opens: a memory config becomes one `MemoryBackend` for
    every run (its dead letters outlast a restart in-process); the others as given."""
    if isinstance(config, BackendConfig) and config.type == "memory":
        return MemoryBackend(
            thread_ttl_seconds=config.thread_ttl_seconds,
            history_max_entries=config.history_max_entries,
        )
    return config


@asynccontextmanager
async def open_backend(
    config: BackendConfig | Backend, *, namespace: str
) -> AsyncIterator[Backend]:
    """The backend ``config`` describes, open for the block; closed (and any state server it
    started stopped) after it.

    A `Backend` object given instead of a config is opened and closed as it is.
    ``namespace`` keeps organisms apart on a shared manager server (Redis uses
    ``redis_prefix``).

    Raises:
        BackendError: the backend is unreachable (the message names the address and cause),
            or its state server cannot be started.
    """
    async with AsyncExitStack() as stack:
        backend = (
            config if not isinstance(config, BackendConfig) else _build(config, namespace, stack)
        )
        await backend.open()
        stack.push_async_callback(backend.aclose)
        yield backend


def _build(config: BackendConfig, namespace: str, stack: AsyncExitStack) -> Backend:
    ttl, most = config.thread_ttl_seconds, config.history_max_entries
    if config.type == "redis":
        from xml_pipeline.backends.redis import RedisBackend

        return RedisBackend(
            config.redis_url,
            prefix=config.redis_prefix,
            max_connections=config.redis_max_connections,
            thread_ttl_seconds=ttl,
            history_max_entries=most,
        )
    if config.type == "manager":
        from xml_pipeline.backends.manager import start_manager_server

        address = config.manager_host_port
        server = None
        if address is None:  # no server named: this organism runs its own
            server = start_manager_server()
            stack.callback(server.shutdown)
            address, authkey = server.address, server.authkey
        else:
            authkey = (config.manager_authkey or "").encode()
        return ManagerBackend(
            address,
            authkey,
            namespace=namespace,
            thread_ttl_seconds=ttl,
            history_max_entries=most,
            server=server,
        )
    return MemoryBackend(thread_ttl_seconds=ttl, history_max_entries=most)


def is_durable(backend: BackendConfig | Backend) -> bool:
    """Whether what the backend keeps outlives this process."""
    if isinstance(backend, BackendConfig):
        return backend.type == "redis" or backend.manager_address is not None
    if isinstance(backend, ManagerBackend):
        return backend.server is None  # a server this process started dies with it
    return not isinstance(backend, MemoryBackend)


def describe_backend(backend: BackendConfig | Backend) -> str:
    """Where the backend keeps its data, for people (messages, the console, ``/api/graph``):
    a `BackendConfig` by its ``type`` (memory, redis, manager with or without an address), a
    `Backend` object by what it is (its repr names its address)."""
    if isinstance(backend, MemoryBackend) or (
        isinstance(backend, BackendConfig) and backend.type == "memory"
    ):
        return "the memory of this process"
    if not isinstance(backend, BackendConfig):
        if isinstance(backend, ManagerBackend) and backend.server is not None:
            return f"the manager server this process started ({backend!r})"
        return repr(backend)
    if backend.type == "redis":
        return f"redis at {backend.redis_url.rpartition('@')[2]}, prefix {backend.redis_prefix!r}"
    if backend.manager_address is not None:
        return f"the manager server at {backend.manager_address}"
    return "the manager server this organism starts"
