"""Metrics and traces of a running organism: a collector that never blocks the pump.

Turned on by a ``metrics:`` and/or ``tracing:`` section in organism.yaml (or
``Organism(metrics=..., tracing=...)``); with neither, nothing is subscribed and nothing is
allocated per hop. `Organism.metrics` is the collector, `Organism.trace` a conversation's hop
tree. The sinks' optional libraries are imported only when a sink of that type starts.
"""

from xml_pipeline.metrics.collector import MetricsCollector, Probes
from xml_pipeline.metrics.settings import (
    JsonlSinkConfig,
    MetricsConfig,
    OtlpSinkConfig,
    PrometheusSinkConfig,
    RedisStreamSinkConfig,
    SinkConfig,
    TracingConfig,
)
from xml_pipeline.metrics.sink import Sink, SinkStats
from xml_pipeline.metrics.trace import Trace, TraceHop, build_tree

__all__ = [
    "JsonlSinkConfig",
    "MetricsCollector",
    "MetricsConfig",
    "OtlpSinkConfig",
    "Probes",
    "PrometheusSinkConfig",
    "RedisStreamSinkConfig",
    "Sink",
    "SinkConfig",
    "SinkStats",
    "Trace",
    "TraceHop",
    "TracingConfig",
    "build_tree",
]
