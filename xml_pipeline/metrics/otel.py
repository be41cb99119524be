"""The OpenTelemetry sink (``type: otlp``, the ``[otel]`` extra): the same metrics on OTel
instruments.

A library should record on the application's ``MeterProvider`` and leave exporting to it: so
by default the sink takes the global one (``opentelemetry.metrics.get_meter_provider()``), or
the ``meter_provider`` given in code. With ``endpoint`` it makes a provider of its own that
exports over OTLP/HTTP (``opentelemetry-exporter-otlp-proto-http``) and shuts it down on close.

Instruments (attributes ``organism``, and ``listener``/``reason``/``outcome`` where they apply):
counters ``xml_pipeline.messages.received``, ``xml_pipeline.messages.sent``,
``xml_pipeline.handler.failures``, ``xml_pipeline.handler.retries``,
``xml_pipeline.conversations.ended``; the histogram ``xml_pipeline.handler.duration`` (s);
observable counters for every counter of `Organism.stats`; observable gauges for each
listener's busy slots and backlog, open conversations, registry records, pool workers busy and
dead letters.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import anyio
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from xml_pipeline.metrics.records import DURATION_BUCKETS, STATS_METRICS, Batch, Sample
from xml_pipeline.metrics.settings import OtlpSinkConfig
from xml_pipeline.metrics.sink import SinkContext

__all__ = ["OtelSink"]


def _otel_name(prometheus_name: str) -> str:
    """``xml_pipeline_conversations_answered`` -> ``xml_pipeline.conversations.answered``."""
    return "xml_pipeline." + prometheus_name.removeprefix("xml_pipeline_").replace("_", ".")


class OtelSink:
    """Records the collector's batches on OpenTelemetry instruments."""

    aggregates = True

    def __init__(self, config: OtlpSinkConfig, context: SinkContext) -> None:
        self._config = config
        self._organism = context.organism
        self._provider: Any = config.meter_provider
        self._own: Any = None  # a provider made here (endpoint), shut down on close
        self._sample: Sample | None = None
        self._instruments: dict[str, Any] = {}

    @property
    def target(self) -> str:
        """The OTLP endpoint, or which provider it records on."""
        if self._config.endpoint:
            return self._config.endpoint
        return (
            "the given MeterProvider" if self._config.meter_provider else "the global MeterProvider"
        )

    async def start(self) -> None:
        """Make the instruments (and the exporting provider, with ``endpoint``).

        Raises:
            ModuleNotFoundError: ``endpoint`` is set and the OTLP exporter is not installed.
        """
        provider = self._provider
        if provider is None and self._config.endpoint:
            provider = self._own = _exporting_provider(
                self._config.endpoint, self._config.export_interval_seconds
            )
        if provider is None:
            provider = metrics.get_meter_provider()
        meter = provider.get_meter("xml_pipeline")
        make = self._instruments
        for name, unit, help_ in (
            ("messages.received", "{message}", "payloads delivered to the listener's handler"),
            ("messages.sent", "{message}", "payloads the listener sent: calls and answers"),
            ("handler.failures", "{run}", "handler runs that failed, by reason"),
            ("handler.retries", "{run}", "handler runs that were retries"),
            ("conversations.ended", "{conversation}", "conversations ended, by outcome"),
        ):
            make[name] = meter.create_counter(f"xml_pipeline.{name}", unit=unit, description=help_)
        make["handler.duration"] = meter.create_histogram(
            "xml_pipeline.handler.duration", unit="s", description="how long handler runs took",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )  # fmt: skip
        for field, (name, help_) in STATS_METRICS.items():
            meter.create_observable_counter(
                _otel_name(name), callbacks=[self._stat(field)], description=help_
            )
        for index, name, help_ in (
            (1, "listener.busy", "handler runs in progress (concurrency slots in use)"),
            (2, "listener.backlog", "hops waiting for a slot"),
        ):
            meter.create_observable_gauge(
                f"xml_pipeline.{name}", callbacks=[self._load(index)], description=help_
            )
        for name, attr, help_ in (
            ("conversations.open", "open_conversations", "conversations open now"),
            ("registry.records", "registry_records", "live records in the backend"),
            ("pool.workers.busy", "pool_busy", "cpu_bound handler runs in the pool now"),
            ("dead_letters", "dead_letters", "dead letters kept"),
        ):
            meter.create_observable_gauge(
                f"xml_pipeline.{name}", callbacks=[self._gauge(attr)], description=help_
            )

    def _stat(self, field: str) -> Any:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            sample = self._sample
            if sample is None:
                return []
            return [Observation(getattr(sample.stats, field), {"organism": self._organism})]

        return observe

    def _load(self, index: int) -> Any:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            sample = self._sample
            if sample is None:
                return []
            return [
                Observation(counts[index - 1], {"organism": self._organism, "listener": listener})
                for listener, *counts in sample.listeners
            ]

        return observe

    def _gauge(self, attr: str) -> Any:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            value = None if self._sample is None else getattr(self._sample, attr)
            return [] if value is None else [Observation(value, {"organism": self._organism})]

        return observe

    async def write(self, batch: Batch) -> None:
        """Add a batch's counts to the counters and its durations to the histogram."""
        summary = batch.summary
        if summary is None:
            return
        org, make = self._organism, self._instruments
        for name, counts in (("messages.received", summary.received),
                             ("messages.sent", summary.sent),
                             ("handler.retries", summary.retries)):  # fmt: skip
            for listener, value in counts.items():
                make[name].add(value, {"organism": org, "listener": listener})
        for (listener, reason), value in summary.failures.items():
            make["handler.failures"].add(
                value, {"organism": org, "listener": listener, "reason": reason}
            )
        for outcome, value in summary.ended.items():
            make["conversations.ended"].add(value, {"organism": org, "outcome": outcome})
        histogram = make["handler.duration"]
        for listener, durations in summary.durations.items():
            attributes = {"organism": org, "listener": listener}
            for seconds in durations:
                histogram.record(seconds, attributes)
        if summary.sample is not None:
            self._sample = summary.sample

    async def aclose(self) -> None:
        """Shut down the provider made for ``endpoint`` (exporting what it holds)."""
        own, self._own = self._own, None
        if own is not None:
            await anyio.to_thread.run_sync(own.shutdown, abandon_on_cancel=True)


def _exporting_provider(endpoint: str, interval: float) -> Any:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[import-not-found,unused-ignore]
        OTLPMetricExporter,
    )
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    exporter = OTLPMetricExporter(endpoint=endpoint.rstrip("/") + "/v1/metrics")
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=interval * 1000)
    return MeterProvider(metric_readers=[reader])
