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
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
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


async def test_a_traced_conversation_becomes_spans_under_their_parents() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from xml_pipeline import TracingConfig

    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = TracingConfig(otel=True, tracer_provider=provider)
    org = organism(tracing=tracing)
    try:
        async with org:
            conversation = await org.send("plan", Plan(text="x"))
            await org.wait_idle()
            trace = await org.trace(conversation)  # also hands the buffer to the recorder
    finally:
        provider.shutdown()
    spans = exporter.get_finished_spans()
    by_id = {span.context.span_id: span for span in spans}
    root = next(s for s in spans if s.name == "conversation plan")
    assert root.attributes is not None
    assert root.attributes["xml_pipeline.conversation"] == conversation
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    assert len(spans) == 1 + len(list(trace.walk())) == 6

    def parent_name(span: object) -> str:
        parent = span.parent  # type: ignore[attr-defined]
        return "" if parent is None else by_id[parent.span_id].name

    shape = sorted((s.name, parent_name(s)) for s in spans)
    assert shape == [
        ("conversation plan", ""),
        ("left <Part>", "plan <Plan>"),
        ("plan <Part>", "left <Part>"),
        ("plan <Part>", "right <Part>"),
        ("plan <Plan>", "conversation plan"),
        ("right <Part>", "plan <Plan>"),
    ]
    hop = next(s for s in spans if s.name == "plan <Plan>")
    assert hop.start_time is not None and root.start_time is not None
    assert root.start_time <= hop.start_time <= (hop.end_time or 0) <= (root.end_time or 0)
