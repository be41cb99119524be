"""Building and opening a backend from its configuration (``backend:`` in organism.yaml).

The one place that knows which class serves which ``type``, and that a manager backend with no
``manager_address`` starts (and stops) a state server of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from xml_pipeline._settings import BackendConfig
from xml_pipeline.backends.base import Backend

__all__ = ["open_backend"]


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
        from xml_pipeline.backends.manager import ManagerBackend, start_manager_server

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
    from xml_pipeline.backends.memory import MemoryBackend

    return MemoryBackend(thread_ttl_seconds=ttl, history_max_entries=most)
