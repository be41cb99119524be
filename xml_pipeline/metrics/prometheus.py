"""The Prometheus sink: this organism's own registry, served on its own ``listen:`` address.

Batches are added to totals kept here (under a lock: ``prometheus_client`` serves scrapes from
a thread of its own); a custom `Collector` turns them into metric families at each scrape, so
two organisms in one process never share a metric. Names follow Prometheus conventions:
``xml_pipeline_`` first, ``_total`` on counters, base units (``_seconds``). Label values come
from listener names and reason codes; the exposition escapes them.

Metrics (every one labelled with ``organism``):

- per listener: ``messages_received_total``, ``messages_sent_total``,
  ``handler_failures_total{reason}``, ``handler_retries_total``,
  ``handler_duration_seconds`` (a histogram), ``listener_busy``, ``listener_backlog``,
  ``listener_concurrency_limit``, ``listener_circuit_state{state}`` (listeners with a circuit),
  ``listener_{recovered,retries_exhausted,circuit_rejections,compensations,
  compensations_failed}_total`` (`Organism.recovery_status`);
- per organism: every counter of `Organism.stats` (``conversations_total``,
  ``conversations_answered_total``...), ``conversations_ended_total{outcome}``,
  ``conversations_open``, ``registry_records``, ``backend_probe_seconds``, ``pool_workers``,
  ``pool_workers_busy``, ``dead_letters``;
- the collector's own, per sink: ``metrics_records_{submitted,flushed,dropped,retried,
  dead_lettered}_total``, ``metrics_queue_depth``, ``metrics_last_flush_timestamp_seconds``,
  ``metrics_last_flush_duration_seconds``.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from xml_pipeline.metrics.records import DURATION_BUCKETS, STATS_METRICS, Batch, Sample, Summary
from xml_pipeline.metrics.settings import PrometheusSinkConfig
from xml_pipeline.metrics.sink import SinkContext

__all__ = ["PrometheusSink"]

_P = "xml_pipeline_"


class _Totals:
    """Everything added so far, guarded by one lock (scrapes read it from another thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self.failures: Counter[tuple[str, str]] = Counter()
        self.retries: Counter[str] = Counter()
        self.ended: Counter[str] = Counter()
        # listener -> cumulative counts per bucket bound, count, sum
        self.buckets: dict[str, list[int]] = {}
        self.count: Counter[str] = Counter()
        self.sum: dict[str, float] = {}
        self.sample: Sample | None = None

    def add(self, summary: Summary) -> None:
        with self.lock:
            self.received.update(summary.received)
            self.sent.update(summary.sent)
            self.failures.update(summary.failures)
            self.retries.update(summary.retries)
            self.ended.update(summary.ended)
            for listener, durations in summary.durations.items():  # each sorted
                cumulative = self.buckets.get(listener)
                if cumulative is None:
                    cumulative = self.buckets[listener] = [0] * len(DURATION_BUCKETS)
                for i, bound in enumerate(DURATION_BUCKETS):
                    cumulative[i] += bisect.bisect_right(durations, bound)
                self.count[listener] += len(durations)
                self.sum[listener] = self.sum.get(listener, 0.0) + sum(durations)
            if summary.sample is not None:
                self.sample = summary.sample


class _Exposition(Collector):
    """Builds the metric families of one organism at each scrape."""

    def __init__(self, totals: _Totals, context: SinkContext) -> None:
        self._totals = totals
        self._context = context

    def collect(self) -> Iterator[Metric]:
        org = self._context.organism
        totals = self._totals
        with totals.lock:
            received, sent = dict(totals.received), dict(totals.sent)
            failures, retries = dict(totals.failures), dict(totals.retries)
            ended = dict(totals.ended)
            buckets = {k: list(v) for k, v in totals.buckets.items()}
            count, total = dict(totals.count), dict(totals.sum)
            sample = totals.sample
        listeners = sorted(
            {*received, *sent, *(s[0] for s in (sample.listeners if sample else ()))}
        )
        for name, values, help_ in (
            ("messages_received", received, "payloads delivered to the listener's handler"),
            ("messages_sent", sent, "payloads the listener sent: calls and answers"),
            ("handler_retries", retries, "handler runs that were retries"),
        ):
            family = CounterMetricFamily(_P + name, help_, labels=["organism", "listener"])
            for listener in listeners:
                family.add_metric([org, listener], values.get(listener, 0))
            yield family
        family = CounterMetricFamily(
            _P + "handler_failures", "handler runs that failed, by reason",
            labels=["organism", "listener", "reason"],
        )  # fmt: skip
        for (listener, reason), value in sorted(failures.items()):
            family.add_metric([org, listener, reason], value)
        yield family
        histogram = HistogramMetricFamily(
            _P + "handler_duration_seconds", "how long handler runs took",
            labels=["organism", "listener"],
        )  # fmt: skip
        for listener in sorted(buckets):
            points = [
                (repr(b), c) for b, c in zip(DURATION_BUCKETS, buckets[listener], strict=True)
            ]
            points.append(("+Inf", count[listener]))
            histogram.add_metric([org, listener], points, total[listener])
        yield histogram
        family = CounterMetricFamily(
            _P + "conversations_ended", "conversations ended, by outcome (answered or a reason)",
            labels=["organism", "outcome"],
        )  # fmt: skip
        for outcome, value in sorted(ended.items()):
            family.add_metric([org, outcome], value)
        yield family
        if sample is not None:
            yield from _sampled(org, sample)
        yield from self._own(org)

    def _own(self, org: str) -> Iterator[Metric]:
        stats = self._context.stats()
        labels = ["organism", "sink"]
        for field in ("submitted", "flushed", "dropped", "retried", "dead_lettered"):
            family = CounterMetricFamily(
                f"{_P}metrics_records_{field}", f"metrics records {field.replace('_', ' ')}",
                labels=labels,
            )  # fmt: skip
            for name, s in stats.items():
                family.add_metric([org, name], getattr(s, field))
            yield family
        gauges = (
            ("metrics_queue_depth", "records waiting for the sink", "depth"),
            ("metrics_last_flush_timestamp_seconds", "when the sink last wrote", "last_flush_at"),
            ("metrics_last_flush_duration_seconds", "its last write took", "last_flush_seconds"),
        )
        for name, help_, attr in gauges:
            gauge = GaugeMetricFamily(_P + name, help_, labels=labels)
            for sink, s in stats.items():
                value = getattr(s, attr)
                if value is not None:
                    gauge.add_metric([org, sink], value)
            yield gauge


def _sampled(org: str, sample: Sample) -> Iterator[Metric]:
    """The families read from the organism's newest sample."""
    for field, (name, help_) in STATS_METRICS.items():
        value = getattr(sample.stats, field)
        family = CounterMetricFamily(name, help_, labels=["organism"])
        family.add_metric([org], value)
        yield family
    labels = ["organism", "listener"]
    index: int
    for index, name, help_ in (
        (1, "listener_busy", "handler runs in progress (concurrency slots in use)"),
        (2, "listener_backlog", "hops waiting for a slot"),
        (3, "listener_concurrency_limit", "max_concurrency"),
    ):
        gauge = GaugeMetricFamily(_P + name, help_, labels=labels)
        for listener, *counts in sample.listeners:
            gauge.add_metric([org, listener], counts[index - 1])
        yield gauge
    if sample.circuits:
        gauge = GaugeMetricFamily(
            _P + "listener_circuit_state", "1 for the state each listener's circuit is in",
            labels=["organism", "listener", "state"],
        )  # fmt: skip
        for listener, state in sample.circuits:
            gauge.add_metric([org, listener, state], 1)
        yield gauge
    for field, name, help_ in (
        ("recovered", "listener_recovered", "hops that succeeded after a retry"),
        ("exhausted", "listener_retries_exhausted", "failures final though retryable"),
        ("circuit_rejections", "listener_circuit_rejections", "hops failed at once: circuit open"),
        ("compensations", "listener_compensations", "compensations run for its answers"),
        ("compensations_failed", "listener_compensations_failed", "compensations that failed"),
    ):
        family = CounterMetricFamily(_P + name, help_, labels=["organism", "listener"])
        for listener, recovery in sample.recovery:
            family.add_metric([org, listener], getattr(recovery, field))
        yield family
    values: list[tuple[str, str, Any]] = [
        ("conversations_open", "conversations open now", sample.open_conversations),
        ("registry_records", "live records in the backend", sample.registry_records),
        ("backend_probe_seconds", "how long reading the registry size took",
         sample.backend_seconds),
        ("pool_workers", "worker processes of the pool", sample.pool_workers),
        ("pool_workers_busy", "cpu_bound handler runs in the pool now", sample.pool_busy),
        ("dead_letters", "dead letters kept", sample.dead_letters),
    ]  # fmt: skip
    for name, help_, value in values:
        if value is not None:
            yield _gauge(org, name, help_, value)


def _gauge(org: str, name: str, help_: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(_P + name, help_, labels=["organism"])
    gauge.add_metric([org], value)
    return gauge


class PrometheusSink:
    """Serves ``/metrics`` for one organism on ``listen`` (`prometheus_client`'s threaded
    HTTP server, its own `CollectorRegistry`: never the global one), or, without ``listen``,
    gives the control plane its exposition (`exposition`)."""

    aggregates = True

    def __init__(self, config: PrometheusSinkConfig, context: SinkContext) -> None:
        where = config.host_port
        self.served_by_control = where is None
        self._host, self._port = where or ("", 0)
        self._totals = _Totals()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Exposition(self._totals, context))
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def target(self) -> str:
        """The URL of its ``/metrics`` (with the port bound once started)."""
        if self.served_by_control:
            return "the control plane's /metrics"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}/metrics"

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` it serves on (the port bound, once started, when 0 was asked)."""
        return self._host, self._port

    async def start(self) -> None:
        """Bind ``listen`` and serve.

        Raises:
            OSError: the address is in use or cannot be bound.
        """
        if self.served_by_control:
            return
        self._server, self._thread = start_http_server(
            self._port, addr=self._host, registry=self.registry
        )
        self._port = int(self._server.server_address[1])

    def exposition(self) -> tuple[bytes, str]:
        """The metrics now in the Prometheus text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    async def write(self, batch: Batch) -> None:
        """Add a batch's counts to the totals served."""
        if batch.summary is not None:
            self._totals.add(batch.summary)

    async def aclose(self) -> None:
        """Stop serving and free the port."""
        server, self._server = self._server, None
        if server is not None:
            await anyio.to_thread.run_sync(_stop, server, self._thread, abandon_on_cancel=True)


def _stop(server: Any, thread: threading.Thread | None) -> None:
    server.shutdown()
    server.server_close()
    if thread is not None:
        thread.join(timeout=5)
