"""The contract every sink keeps: it is a `Sink`, says where it writes, starts, writes batches
(rows or a summary, empty ones too) and closes. Run against each real sink."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tests.metrics.organisms import Plan
from xml_pipeline import HopEvent
from xml_pipeline.metrics import (
    JsonlSinkConfig,
    OtlpSinkConfig,
    PrometheusSinkConfig,
    RedisStreamSinkConfig,
    Sink,
)
from xml_pipeline.metrics.factory import open_sink
from xml_pipeline.metrics.records import Batch, Summary, rows_of
from xml_pipeline.metrics.settings import SinkSettings
from xml_pipeline.metrics.sink import SinkContext

pytestmark = pytest.mark.anyio

EVENTS = [
    HopEvent("finished", "c1", "t1", "_external", "plan", Plan(text="x"), 1, 10.0, 0.002, None,
             "root:o", None),
    HopEvent("finished", "c1", "t2", "plan", "left", Plan(text="x"), 1, 10.5, 0.001,
             "handler_error", "t1", 9.998),
]  # fmt: skip


def batch(events: list[HopEvent]) -> Batch:
    return Batch(
        "o",
        len(events),
        1.7e9,
        rows_of(events, started=False),
        Summary.of(events, frozenset({"plan", "left"})),
    )


@pytest.fixture(params=["prometheus", "jsonl", "redis_stream", "otlp"])
async def sink(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str
) -> AsyncIterator[Sink]:
    configs: dict[str, SinkSettings] = {
        "prometheus": PrometheusSinkConfig(listen="127.0.0.1:0"),
        "jsonl": JsonlSinkConfig(path=str(tmp_path / "m.jsonl")),
        "redis_stream": RedisStreamSinkConfig(),
        "otlp": OtlpSinkConfig(
            meter_provider=MeterProvider(
                metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False
            )
        ),
    }
    opened = open_sink(configs[request.param], SinkContext("o", redis_url, dict))
    yield opened


@pytest.mark.redis
async def test_a_sink_starts_writes_batches_and_closes(sink: Sink) -> None:
    assert isinstance(sink, Sink)
    assert isinstance(sink.aggregates, bool)
    await sink.start()
    try:
        assert sink.target and isinstance(sink.target, str)
        await sink.write(batch(EVENTS))
        await sink.write(batch([]))  # an empty batch is written without complaint
        await sink.write(batch(EVENTS))
    finally:
        await sink.aclose()


@pytest.mark.redis
async def test_a_sink_closes_when_it_never_started(sink: Sink) -> None:
    await sink.aclose()
