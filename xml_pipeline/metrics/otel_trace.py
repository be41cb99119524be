"""Traces as OpenTelemetry spans (``tracing: {otel: true}``, the ``[otel]`` extra).

When a traced conversation ends, its hop tree (`build_tree`, the same one `Organism.trace`
gives) is written as spans: one for the conversation, one per hop under the hop that sent its
payload, with the hops' own start and end times. This runs in the collector's flush task after
the conversation ended, never on the hop path. Spans go to ``tracer_provider`` (code only) or
the application's global ``TracerProvider``.

The conversation's span has a parent when the conversation had one as it opened, so that its
spans join the caller's trace: the W3C ``traceparent`` its envelope carried (across processes:
``request_envelope``/``inject`` bytes), else the span active in the task that opened it (a
``request`` made inside the application's own span). `SpanWriter.opened` reads it then, in that
task; otherwise the conversation's span is a trace's root.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from xml_pipeline._runtime.hooks import ConversationEvent
from xml_pipeline.metrics.trace import Trace, TraceHop

__all__ = ["SpanWriter"]

_NS = 1_000_000_000
_PROPAGATOR = TraceContextTextMapPropagator()


class SpanWriter:
    """Writes ended conversations' traces as spans."""

    def __init__(self, organism: str, tracer_provider: Any = None, keep: int = 10_000) -> None:
        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self._tracer = provider.get_tracer("xml_pipeline")
        self._organism = organism
        # the parent of each conversation opened with one, until its spans are written; at
        # most ``keep`` (the trace recorder's limit: older ones have no trace to write)
        self._parents: OrderedDict[str, SpanContext] = OrderedDict()
        self._keep = keep

    def opened(self, event: ConversationEvent) -> None:
        """Remember the parent of a conversation that opens: its envelope's ``traceparent``,
        else the span active now. Called by the collector's hook subscriber, in the task that
        opened the conversation (per conversation, not per hop)."""
        if event.traceparent:
            carried = _PROPAGATOR.extract({"traceparent": event.traceparent})
            parent = trace.get_current_span(carried).get_span_context()
        else:
            parent = trace.get_current_span().get_span_context()
        if parent.is_valid:
            parents = self._parents
            parents[event.conversation] = parent
            if len(parents) > self._keep:
                parents.popitem(last=False)

    def write(self, found: Trace) -> None:
        """One span for the conversation, one per hop (children under their parents)."""
        if found.started_at is None:
            return
        base = found.started_at
        tracer = self._tracer
        end = base + (found.duration or 0.0)
        parent = self._parents.pop(found.conversation, None)
        # no parent: a root, whatever span was active when the flush task was made
        within = otel_context.Context()
        if parent is not None:
            within = trace.set_span_in_context(NonRecordingSpan(parent), within)
        root = tracer.start_span(
            f"conversation {found.listener}",
            context=within,
            start_time=int(base * _NS),
            attributes={
                "xml_pipeline.organism": self._organism,
                "xml_pipeline.conversation": found.conversation,
                "xml_pipeline.outcome": found.outcome or "open",
            },
        )
        if found.outcome not in (None, "answered"):
            root.set_status(Status(StatusCode.ERROR, found.outcome))
        stack: list[tuple[TraceHop, Any]] = [
            (hop, trace.set_span_in_context(root)) for hop in found.hops
        ]
        while stack:
            hop, parent = stack.pop()
            start = base + (hop.start or 0.0)
            span = tracer.start_span(
                f"{hop.listener} <{hop.payload_tag}>",
                context=parent,
                start_time=int(start * _NS),
                attributes={
                    "xml_pipeline.listener": hop.listener,
                    "xml_pipeline.payload": hop.payload_tag,
                    "xml_pipeline.sender": hop.sender,
                    "xml_pipeline.thread": hop.thread,
                    "xml_pipeline.attempt": hop.attempt,
                    "xml_pipeline.outcome": hop.outcome,
                    "xml_pipeline.process": hop.process,
                },
            )
            if hop.outcome not in ("ok", "running"):
                span.set_status(Status(StatusCode.ERROR, hop.outcome))
            span.end(end_time=int((start + (hop.duration or 0.0)) * _NS))
            context = trace.set_span_in_context(span)
            stack.extend((child, context) for child in hop.children)
        root.end(end_time=int(end * _NS))
