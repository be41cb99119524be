"""`open_sink`: the sink a sink config describes; each sink's optional library is imported
only here, when a sink of its type is opened."""

from __future__ import annotations

from xml_pipeline.metrics.settings import (
    JsonlSinkConfig,
    OtlpSinkConfig,
    PrometheusSinkConfig,
    RedisStreamSinkConfig,
    SinkSettings,
)
from xml_pipeline.metrics.sink import Sink, SinkContext

__all__ = ["open_sink"]


def open_sink(config: SinkSettings, context: SinkContext) -> Sink:
    """The sink a config describes (not started). Optional libraries are imported here.

    Raises:
        ModuleNotFoundError: the extra the sink needs is not installed (the config reader
            reports that first, naming the extra).
    """
    if isinstance(config, PrometheusSinkConfig):
        from xml_pipeline.metrics.prometheus import PrometheusSink

        return PrometheusSink(config, context)
    if isinstance(config, JsonlSinkConfig):
        from xml_pipeline.metrics.files import JsonlSink

        return JsonlSink(config)
    if isinstance(config, RedisStreamSinkConfig):
        from xml_pipeline.metrics.redis_stream import RedisStreamSink

        return RedisStreamSink(config, context)
    if isinstance(config, OtlpSinkConfig):
        from xml_pipeline.metrics.otel import OtelSink

        return OtelSink(config, context)
    raise TypeError(f"no sink for {config!r}")
