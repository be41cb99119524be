"""Traces as OpenTelemetry spans (``tracing: {otel: true}``, the ``[otel]`` extra).

When a traced conversation ends, its hop tree (`build_tree`, the same one `Organism.trace`
gives) is written as spans: one for the conversation, one per hop under the hop that sent its
payload, with the hops' own start and end times. This runs in the collector's flush task after
the conversation ended, never on the hop path. Spans go to ``tracer_provider`` (code only) or
the application's global ``TracerProvider``. The spans stay within this process: no
``traceparent`` travels with envelopes yet.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from xml_pipeline.metrics.trace import Trace, TraceHop

__all__ = ["SpanWriter"]

_NS = 1_000_000_000


class SpanWriter:
    """Writes ended conversations' traces as spans."""

    def __init__(self, organism: str, tracer_provider: Any = None) -> None:
        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self._tracer = provider.get_tracer("xml_pipeline")
        self._organism = organism

    def write(self, found: Trace) -> None:
        """One span for the conversation, one per hop (children under their parents)."""
        if found.started_at is None:
            return
        base = found.started_at
        tracer = self._tracer
        end = base + (found.duration or 0.0)
        root = tracer.start_span(
            f"conversation {found.listener}",
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
