"""The OpenTelemetry sink, read back through the SDK's in-memory reader."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tests.metrics.organisms import Plan, organism
from xml_pipeline import DeliveryError, MetricsConfig
from xml_pipeline.metrics import OtlpSinkConfig

pytestmark = pytest.mark.anyio


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


async def test_counters_histogram_and_gauges_reach_the_meter_provider() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    sink = OtlpSinkConfig(meter_provider=provider)
    org = organism(metrics=MetricsConfig(flush_interval_seconds=0.05, sinks=(sink,)))
    try:
        async with org:
            await org.request("plan", Plan(text="a"), timeout=5)
            with pytest.raises(DeliveryError):
                await org.request("plan", Plan(text="fail"), timeout=5)
            await org.wait_idle()
            assert org.metrics is not None
            assert await org.metrics.flush()
            found = points(reader)
            stats = org.stats
    finally:
        provider.shutdown()
    received = {p.attributes["listener"]: p.value for p in found["xml_pipeline.messages.received"]}
    assert sum(received.values()) == stats.hops
    failures = found["xml_pipeline.handler.failures"]
    assert [(p.attributes["listener"], p.attributes["reason"], p.value) for p in failures] == [
        ("left", "handler_error", 1)
    ]
    durations = found["xml_pipeline.handler.duration"]
    assert sum(p.count for p in durations) == stats.hops
    assert [p.value for p in found["xml_pipeline.conversations"]] == [stats.conversations]
    assert [p.value for p in found["xml_pipeline.conversations.failed"]] == [1]
    busy = {p.attributes["listener"]: p.value for p in found["xml_pipeline.listener.busy"]}
    assert busy == {"plan": 0, "left": 0, "right": 0}
    assert all(p.attributes["organism"] == "plan-org" for pts in found.values() for p in pts)


def test_an_otlp_sink_names_where_it_records() -> None:
    from xml_pipeline.metrics.otel import OtelSink
    from xml_pipeline.metrics.sink import SinkContext

    context = SinkContext("o", "redis://", dict)
    assert OtelSink(OtlpSinkConfig(), context).target == "the global MeterProvider"
    endpoint = OtlpSinkConfig(endpoint="http://127.0.0.1:4318")
    assert OtelSink(endpoint, context).target == "http://127.0.0.1:4318"
