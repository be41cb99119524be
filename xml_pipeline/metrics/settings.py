"""The ``metrics:`` and ``tracing:`` sections of organism.yaml, as frozen dataclasses.

Each sink type is a dataclass of its own; ``type`` picks it. Settings are declared as in
`xml_pipeline._settings` (a `Spec` per field), so the YAML reader reports a problem at its key
path and line (``metrics.sinks[1].path``) and code gets a `UsageError` in the same words.
This module imports nothing of ours but `_settings` and `_errors` (the config reader imports it).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from xml_pipeline._errors import UsageError
from xml_pipeline._settings import check_fields, did_you_mean, setting

__all__ = [
    "SINK_TYPES",
    "JsonlSinkConfig",
    "MetricsConfig",
    "OtlpSinkConfig",
    "PrometheusSinkConfig",
    "RedisStreamSinkConfig",
    "SinkConfig",
    "SinkSettings",
    "TracingConfig",
    "sink_class",
]

SinkType = Literal["prometheus", "jsonl", "redis_stream", "otlp"]
SINK_TYPES: tuple[SinkType, ...] = ("prometheus", "jsonl", "redis_stream", "otlp")
# the extra each sink type needs, by the module it imports
_EXTRAS = {"prometheus": ("prometheus_client", "metrics"), "otlp": ("opentelemetry.sdk", "otel")}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


def _sink_type(value: str, values: Mapping[str, Any]) -> str | None:
    if value not in SINK_TYPES:
        hint = did_you_mean(value, SINK_TYPES) or f"; use one of {', '.join(SINK_TYPES)}"
        return f"must be a sink type, found {value!r}{hint}"
    if value in _EXTRAS and not _installed(_EXTRAS[value][0]):
        module, extra = _EXTRAS[value]
        return (
            f"{value} needs {module.split('.')[0]}, which is not installed; "
            f"pip install 'xml-pipeline[{extra}]'"
        )
    return None


def _otel(value: bool, values: Mapping[str, Any]) -> str | None:
    if value and not _installed("opentelemetry.sdk"):
        return "needs opentelemetry-sdk, which is not installed; pip install 'xml-pipeline[otel]'"
    return None


DEFAULT_PROMETHEUS_LISTEN = "127.0.0.1:9464"  # a prometheus sink's, without a control plane


def _listen(value: str | None, values: Mapping[str, Any]) -> str | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if sep and host.strip("[]") and port.isdigit() and 0 <= int(port) < 65536:
        return None
    return f"must be host:port (like 127.0.0.1:9464; port 0 picks a free one), found {value!r}"


def _redis_url(value: str | None, values: Mapping[str, Any]) -> str | None:
    if value is None or value.startswith(("redis://", "rediss://", "unix://")):
        return None
    return f"must start with redis://, rediss:// or unix://, found {value!r}"


def _http_url(value: str | None, values: Mapping[str, Any]) -> str | None:
    if value is None or value.startswith(("http://", "https://")):
        return None
    return f"must be an http:// or https:// URL (an OTLP/HTTP collector), found {value!r}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkSettings:
    """What every sink has: whether it must start, and how long a failing write is retried.

    Raises:
        UsageError: a setting has the wrong type or an impossible value.
    """

    type: str = field(
        default="",
        metadata=setting("text", "prometheus | jsonl | redis_stream | otlp", rule=_sink_type),
    )
    required: bool = field(
        default=True,
        metadata=setting(
            "flag",
            "a sink that cannot start fails the organism's start; false: reported, retried",
        ),
    )
    retry_seconds: float = field(
        default=30.0,
        metadata=setting(
            "seconds",
            "how long a failing batch is retried (capped backoff) before it is dead-lettered",
            minimum=0,
        ),
    )
    kind: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if not self.type:
            object.__setattr__(self, "type", self.kind)
        elif self.type != self.kind:
            raise UsageError(
                f"{type(self).__name__}: type must be {self.kind!r}, not {self.type!r}"
            )
        check_fields(self, type(self).__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class PrometheusSinkConfig(SinkSettings):
    """Prometheus exposition (``/metrics``) of a registry of this organism's own, served by
    ``prometheus_client`` on an address of its own (``listen``), or without ``listen`` on the
    control plane's ``/metrics`` (when the organism has a ``control:`` section; otherwise on
    `DEFAULT_PROMETHEUS_LISTEN`)."""

    listen: str | None = field(
        default=None,
        metadata=setting(
            "text",
            "host:port to serve /metrics on (port 0: a free one); none: the control plane's "
            f"/metrics, or {DEFAULT_PROMETHEUS_LISTEN} without a control plane",
            nullable=True,
            rule=_listen,
        ),
    )
    kind: ClassVar[str] = "prometheus"

    @property
    def host_port(self) -> tuple[str, int] | None:
        """``listen`` split into ``(host, port)``; None: served by the control plane."""
        if self.listen is None:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.removeprefix("[").removesuffix("]"), int(port)


@dataclass(frozen=True, slots=True, kw_only=True)
class JsonlSinkConfig(SinkSettings):
    """One JSON object per line, appended to a file (relative paths: the organism file's
    folder, or the working directory for organisms built in code)."""

    path: str = field(
        metadata=setting("text", "the file records are appended to", non_empty="name a file")
    )
    kind: ClassVar[str] = "jsonl"


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisStreamSinkConfig(SinkSettings):
    """Records appended to a Redis stream (``XADD`` with an approximate ``MAXLEN``), so that
    one process can read and aggregate many."""

    url: str | None = field(
        default=None,
        metadata=setting(
            "text", "the Redis server; None: the backend's redis_url", nullable=True,
            rule=_redis_url,
        ),
    )  # fmt: skip
    stream: str = field(
        default="xml_pipeline:metrics",
        metadata=setting("text", "the stream's key", non_empty="name the stream"),
    )
    maxlen: int = field(
        default=100_000,
        metadata=setting("integer", "entries the stream keeps (approximately)", minimum=1),
    )
    kind: ClassVar[str] = "redis_stream"


@dataclass(frozen=True, slots=True, kw_only=True)
class OtlpSinkConfig(SinkSettings):
    """OpenTelemetry metrics through the OTel SDK (the ``[otel]`` extra).

    With ``endpoint``, the sink exports itself over OTLP/HTTP (needs
    ``opentelemetry-exporter-otlp-proto-http``); without, it records on ``meter_provider``
    (code only), or else on the application's global ``MeterProvider``.
    """

    endpoint: str | None = field(
        default=None,
        metadata=setting(
            "text", "an OTLP/HTTP collector URL; None: the global MeterProvider", nullable=True,
            rule=_http_url,
        ),
    )  # fmt: skip
    export_interval_seconds: float = field(
        default=10.0,
        metadata=setting("seconds", "how often an endpoint is sent to", minimum=0, exclusive=True),
    )
    meter_provider: Any = field(default=None, compare=False, repr=False)  # code only
    kind: ClassVar[str] = "otlp"


SinkConfig = PrometheusSinkConfig | JsonlSinkConfig | RedisStreamSinkConfig | OtlpSinkConfig
_SINK_CLASSES: dict[str, type[SinkSettings]] = {
    "prometheus": PrometheusSinkConfig,
    "jsonl": JsonlSinkConfig,
    "redis_stream": RedisStreamSinkConfig,
    "otlp": OtlpSinkConfig,
}


def sink_class(kind: str) -> type[SinkSettings] | None:
    """The config class of a sink type, or None when there is no such type."""
    return _SINK_CLASSES.get(kind)


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """The ``metrics:`` section: how events are buffered, flushed and where they go.

    Raises:
        UsageError: a setting has the wrong type or an impossible value.
    """

    flush_interval_seconds: float = field(
        default=5.0,
        metadata=setting(
            "seconds", "flush (and sample the organism) at least this often", minimum=0,
            exclusive=True,
        ),
    )  # fmt: skip
    batch_size: int = field(
        default=500,
        metadata=setting("integer", "records per write to a sink; a full batch flushes", minimum=1),
    )
    buffer: int = field(
        default=100_000,
        metadata=setting(
            "integer",
            "records held at most, and per sink queued at most; beyond, new ones are dropped",
            minimum=1,
        ),
    )
    shutdown_timeout_seconds: float = field(
        default=5.0,
        metadata=setting(
            "seconds", "how long stopping waits for sinks to write what is left", minimum=0
        ),
    )
    dead_letter: str | None = field(
        default=None,
        metadata=setting(
            "text",
            "a JSON Lines file for batches a sink gave up on; None: logged and counted",
            nullable=True,
        ),
    )
    # sink configs, or (code only) objects of the `metrics.Sink` protocol; such an object may
    # have the attributes name, required and retry_seconds (defaults: its class name, True, 30)
    sinks: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        check_fields(self, type(self).__name__)
        sinks = self.sinks
        if isinstance(sinks, list):
            sinks = tuple(sinks)
            object.__setattr__(self, "sinks", sinks)
        if not isinstance(sinks, tuple) or not all(map(_is_sink, sinks)):
            raise UsageError(
                "MetricsConfig: sinks takes sink configs (PrometheusSinkConfig, JsonlSinkConfig, "
                f"RedisStreamSinkConfig, OtlpSinkConfig) or Sink objects, not {sinks!r}"
            )


def _is_sink(value: object) -> bool:
    """A sink config, or an object with the methods of the `Sink` protocol."""
    if isinstance(value, SinkSettings):
        return True
    methods = ("start", "write", "aclose")
    return not isinstance(value, type) and all(callable(getattr(value, m, None)) for m in methods)


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingConfig:
    """The ``tracing:`` section (``tracing: true`` for these defaults): every hop is recorded
    in memory for `Organism.trace`.

    Raises:
        UsageError: a setting has the wrong type or an impossible value.
    """

    conversations: int = field(
        default=1000,
        metadata=setting(
            "integer", "conversations whose traces are kept (the oldest are dropped)", minimum=1
        ),
    )
    hops: int = field(
        default=10_000,
        metadata=setting("integer", "hops kept per conversation (then it is cut)", minimum=1),
    )
    otel: bool = field(
        default=False,
        metadata=setting(
            "flag", "write each conversation as OpenTelemetry spans when it ends", rule=_otel
        ),
    )
    tracer_provider: Any = field(default=None, compare=False, repr=False)  # code only

    def __post_init__(self) -> None:
        check_fields(self, type(self).__name__)
