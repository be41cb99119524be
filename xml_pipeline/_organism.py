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
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, overload

from xml_pipeline._config import OrganismConfig, load_config, parse_section
from xml_pipeline._dead_letters import DeadLetters
from xml_pipeline._errors import ConfigError, NotFoundError, UnknownIdError, UsageError
from xml_pipeline._handlers import Listener, check_expect, check_expected
from xml_pipeline._loader import handler_signature_problem, load_organism, worker_import_problem
from xml_pipeline._runtime.heartbeat import Heartbeat, new_process_id
from xml_pipeline._runtime.hooks import Hooks
from xml_pipeline._runtime.invoker import PoolInvoker
from xml_pipeline._runtime.outbox import Outcome
from xml_pipeline._runtime.pool import ProcessPool
from xml_pipeline._runtime.pump import PumpStats, StreamPump
from xml_pipeline._runtime.recovery import ListenerRecovery
from xml_pipeline._runtime.registry import ThreadRegistry
from xml_pipeline._runtime.runs import Run, Worker
from xml_pipeline._runtime.tracing import HopLog, hop_log_enabled
from xml_pipeline._runtime.worker import extend_sys_path
from xml_pipeline._settings import (
    ANSWER_TIMEOUT_SECONDS,
    BackendConfig,
    DeadLetterConfig,
    OrganismSettings,
    ProcessPoolConfig,
    RunsConfig,
    build,
    listener_set_problems,
    value_problem,
    values_of,
)
from xml_pipeline._wire.parsing import ParseLimits
from xml_pipeline.backends.base import Backend
from xml_pipeline.backends.factory import (
    describe_backend,
    is_durable,
    kept_across_runs,
    open_backend,
)
from xml_pipeline.control.settings import ControlConfig
from xml_pipeline.metrics.collector import MetricsCollector, Probes
from xml_pipeline.metrics.settings import (
    DEFAULT_PROMETHEUS_LISTEN,
    MetricsConfig,
    PrometheusSinkConfig,
    TracingConfig,
)
from xml_pipeline.metrics.trace import Trace, trace_from_history

if TYPE_CHECKING:
    from xml_pipeline.control.server import ControlPlane

__all__ = ["Organism"]

_A = TypeVar("_A")

_DEFAULT = OrganismSettings()  # the defaults of Organism()'s settings, as organism.yaml's
_SETTING_NAMES = frozenset(values_of(OrganismSettings, _DEFAULT))


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
        dead_letters: DeadLetterConfig | None = None,
        runs: RunsConfig | Mapping[str, Any] | None = None,
        max_message_bytes: int = _DEFAULT.max_message_bytes,
        ingress_limit: int = _DEFAULT.ingress_limit,
        ingress_wait_seconds: float = _DEFAULT.ingress_wait_seconds,
        drain_timeout_seconds: float = _DEFAULT.drain_timeout_seconds,
        history: bool = _DEFAULT.history,
        max_hops: int = _DEFAULT.max_hops,
        outbox_size: int = _DEFAULT.outbox_size,
        metrics: MetricsConfig | Mapping[str, Any] | None = None,
        tracing: TracingConfig | bool | Mapping[str, Any] | None = None,
        control: ControlConfig | Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(listeners, Listener) or not isinstance(listeners, Sequence):
            raise UsageError(
                f"Organism() takes a list of Listener objects, not {type(listeners).__name__}"
            )
        strays = [item for item in listeners if not isinstance(item, Listener)]
        if strays:
            raise UsageError(f"Organism() takes Listener objects, found {strays[0]!r}")
        _check_listener_set(listeners)
        for listener in listeners:
            _check_listener(listener)
        if backend is not None and not isinstance(backend, BackendConfig | Backend):
            backend = _section("backend", backend)
        if process_pool is not None and not isinstance(process_pool, ProcessPoolConfig):
            process_pool = _section("process_pool", process_pool)
        measured = (
            metrics if isinstance(metrics, MetricsConfig | None) else _section("metrics", metrics)
        )
        traced = (
            tracing if isinstance(tracing, TracingConfig | None) else _section("tracing", tracing)
        )
        controlled = (
            control if isinstance(control, ControlConfig | None) else _section("control", control)
        )
        if dead_letters is not None and not isinstance(dead_letters, DeadLetterConfig):
            dead_letters = _section("dead_letters", dead_letters)
        if runs is not None and not isinstance(runs, RunsConfig):
            runs = _section("runs", runs)
        # the keyword arguments named after settings, checked by their specs
        given = {name: value for name, value in locals().items() if name in _SETTING_NAMES}
        settings = build(OrganismSettings, "Organism()", **given)
        self._settings = settings
        self._history = settings.history
        self._max_hops = settings.max_hops
        self.name = name
        self.listeners = tuple(listeners)
        self._backend_spec = backend if backend is not None else BackendConfig()
        spec = self._backend_spec
        spec = kept_across_runs(spec)
        self._backend: BackendConfig | Backend = spec  # what each run opens
        self._pool_config = process_pool or ProcessPoolConfig()
        self._dead_letter_config = dead_letters or DeadLetterConfig()
        self._runs_config: RunsConfig = runs if isinstance(runs, RunsConfig) else RunsConfig()
        self._heartbeat: Heartbeat | None = None
        self._limits = ParseLimits(max_bytes=settings.max_message_bytes)
        self._ingress = (settings.ingress_limit, settings.ingress_wait_seconds)
        self._drain_timeout = settings.drain_timeout_seconds
        self._stack: AsyncExitStack | None = None
        self._pump: StreamPump | None = None
        self._registry: ThreadRegistry | None = None
        self._pool: ProcessPool | None = None
        self._stopped: StreamPump | None = None  # the last pump, for stats after it stopped
        self._metrics_config: MetricsConfig | None = measured
        self._tracing: TracingConfig | None = traced
        self._collector: MetricsCollector | None = None  # the last one, kept after a stop
        self._control_config: ControlConfig | None = controlled
        self._control: ControlPlane | None = None
        self.hooks = Hooks()  # every hop and conversation event, for observers (see Hooks)
        self._dead_letters = DeadLetters._of(
            name,
            running=self._run_backend,
            open_backend=self._open_stopped_backend,
            durable=is_durable(spec),
            where=describe_backend(spec),
        )

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **overrides: Any) -> Organism:
        """Load ``organism.yaml``, import its classes and handlers, and build the organism.

        ``overrides`` replace settings of the file's ``organism:`` section and its
        ``backend``/``process_pool``/``dead_letters``/``runs`` sections (e.g.
        ``backend=BackendConfig(type="redis")`` or ``backend={"type": "redis"}``).

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
            config = replace(config, **_checked_overrides(overrides))
        return cls(
            load_organism(config),
            name=config.name,
            backend=config.backend,
            process_pool=config.process_pool,
            metrics=config.metrics,
            tracing=config.tracing,
            control=config.control,
            dead_letters=config.dead_letters,
            runs=config.runs,
            **values_of(OrganismSettings, config),
        )

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start: open the backend, start the pool (for ``cpu_bound`` listeners) and the pump.

        When the ``xml_pipeline.hops`` logger is enabled for DEBUG at this moment, every hop
        is logged on it (one line: sender -> listener, payload tag, short conversation id,
        duration, outcome) until the organism stops.

        With a ``control:`` section (or ``control=``), the control plane starts too (see
        `control_url`) and stops after the organism drained.

        Raises:
            UsageError: the organism is running already; or its control plane cannot start
                (the ``[web]`` extra is missing, its port is in use, or it would listen beyond
                loopback without a token).
            BackendError: its backend cannot be opened (``backend_unreachable``).
        """
        if self._stack is not None:
            raise UsageError(f"organism {self.name!r} is already running")
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            backend = await stack.enter_async_context(
                open_backend(self._backend, namespace=self.name)
            )
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
                outbox_size=self._settings.outbox_size,
                dead_letters_max=self._dead_letter_config.max_entries,
                keep_finished=self._runs_config.keep_finished,
                process=new_process_id(),
            )
            pump.hooks = self.hooks
            if self._metrics_config is not None or self._tracing is not None:
                collector = self._collect(pump, registry)
                await collector.start(self.hooks)
                stack.push_async_callback(collector.aclose)  # after the pump drained
                self._collector = collector
            if hop_log_enabled():  # one DEBUG line per hop; no events are built otherwise
                stack.callback(self.hooks.subscribe(HopLog()))
            runs = self._runs_config
            heartbeat = Heartbeat(
                pump,
                registry,
                interval=runs.heartbeat_seconds,
                lost_after=runs.lost_after_seconds,
                forget_after=runs.forget_after_seconds,
            )
            await heartbeat.start()
            stack.push_async_callback(heartbeat.aclose)  # after the pump drained
            self._heartbeat = heartbeat
            if self._control_config is not None:
                plane = self._start_control(self._control_config)
                await plane.start()
                stack.push_async_callback(plane.aclose)  # after the pump drained
                self._control = plane
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
        """Stop: refuse new work, drain in-flight work for up to ``drain_timeout_seconds``,
        then end what is left with ``shutdown``, keep each of those conversations as a dead
        letter (envelope included, to replay), cancel their handlers and close."""
        stack, pump = self._stack, self._pump
        self._stack = self._pump = None
        self._pool = None
        self._heartbeat = None
        if stack is None or pump is None:
            return
        self._stopped = pump
        try:
            await pump.aclose(self._drain_timeout)
        finally:
            await stack.aclose()

    def _start_control(self, config: ControlConfig) -> ControlPlane:
        """The control plane of this run (imported here: it needs the ``[web]`` extra).

        Raises:
            UsageError: the extra is not installed, or it would listen beyond loopback
                without a token.
        """
        from xml_pipeline.control.server import ControlPlane

        return ControlPlane(self, config, self.hooks)

    @property
    def control_url(self) -> str | None:
        """The base URL of the control plane (``http://127.0.0.1:8750``, the port bound when
        ``listen`` gave 0), while it runs; None without one."""
        plane = self._control
        return None if plane is None or self._pump is None else plane.url

    @property
    def backend_description(self) -> str:
        """Where the organism keeps its shared state, in words (for people)."""
        return describe_backend(self._backend_spec)

    def _collect(self, pump: StreamPump, registry: ThreadRegistry) -> MetricsCollector:
        """The collector of this run, reading the pump, registry and pool when it samples."""
        pool = self._pool
        spec = self._backend_spec
        listeners = self.listeners
        probes = Probes(
            listeners=frozenset(listener.name for listener in listeners),
            cpu_bound=frozenset(listener.name for listener in listeners if listener.cpu_bound),
            pool_workers=0 if pool is None else self._pool_config.workers,
            stats=lambda: pump.stats,
            open_conversations=lambda: pump.open_conversations,
            listener_load=pump.listener_load,
            registry_size=registry.size,
            pool_stats=lambda: None if pool is None else pool.stats,
            dead_letters=self._dead_letters_kept,
            recovery=pump.recovery_status,
        )
        config = self._metrics_config or MetricsConfig()
        if self._control_config is None:  # no control plane to serve /metrics: the default
            config = replace(config, sinks=tuple(_own_listen(sink) for sink in config.sinks))
        return MetricsCollector(
            config,
            self._tracing,
            organism=self.name,
            probes=probes,
            redis_url=(spec if isinstance(spec, BackendConfig) else BackendConfig()).redis_url,
        )

    async def _dead_letters_kept(self) -> int:
        return (await self._dead_letters.counts()).kept

    @property
    def metrics(self) -> MetricsCollector | None:
        """The metrics collector (`MetricsCollector`: ``stats()`` per sink, ``flush()``), of
        the running organism or of its last run; None when there is no ``metrics:`` or
        ``tracing:`` section (then nothing observes the hops)."""
        return self._collector

    async def trace(self, conversation: str) -> Trace:
        """The hop tree of a conversation (`Trace`; ``.render()`` gives it as text).

        With ``tracing`` on, every hop is recorded (with timings, outcomes, attempts) for the
        newest ``tracing.conversations`` conversations, open or ended, also after the organism
        stopped. Without it, an open conversation's history (when ``history`` is on) gives its
        hops in order, without timings.

        Raises:
            NotFoundError: neither holds the conversation; the message says which is off.
        """
        collector = self._collector
        if collector is not None and (found := collector.trace(conversation)) is not None:
            return found
        pump = self._pump
        if pump is not None and self._history:
            entries = await pump.read_history(conversation)
            if entries:
                return trace_from_history(conversation, entries)
        tracing = collector.tracing if collector is not None else None
        if tracing is None:
            why = "tracing is off (add 'tracing: true' to organism.yaml to record every hop)"
        else:
            why = (
                f"it is not among the {tracing.conversations} newest conversations the trace "
                "recorder keeps (raise tracing.conversations to keep more)"
            )
        if not self._history:
            history = "history is off (organism.history: false)"
        elif pump is None:
            history = "the organism is not running, so its history cannot be read"
        else:
            history = "history holds open conversations only, and this one is not open"
        raise NotFoundError(f"no trace of conversation {conversation!r}: {why}, and {history}")

    @property
    def drain_timeout_seconds(self) -> float:
        """How long stopping waits for in-flight work before the rest is dead-lettered."""
        return self._drain_timeout

    @property
    def ingress_limit(self) -> int:
        """How many conversations may be open before ingress waits, then fails."""
        return self._ingress[0]

    @property
    def limits(self) -> ParseLimits:
        """The caps applied to XML from outside (``max_message_bytes`` and friends)."""
        return self._limits

    def _running(self) -> StreamPump:
        """The running pump.

        Raises:
            UsageError: the organism is not running (use ``async with``).
        """
        if self._pump is None:
            raise UsageError(
                f"organism {self.name!r} is not running; use 'async with organism:' first"
            )
        return self._pump

    def _accepting(self) -> StreamPump:
        """The pump a new conversation goes to: the running one, else (while and after the
        organism stops) the stopped one, whose closed ingress refuses it with ``shutdown``. A
        caller racing the stop gets the failure of those refused a moment later, not a usage
        error (``organism run`` reported lines read just before a SIGTERM as ``[usage]``).

        Raises:
            UsageError: the organism has never been started (use ``async with``).
        """
        pump = self._pump or self._stopped
        return pump if pump is not None else self._running()

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

    @overload
    async def request(
        self, to: str, payload: object, *, timeout: float = ..., expect: type[_A]
    ) -> _A: ...
    @overload
    async def request(self, to: str, payload: object, *, timeout: float = ...) -> Any: ...
    async def request(
        self,
        to: str,
        payload: object,
        *,
        timeout: float = ANSWER_TIMEOUT_SECONDS,
        expect: type[Any] | None = None,
    ) -> Any:
        """Send ``payload`` to listener ``to`` and wait for the conversation's answer.

        ``expect``: the payload class the answer must be (then the return type is that class,
        for type checkers too); an answer of another class fails with ``invalid_response``.

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
                ``internal_error``, ``circuit_open`` (a listener's circuit breaker is open),
                ``compensation_failed`` (see `Reason`).
            PayloadTypeError: ``payload`` is not a ``@payload`` object.
            SchemaViolation: ``payload`` does not conform to its class.
            UsageError: ``timeout`` is not a number of seconds above 0, or ``expect`` is not a
                ``@payload`` class.
        """
        if expect is not None:
            check_expect(expect, f"request({to!r})")
        answer = await self._accepting().request(to, payload, timeout)
        if expect is not None:
            check_expected(answer, expect, to, "the request")
        return answer

    async def request_envelope(
        self, data: bytes | str, *, timeout: float = ANSWER_TIMEOUT_SECONDS
    ) -> bytes:
        """Answer a raw v1 envelope from outside with a raw answer envelope: for gateways.

        The envelope is read and checked exactly as by `inject` (guarded parser, reason codes,
        forged senders refused). The answer envelope carries the conversation id as its
        ``<thread>``, the answering listener as ``<from>`` and the original ``<from>`` as
        ``<to>`` (``_external``, the name history gives the outside, when it had none).

        Returns:
            the answer envelope, UTF-8 bytes without an XML declaration.

        Raises:
            XmlInputError, SchemaViolation: as `inject`, counted in ``stats.rejected``.
            DeliveryError: as `inject`, and every failure of the conversation as `request`.
            UsageError: ``data`` is neither bytes nor str, or ``timeout`` is not a number of
                seconds above 0.
        """
        return await self._accepting().request_envelope(data, timeout)

    def outcomes(self) -> AsyncIterator[Outcome]:
        """The outcomes of ``send``/``inject`` conversations as they end, oldest first.

        ``async for outcome in org.outcomes(): ...`` waits for the next one and ends when the
        organism stops (after the outcomes left). Each outcome goes to one reader. The outbox
        keeps the newest ``outbox_size`` outcomes nobody has read; older ones are dropped and
        counted in ``stats.outcomes_dropped``. ``request`` outcomes never go there: their
        caller has them.

        Raises:
            UsageError: the organism has never been started.
        """
        pump = self._pump or self._stopped
        if pump is None:
            raise UsageError(
                f"organism {self.name!r} has not started; read its outcomes inside "
                "`async with organism:`"
            )
        return aiter(pump.outbox)

    async def send(self, to: str, payload: object) -> str:
        """Start a conversation without waiting for its answer; returns its conversation id.

        Its outcome goes to `outcomes`; a failure is also logged and kept in `dead_letters`,
        to be replayed.

        Raises:
            DeliveryError: what is known at once (``no_route``, ``overloaded``, ``shutdown``,
                ``backend_error``, ``backend_unreachable``).
            PayloadTypeError: ``payload`` is not a ``@payload`` object.
            SchemaViolation: ``payload`` does not conform to its class.
        """
        return await self._accepting().send(to, payload)

    async def inject(self, data: bytes | str) -> str:
        """Feed a raw v1 envelope from outside; returns the new conversation's id.

        Its outcome goes to `outcomes` (use `request_envelope` to await the answer instead).

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
        return await self._accepting().inject(data)

    @property
    def process(self) -> str:
        """The instance id of this organism process while it runs (six hex digits, new at
        every start); its run ids end with it (``r12@3fa9c1``).

        Raises:
            UsageError: the organism is not running.
        """
        return self._running().process

    def runs(self, *, listener: str | None = None, status: str | None = None) -> list[Run]:
        """The handler runs of this process: those of open conversations now, then the
        finished ones kept (``runs.keep_finished``, newest first); optionally of one listener
        or one status (``queued``, ``running``, ``waiting`` in a ``meta.call``,
        ``completed``, ``failed``, ``cancelled``). What a task manager shows, with progress
        and output lines (``meta.progress``, ``meta.log``, a ``cpu_bound`` handler's prints).
        Built on demand from the pump's own state: a run costs one deque append when it ends.

        Raises:
            UsageError: the organism is not running.
        """
        return self._running().run_views.runs(listener, status)

    async def all_runs(
        self, *, listener: str | None = None, status: str | None = None
    ) -> list[Run]:
        """The runs of every organism process sharing this backend (this one's first, read
        live; the others' as their last heartbeat wrote them). The unfinished runs of a
        process not heard from for ``runs.lost_after_seconds`` have status ``lost``. With the
        memory backend: the runs of this process (and of organisms given the same
        `MemoryBackend` object).

        Raises:
            UsageError: the organism is not running.
            BackendError: the backend is unreachable.
        """
        pump = self._running()
        heartbeat = self._heartbeat
        if heartbeat is None:
            return pump.run_views.runs(listener, status)
        return await heartbeat.all_runs(listener, status)

    async def cancel_run(self, run_id: str) -> None:
        """Cancel a running handler (a run of `runs` or `all_runs`): its caller gets
        ``cancelled``, and the conversation carries on as after any failure (a caller with
        ``handles_errors`` gets an `ErrorReport`). A run of another process is cancelled
        through the backend: that process takes the command at its next heartbeat (within
        ``runs.heartbeat_seconds``); this call returns once the command is queued.

        Raises:
            UnknownIdError: no run has that id (``.kind`` ``"run"``).
            UsageError: the run finished already (or is lost), or the id is not a run id
                (``r12`` or ``r12@3fa9c1``), or the organism is not running.
            BackendError: the backend is unreachable (a run of another process).
        """
        pump = self._running()
        process = run_id.partition("@")[2] if isinstance(run_id, str) else ""
        if not process or process == pump.process or self._heartbeat is None:
            pump.cancel_run(run_id)
            return
        await self._heartbeat.cancel_run(run_id, process)

    async def cancel_conversation(self, conversation: str) -> None:
        """End an open conversation with ``cancelled``: its handlers are cancelled, its
        requester (or `outcomes`) gets the failure. A conversation open in another process
        (found among its runs) is cancelled through the backend, as `cancel_run`.

        Raises:
            UnknownIdError: no open conversation has that id (ended, or never existed).
            UsageError: the organism is not running.
            BackendError: the backend is unreachable.
        """
        pump = self._running()
        if pump.has_conversation(conversation) or self._heartbeat is None:
            await pump.cancel_conversation(conversation)
            return
        await self._heartbeat.cancel_conversation(conversation)

    def workers(self) -> list[Worker]:
        """The worker processes of the pool running ``cpu_bound`` listeners now: pid, busy
        or idle, calls done, resident memory, the run each one runs (empty without a pool).

        Raises:
            UsageError: the organism is not running.
        """
        pump = self._running()
        pool = self._pool
        if pool is None:
            return []
        return pump.run_views.workers(pool)

    async def kill_worker(self, pid: int) -> None:
        """Kill a worker process of the pool with SIGKILL. The pool replaces it; the run it
        was running fails as after any worker crash (``worker_crash`` once it crashed its
        worker ``process_pool.max_crashes`` times running alone; it is run again before
        that), and the other calls in flight are run again.

        Raises:
            UnknownIdError: no worker of this organism has that pid (``.kind`` ``"worker"``).
            UsageError: the organism is not running.
        """
        self._running()
        pool = self._pool
        if pool is None or not pool.kill_worker(pid):
            raise UnknownIdError(
                f"no worker process {pid} in organism {self.name!r}; list them with workers()",
                kind="worker",
                id=str(pid),
            )

    def recovery_status(self) -> dict[str, ListenerRecovery]:
        """Each listener's recovery since the organism started (or in its last run, once it
        stopped): circuit state, attempts, retries, recovered, exhausted, compensations run
        and failed, last error and when. All zero before it first started."""
        pump = self._pump or self._stopped
        if pump is None:
            return {listener.name: ListenerRecovery() for listener in self.listeners}
        return pump.recovery_status()

    async def wait_idle(self) -> None:
        """Wait until no conversation is open."""
        await self._running().wait_idle()

    @property
    def stats(self) -> PumpStats:
        """A copy of the counters of the running organism, or of its last run once it
        stopped (all zero before it first started)."""
        pump = self._pump or self._stopped
        return PumpStats() if pump is None else pump.stats

    @property
    def dead_letters(self) -> DeadLetters:
        """The dead-letter queue: conversations the organism could not deliver, kept in its
        backend with their envelopes, to list, replay and purge (``await
        org.dead_letters.list()``).

        Failures of ``send``/``inject`` conversations go there (nobody awaited them), and every
        conversation still open when the organism stops past its drain timeout (reason
        ``shutdown``). A ``request``'s caller gets its failure instead."""
        return self._dead_letters

    def _open_stopped_backend(self) -> AbstractAsyncContextManager[Backend]:
        """The backend, opened for a dead-letter call while the organism is stopped.

        Raises:
            UsageError: the backend was a state server this organism started: it stopped with
                the organism, dead letters and all.
        """
        spec = self._backend
        if isinstance(spec, BackendConfig) and spec.type == "manager" and not is_durable(spec):
            raise UsageError(
                f"organism {self.name!r} is stopped, and the manager server it started stopped "
                "with it, dead letters included; read them while it runs, or give "
                "backend.manager_address (a server of its own) to keep them"
            )
        return open_backend(spec, namespace=self.name)

    def _run_backend(self) -> tuple[StreamPump, Backend] | None:
        if self._pump is None or self._registry is None:
            return None
        return self._pump, self._registry.backend


def _check_listener_set(listeners: Sequence[Listener]) -> None:
    """The checks across listeners that organism.yaml gets, for listeners built in code.

    Raises:
        UsageError: for the first problem: no listener, a name used twice, a peer that is the
            listener itself, listed twice or not a listener of the organism.
    """
    names = [listener.name for listener in listeners]
    problems = listener_set_problems(
        [(listener.name, listener.peers) for listener in listeners], lambda i: f"listeners[{i}]"
    )
    for problem in problems:
        if problem.listener is None:
            where = "Organism()"
        elif problem.peer is None:
            where = f"Organism(): listeners[{problem.listener}]"
        else:
            where = f"Organism(): listener {names[problem.listener]!r}: peers[{problem.peer}]"
        raise UsageError(f"{where}: {problem.message}")


def _check_listener(listener: Listener) -> None:
    """What the loader checks of a handler named in organism.yaml, for listeners built in code.

    Raises:
        UsageError: naming the listener, the setting and what to do.
    """
    problem = handler_signature_problem(listener.handler) or (
        listener.cpu_bound and worker_import_problem(listener.handler)
    )
    if problem:
        raise UsageError(f"listener {listener.name!r}: {problem}")


_OVERRIDABLE = {
    f.name: f for f in dataclasses.fields(OrganismConfig) if f.name not in ("file", "listeners")
}


# what a `backend`/`process_pool` setting takes besides a mapping of its settings
_SECTION_TYPES: dict[str, tuple[type, ...]] = {
    "backend": (BackendConfig, Backend),
    "process_pool": (ProcessPoolConfig,),
    "metrics": (MetricsConfig,),
    "tracing": (TracingConfig,),
    "dead_letters": (DeadLetterConfig,),
    "control": (ControlConfig,),
    "runs": (RunsConfig,),
}


def _own_listen(sink: object) -> object:
    """A prometheus sink without ``listen`` given its default address (no control plane)."""
    if isinstance(sink, PrometheusSinkConfig) and sink.listen is None:
        return replace(sink, listen=DEFAULT_PROMETHEUS_LISTEN)
    return sink


def _checked_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` for `dataclasses.replace`, each checked by its setting's spec.

    Raises:
        UsageError: an unknown setting, or a value of the wrong type or out of range, named
            with what to give.
    """
    checked: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in _OVERRIDABLE:
            known = ", ".join(sorted(_OVERRIDABLE))
            raise UsageError(
                f"from_yaml(): no setting named {key!r} to override; settings: {known}"
            )
        if key in _SECTION_TYPES:
            if not isinstance(value, _SECTION_TYPES[key]):
                value = _section(key, value)
        elif problem := value_problem(OrganismConfig, key, value):
            raise UsageError(f"from_yaml(): {key}= {problem}")
        checked[key] = value
    return checked


def _section(key: str, value: object) -> Any:
    """A ``backend``/``process_pool``/``dead_letters``/``metrics``/``tracing`` setting given as a
    mapping (or ``tracing`` as a bool), read by the same rules as that section of organism.yaml.

    Raises:
        UsageError: not a mapping, or a setting the section does not have or cannot take (every
            problem listed, by key path, as the file reader reports them).
    """
    if value is None and key in ("metrics", "tracing", "control"):
        return None  # an override that turns it off
    if key == "tracing" and isinstance(value, bool):
        return TracingConfig() if value else None
    if not isinstance(value, Mapping):
        name = _SECTION_TYPES[key][0].__name__
        also = ", True or False" if key == "tracing" else ""
        raise UsageError(
            f"{key}= takes a {name}{also} or a mapping of its settings, not {type(value).__name__}"
        )
    try:
        return parse_section(key, value, file=f"{key}=")
    except ConfigError as exc:
        problems = "; ".join(f"{p.key_path}: {p.message}" for p in exc.problems)
        raise UsageError(f"{key}= override: {problems}") from None
