"""The OpenTelemetry sink, read back through the SDK's in-memory reader."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tests.metrics.organisms import Plan, organism
from xml_pipeline import (
    DeliveryError,
    HandlerMetadata,
    HandlerResponse,
    Listener,
    MetricsConfig,
    Organism,
    payload,
)
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


# -- the W3C traceparent: spans join the caller's trace -----------------------------------------

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def plan_envelope(traceparent: str = "", text: str = "x") -> bytes:
    carried = f"<traceparent>{traceparent}</traceparent>" if traceparent else ""
    return (
        '<message xmlns="https://xml-pipeline.org/ns/envelope/v1"><meta><from></from>'
        f'<to>plan</to><thread></thread>{carried}</meta><Plan xmlns=""><text>{text}</text></Plan>'
        "</message>"
    ).encode()


class Spans:
    """An SDK tracer provider writing to an in-memory exporter."""

    def __init__(self) -> None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(shutdown_on_exit=False)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def tracing(self) -> Any:
        from xml_pipeline import TracingConfig

        return TracingConfig(otel=True, tracer_provider=self.provider)

    def finished(self) -> list[Any]:
        self.provider.force_flush()
        return list(self.exporter.get_finished_spans())


async def written(org: Any, conversation: str) -> None:
    """Hand the buffer to the recorder and span writer (the conversation has ended)."""
    await org.wait_idle()
    await org.metrics.flush()


async def test_hop_spans_of_a_request_made_in_the_callers_span_are_in_its_trace() -> None:
    spans = Spans()
    org = organism(tracing=spans.tracing())
    async with org:
        with spans.provider.get_tracer("app").start_as_current_span("the caller") as caller:
            await org.request("plan", Plan(text="x"), timeout=5)
        await org.request("plan", Plan(text="y"), timeout=5)  # outside any span: a root
        await written(org, "")
    found = spans.finished()
    mine = caller.get_span_context()
    roots = [s for s in found if s.name == "conversation plan"]
    assert len(roots) == 2
    inside, outside = sorted(roots, key=lambda s: s.parent is None)
    assert inside.parent is not None and inside.parent.span_id == mine.span_id
    assert outside.parent is None and outside.context.trace_id != mine.trace_id
    in_trace = [s for s in found if s.context.trace_id == mine.trace_id]
    assert len(in_trace) == 1 + 1 + 5, "the caller's span, the conversation's, 5 hops"


async def test_an_envelopes_traceparent_is_the_parent_of_its_conversations_spans() -> None:
    spans = Spans()
    org = organism(tracing=spans.tracing())
    async with org:
        await org.request_envelope(plan_envelope(TRACEPARENT), timeout=5)
        await written(org, "")
    found = spans.finished()
    root = next(s for s in found if s.name == "conversation plan")
    assert root.parent is not None and root.parent.is_remote
    assert f"{root.parent.trace_id:032x}" == TRACEPARENT[3:35]
    assert f"{root.parent.span_id:016x}" == TRACEPARENT[36:52]
    assert {f"{s.context.trace_id:032x}" for s in found} == {TRACEPARENT[3:35]}
    assert org.stats.traceparents_ignored == 0


async def test_a_malformed_traceparent_is_ignored_counted_and_logged_never_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spans = Spans()
    org = organism(tracing=spans.tracing())
    bad = "00-" + "0" * 32 + TRACEPARENT[35:]  # an all-zero trace id
    with caplog.at_level("DEBUG", logger="xml_pipeline.pump"):
        async with org:
            answer = await org.request_envelope(plan_envelope(bad), timeout=5)
            assert b"<text>done</text>" in answer
            await org.inject(plan_envelope("nonsense"))
            await written(org, "")
            assert org.stats.traceparents_ignored == 2 and org.stats.rejected == 0
    said = [r.getMessage() for r in caplog.records if "traceparent" in r.getMessage()]
    assert any("trace-id is all zeros" in m for m in said), said
    assert any("inject() ignored" in m and "'nonsense'" in m for m in said), said
    # as the README says: a WARNING for inject/send, DEBUG for request_envelope (a gateway's
    # callers, organism run's input: anyone could fill the log)
    levels = {r.getMessage().partition(" ")[0]: r.levelname for r in caplog.records
              if "traceparent" in r.getMessage()}  # fmt: skip
    assert levels == {"request_envelope()": "DEBUG", "inject()": "WARNING"}, levels
    roots = [s for s in spans.finished() if s.name == "conversation plan"]
    assert len(roots) == 2 and all(s.parent is None for s in roots), "new traces, no parent"


@payload
@dataclass
class Relay:
    text: str


async def test_traces_join_across_organisms_through_envelope_bytes() -> None:
    """Organism A's handler sends an envelope to organism B, stamping the trace context it
    runs in (here the application's span) as its traceparent: B's spans join that trace."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    spans = Spans()
    b = organism(name="b", tracing=spans.tracing())

    async def front(msg: Relay, meta: HandlerMetadata) -> HandlerResponse:
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        answer = await b.request_envelope(plan_envelope(carrier["traceparent"]), timeout=5)
        return HandlerResponse.respond(Relay(text=answer.decode()))

    a = Organism([Listener("front", Relay, front)], name="a", tracing=spans.tracing())
    async with a, b:
        with spans.provider.get_tracer("app").start_as_current_span("the caller") as caller:
            relayed = await a.request("front", Relay(text="go"), timeout=5)
        assert "<text>done</text>" in relayed.text
        await written(a, "")
        await written(b, "")
    found = spans.finished()
    mine = caller.get_span_context()
    assert {s.context.trace_id for s in found} == {mine.trace_id}, "one trace"
    conversations = {s.name: s for s in found if s.name.startswith("conversation")}
    assert set(conversations) == {"conversation front", "conversation plan"}
    assert all(s.parent is not None for s in conversations.values())
    assert conversations["conversation plan"].parent.span_id == mine.span_id
    assert conversations["conversation plan"].parent.is_remote, "it came through the bytes"
    assert len(found) == 1 + (1 + 1) + (1 + 5)


async def test_a_dead_letter_keeps_the_traceparent_so_a_replay_joins_the_trace() -> None:
    org = organism()
    async with org:
        await org.inject(plan_envelope(TRACEPARENT, text="fail"))
        await org.wait_idle()
        (letter,) = await org.dead_letters.list()
    assert f"<traceparent>{TRACEPARENT}</traceparent>".encode() in letter.envelope
