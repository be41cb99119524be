"""Organism: the composition root.

An `Organism` owns its pump, registry, backend and (when a listener is ``cpu_bound``) its
process pool; two organisms in one process share nothing. Use it as an async context manager:

    async with Organism.from_yaml("organisms/hello/organism.yaml") as org:
        reply = await org.request("greeter", Greeting(name="Ada"), timeout=5)
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from xml_pipeline._config import (
    BackendConfig,
    OrganismConfig,
    ProcessPoolConfig,
    load_config,
    parse_config,
)
from xml_pipeline._errors import ConfigError, UsageError
from xml_pipeline._handlers import Listener
from xml_pipeline._loader import handler_signature_problem, load_organism, worker_import_problem
from xml_pipeline._runtime.hooks import Hooks
from xml_pipeline._runtime.invoker import PoolInvoker
from xml_pipeline._runtime.pool import ProcessPool
from xml_pipeline._runtime.pump import DeadLetter, PumpStats, StreamPump
from xml_pipeline._runtime.registry import ThreadRegistry
from xml_pipeline._runtime.worker import extend_sys_path
from xml_pipeline._wire.parsing import ParseLimits
from xml_pipeline.backends.base import Backend

__all__ = ["Organism"]


class Organism:
    """A running set of listeners: the thing you start, talk to, and stop.

    Build it with `from_yaml`, or directly from `Listener` objects when embedding.
    """

    def __init__(
        self,
        listeners: Sequence[Listener],
        *,
        name: str = "organism",
        backend: BackendConfig | Backend | None = None,
        process_pool: ProcessPoolConfig | None = None,
        max_message_bytes: int = 256 * 1024,
        ingress_limit: int = 1024,
        ingress_wait_seconds: float = 5.0,
        drain_timeout_seconds: float = 10.0,
        history: bool = True,
        max_hops: int = 10_000,
    ) -> None:
        if isinstance(listeners, Listener) or not isinstance(listeners, Sequence):
            raise UsageError(
                f"Organism() takes a list of Listener objects, not {type(listeners).__name__}"
            )
        strays = [item for item in listeners if not isinstance(item, Listener)]
        if strays:
            raise UsageError(f"Organism() takes Listener objects, found {strays[0]!r}")
        names = [listener.name for listener in listeners]
        if not names or len(set(names)) != len(names):
            raise UsageError(f"an organism needs listeners with distinct names, got {names}")
        for listener in listeners:
            _check_listener(listener, names)
        if backend is not None and not isinstance(backend, BackendConfig | Backend):
            backend = _section("backend", backend, BackendConfig)
        if process_pool is not None and not isinstance(process_pool, ProcessPoolConfig):
            process_pool = _section("process_pool", process_pool, ProcessPoolConfig)
        self._history = history
        self._max_hops = max_hops
        self.name = name
        self.listeners = tuple(listeners)
        self._backend_spec = backend if backend is not None else BackendConfig()
        self._pool_config = process_pool or ProcessPoolConfig()
        self._limits = ParseLimits(max_bytes=max_message_bytes)
        self._ingress = (ingress_limit, ingress_wait_seconds)
        self._drain_timeout = drain_timeout_seconds
        self._stack: AsyncExitStack | None = None
        self._pump: StreamPump | None = None
        self._registry: ThreadRegistry | None = None
        self._pool: ProcessPool | None = None
        self._stopped: StreamPump | None = None  # the last pump, for stats after it stopped
        self.hooks = Hooks()  # every hop and conversation event, for observers (see Hooks)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **overrides: Any) -> Organism:
        """Load ``organism.yaml``, import its classes and handlers, and build the organism.

        ``overrides`` replace settings of the file's ``organism:`` section and its
        ``backend``/``process_pool`` sections (e.g. ``backend=BackendConfig(type="redis")``
        or ``backend={"type": "redis"}``).

        Raises:
            ConfigError: every problem in the file or in what it names, with file, key path
                and line.
            UsageError: an override names no setting or has a value of the wrong type.
        """
        config = load_config(Path(path))
        return cls.from_config(config, **overrides)

    @classmethod
    def from_config(cls, config: OrganismConfig, **overrides: Any) -> Organism:
        """Build from an already loaded `OrganismConfig` (imports its handlers).

        Raises:
            ConfigError: a class or handler the config names cannot be imported or used.
            UsageError: an override names no setting or has a value of the wrong type.
        """
        if overrides:
            config = replace(config, **_checked_overrides(config, overrides))
        resolved = load_organism(config)
        listeners = [
            Listener(
                name=r.config.name,
                payload_class=r.payload_class,
                handler=r.handler,
                description=r.config.description,
                peers=r.config.peers,
                max_concurrency=r.config.max_concurrency,
                timeout_seconds=r.config.timeout_seconds,
                cpu_bound=r.config.cpu_bound,
                handles_errors=r.config.handles_errors,
            )
            for r in resolved
        ]
        return cls(
            listeners,
            name=config.name,
            backend=config.backend,
            process_pool=config.process_pool,
            max_message_bytes=config.max_message_bytes,
            ingress_limit=config.ingress_limit,
            ingress_wait_seconds=config.ingress_wait_seconds,
            drain_timeout_seconds=config.drain_timeout_seconds,
            history=config.history,
            max_hops=config.max_hops,
        )

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise UsageError(f"organism {self.name!r} is already running")
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            backend = self._open_backend(stack)
            await backend.open()
            stack.push_async_callback(backend.aclose)
            registry = ThreadRegistry(backend, self.name, history=self._history)
            await registry.initialize_root()
            invoker = None
            if any(listener.cpu_bound for listener in self.listeners):
                pool = ProcessPool(
                    self._pool_config.workers,
                    max_tasks_per_child=self._pool_config.max_tasks_per_child,
                    max_crashes=self._pool_config.max_crashes,
                    initializer=extend_sys_path,
                    initargs=(tuple(sys.path),),
                )
                invoker = PoolInvoker(await stack.enter_async_context(pool))
                self._pool = pool
            pump = StreamPump(
                self.listeners,
                registry,
                limits=self._limits,
                ingress_limit=self._ingress[0],
                ingress_wait_seconds=self._ingress[1],
                pool_invoker=invoker,
                pool_workers=self._pool_config.workers,
                max_hops=self._max_hops,
            )
            pump.hooks = self.hooks
            pump.start()
        except BaseException:
            await stack.aclose()
            raise
        self._stack, self._pump, self._registry = stack, pump, registry
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Drain in-flight work for up to ``drain_timeout_seconds``, then cancel and close."""
        stack, pump = self._stack, self._pump
        self._stack = self._pump = None
        self._pool = None
        if stack is None or pump is None:
            return
        self._stopped = pump
        try:
            await pump.aclose(self._drain_timeout)
        finally:
            await stack.aclose()

    def _open_backend(self, stack: AsyncExitStack) -> Backend:
        spec = self._backend_spec
        if not isinstance(spec, BackendConfig):
            return spec
        ttl, most = spec.thread_ttl_seconds, spec.history_max_entries
        if spec.type == "redis":
            from xml_pipeline.backends.redis import RedisBackend

            return RedisBackend(
                spec.redis_url,
                prefix=spec.redis_prefix,
                max_connections=spec.redis_max_connections,
                thread_ttl_seconds=ttl,
                history_max_entries=most,
            )
        if spec.type == "manager":
            from xml_pipeline.backends.manager import ManagerBackend, start_manager_server

            address = spec.manager_host_port
            server = None
            if address is None:  # no server named: this organism runs its own
                server = start_manager_server()
                stack.callback(server.shutdown)
                address, authkey = server.address, server.authkey
            else:
                authkey = (spec.manager_authkey or "").encode()
            return ManagerBackend(
                address,
                authkey,
                namespace=self.name,
                thread_ttl_seconds=ttl,
                history_max_entries=most,
                server=server,
            )
        from xml_pipeline.backends.memory import MemoryBackend

        return MemoryBackend(thread_ttl_seconds=ttl, history_max_entries=most)

    @property
    def ingress_limit(self) -> int:
        """How many conversations may be open before ingress waits, then fails."""
        return self._ingress[0]

    @property
    def limits(self) -> ParseLimits:
        """The caps applied to XML from outside (``max_message_bytes`` and friends)."""
        return self._limits

    @property
    def pump(self) -> StreamPump:
        """The running pump.

        Raises:
            UsageError: the organism is not running (use ``async with``).
        """
        if self._pump is None:
            raise UsageError(
                f"organism {self.name!r} is not running; use 'async with organism:' first"
            )
        return self._pump

    @property
    def process_pool(self) -> ProcessPool | None:
        """The pool running ``cpu_bound`` listeners (``None`` when there are none)."""
        return self._pool

    @property
    def registry(self) -> ThreadRegistry:
        """The thread registry (running organisms only)."""
        if self._registry is None or self._pump is None:
            raise UsageError(f"organism {self.name!r} is not running")
        return self._registry

    # -- talking to it ---------------------------------------------------------------------------

    async def request(self, to: str, payload: object, *, timeout: float = 30.0) -> Any:
        """Send ``payload`` to listener ``to`` and wait for the conversation's answer.

        ``timeout`` (seconds) covers the whole call: waiting for an ingress slot, the opening
        write to the backend and the answer. A requester that is cancelled ends the
        conversation (reason ``cancelled``): its running handlers are cancelled too.

        Returns:
            the payload object the conversation answers with (of any payload class).

        Raises:
            DeliveryError: for every failure of the conversation, as soon as it is known;
                ``.reason`` is one of ``handler_error``, ``timeout``, ``no_route``,
                ``peer_denied``, ``schema_violation``, ``no_answer``, ``overloaded``,
                ``worker_crash``, ``invalid_response``, ``hop_limit``, ``forged_sender``,
                ``cancelled``, ``shutdown``, ``backend_error``, ``backend_unreachable``,
                ``internal_error`` (see `Reason`).
            PayloadTypeError: ``payload`` is not a ``@payload`` object.
            SchemaViolation: ``payload`` does not conform to its class.
            UsageError: ``timeout`` is not a number of seconds above 0.
        """
        return await self.pump.request(to, payload, timeout)

    async def send(self, to: str, payload: object) -> str:
        """Start a conversation without waiting for its answer; returns its thread id.

        Failures with nobody waiting are logged and kept in `dead_letters`.

        Raises:
            DeliveryError: what is known at once (``no_route``, ``overloaded``, ``shutdown``,
                ``backend_error``, ``backend_unreachable``).
            PayloadTypeError: ``payload`` is not a ``@payload`` object.
            SchemaViolation: ``payload`` does not conform to its class.
        """
        return await self.pump.send(to, payload)

    async def inject(self, data: bytes | str) -> str:
        """Feed a raw v1 envelope from outside; returns the new conversation's thread id.

        A thread id in the envelope never joins an existing conversation: a new one starts.
        A ``<from>`` naming a listener or a reserved name (compared ignoring case, surrounding
        whitespace and compatibility forms; any leading ``_``) is refused. Refusals are counted
        in ``stats.rejected`` and logged.

        Raises:
            XmlInputError: too large, malformed, DOCTYPE, too deep, not an envelope.
            SchemaViolation: the payload does not conform to the target's class.
            DeliveryError: ``no_route`` (unknown target or payload), ``forged_sender``,
                ``overloaded``, ``shutdown``, ``backend_error``, ``backend_unreachable``.
            UsageError: ``data`` is neither bytes nor str.
        """
        return await self.pump.inject(data)

    async def wait_idle(self) -> None:
        """Wait until no conversation is open."""
        await self.pump.wait_idle()

    @property
    def stats(self) -> PumpStats:
        """A copy of the counters of the running organism, or of its last run once it
        stopped (all zero before it first started)."""
        pump = self._pump or self._stopped
        return PumpStats() if pump is None else pump.stats

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """Failures of ``send``/``inject`` conversations that nobody was waiting for (of the
        running organism, or of its last run once it stopped)."""
        pump = self._pump or self._stopped
        return [] if pump is None else pump.dead_letters


def _check_listener(listener: Listener, names: list[str]) -> None:
    """What the config loader checks in organism.yaml, for listeners built in code.

    Raises:
        UsageError: naming the listener, the setting and what to do.
    """
    where = f"listener {listener.name!r}"
    unknown = [peer for peer in listener.peers if peer not in names]
    if unknown:
        raise UsageError(f"{where}: peers {unknown} are not listeners of this organism")
    problem = handler_signature_problem(listener.handler) or (
        listener.cpu_bound and worker_import_problem(listener.handler)
    )
    if problem:
        raise UsageError(f"{where}: {problem}")


_OVERRIDABLE = {
    f.name: f for f in dataclasses.fields(OrganismConfig) if f.name not in ("file", "listeners")
}


def _checked_overrides(config: OrganismConfig, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` for `dataclasses.replace`, each checked against its setting.

    Raises:
        UsageError: an unknown setting, or a value of the wrong type, named with what to give.
    """
    checked: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in _OVERRIDABLE:
            known = ", ".join(sorted(_OVERRIDABLE))
            raise UsageError(
                f"from_yaml(): no setting named {key!r} to override; settings: {known}"
            )
        current = getattr(config, key)
        if key == "backend" and not isinstance(value, BackendConfig | Backend):
            value = _section(key, value, BackendConfig)
        elif key == "process_pool" and not isinstance(value, ProcessPoolConfig):
            value = _section(key, value, ProcessPoolConfig)
        elif key not in ("backend", "process_pool") and not _same_kind(value, current):
            raise UsageError(
                f"from_yaml(): {key}= takes {type(current).__name__}, not {value!r} "
                f"({type(value).__name__})"
            )
        checked[key] = value
    return checked


def _same_kind(value: object, current: object) -> bool:
    if isinstance(current, bool) or isinstance(value, bool):
        return type(value) is type(current)
    if isinstance(current, float):
        return isinstance(value, int | float)
    return isinstance(value, type(current))


def _section(key: str, value: object, cls: type[Any]) -> Any:
    """A ``backend``/``process_pool`` override given as a mapping, read by the same rules as
    that section of organism.yaml.

    Raises:
        UsageError: not a mapping, or a setting the section does not have or cannot take (every
            problem listed, by key path, as the file reader reports them).
    """
    if not isinstance(value, Mapping):
        raise UsageError(
            f"{key}= takes a {cls.__name__} or a mapping of its settings, not "
            f"{type(value).__name__}"
        )
    document = {
        "organism": {"name": "override"},
        "listeners": [{"name": "x", "payload_class": "m.C", "handler": "m.f"}],
        key: dict(value),
    }
    try:
        text = yaml.safe_dump(document)
    except yaml.YAMLError as exc:
        raise UsageError(f"{key}= holds a value YAML cannot carry: {exc}") from None
    try:
        config = parse_config(text, file=f"{key}=")
    except ConfigError as exc:
        problems = "; ".join(f"{p.key_path}: {p.message}" for p in exc.problems)
        raise UsageError(f"{key}= override: {problems}") from None
    return getattr(config, key)
