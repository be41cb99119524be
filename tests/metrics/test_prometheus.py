"""The Prometheus sink: a real server on a free port, read with a real client and parsed by
prometheus_client's own parser."""

from __future__ import annotations

import contextlib
import socket
import urllib.request
from dataclasses import fields

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.metrics.organisms import Plan, organism
from xml_pipeline import DeliveryError, MetricsConfig, Organism, SinkError
from xml_pipeline.metrics import PrometheusSinkConfig
from xml_pipeline.metrics.prometheus import PrometheusSink
from xml_pipeline.metrics.records import STATS_METRICS

pytestmark = pytest.mark.anyio


def prometheus(**options: object) -> MetricsConfig:
    sink = PrometheusSinkConfig(listen="127.0.0.1:0", **options)  # type: ignore[arg-type]
    return MetricsConfig(flush_interval_seconds=0.05, sinks=(sink,))


def url_of(org: Organism) -> str:
    assert org.metrics is not None
    return org.metrics.stats()["prometheus"].target


async def scrape(url: str) -> dict[str, float]:
    """Every sample of ``/metrics`` as ``name{label=value,...}`` -> value."""

    def get() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            return str(response.read().decode())

    text = await anyio.to_thread.run_sync(get)
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


async def test_metrics_parse_and_their_counters_equal_the_organisms_stats() -> None:
    org = organism(metrics=prometheus())
    async with org:
        async with anyio.create_task_group() as group:
            for text in ["a", "b", "fail", "c"]:
                group.start_soon(_request, org, text)
        await org.wait_idle()
        assert org.metrics is not None
        assert await org.metrics.flush()
        seen = await scrape(url_of(org))
        stats = org.stats
    assert {f.name for f in fields(stats)} == set(STATS_METRICS)
    for field, (name, _) in STATS_METRICS.items():
        assert seen[f"{name}_total{{organism=plan-org}}"] == getattr(stats, field), name
    assert stats.answered == 3 and stats.failed == 1
    assert seen["xml_pipeline_conversations_ended_total{organism=plan-org,outcome=answered}"] == 3
    key = (
        "xml_pipeline_handler_failures_total{listener=left,organism=plan-org,reason=handler_error}"
    )
    assert seen[key] == 1
    # every handler run is in the histogram; each payload delivered is received once
    hops = sum(
        v for k, v in seen.items() if k.startswith("xml_pipeline_handler_duration_seconds_count")
    )
    received = sum(
        v for k, v in seen.items() if k.startswith("xml_pipeline_messages_received_total")
    )
    assert hops == received == stats.hops
    assert seen["xml_pipeline_conversations_open{organism=plan-org}"] == 0
    assert seen["xml_pipeline_listener_concurrency_limit{listener=left,organism=plan-org}"] == 16
    assert (
        seen["xml_pipeline_metrics_records_dropped_total{organism=plan-org,sink=prometheus}"] == 0
    )


async def _request(org: Organism, text: str) -> None:
    with contextlib.suppress(DeliveryError):
        await org.request("plan", Plan(text=text), timeout=5)


async def test_label_values_from_listener_names_are_escaped() -> None:
    """A listener name may hold quotes and backslashes: the exposition escapes them and the
    parser reads the very name back."""
    from tests.metrics.organisms import Part, left, plan, right
    from xml_pipeline import Listener

    odd = 'le"ft\\side'
    org = Organism(
        [
            Listener("plan", Plan, plan, peers=(odd, "right")),
            Listener(odd, Part, left),
            Listener("right", Part, right),
        ],
        name="plan-org",
        metrics=prometheus(),
    )
    async with org:
        await org.send(odd, Part(text="x"))
        await org.wait_idle()
        assert org.metrics is not None
        await org.metrics.flush()
        seen = await scrape(url_of(org))
    assert seen[f"xml_pipeline_messages_received_total{{listener={odd},organism=plan-org}}"] == 1


async def test_two_organisms_in_one_process_keep_their_own_metrics() -> None:
    one, two = organism(metrics=prometheus()), organism(metrics=prometheus(), name="other")
    async with one, two:
        await one.request("plan", Plan(text="x"), timeout=5)
        for org in (one, two):
            assert org.metrics is not None
            await org.metrics.flush()
        first, second = await scrape(url_of(one)), await scrape(url_of(two))
    assert first["xml_pipeline_conversations_total{organism=plan-org}"] == 1
    assert second["xml_pipeline_conversations_total{organism=other}"] == 0
    assert not any("organism=plan-org" in key for key in second)


async def test_a_port_in_use_fails_the_start_naming_the_sink_and_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sink = PrometheusSinkConfig(listen=f"127.0.0.1:{port}")
        org = organism(metrics=MetricsConfig(sinks=(sink,)))
        with pytest.raises(SinkError) as info:
            async with org:
                pass
    message = str(info.value)
    assert f"metrics sink prometheus (http://127.0.0.1:{port}/metrics) cannot start" in message
    assert "Address already in use" in message and info.value.sink == "prometheus"


async def test_an_optional_sink_on_a_port_in_use_starts_once_the_port_is_free() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    sink = PrometheusSinkConfig(listen=f"127.0.0.1:{port}", required=False)
    org = organism(metrics=MetricsConfig(flush_interval_seconds=0.05, sinks=(sink,)))
    async with org:
        assert org.metrics is not None
        assert org.metrics.stats()["prometheus"].state == "starting"
        taken.close()
        await org.request("plan", Plan(text="x"), timeout=5)
        with anyio.fail_after(20):
            while org.metrics.stats()["prometheus"].state != "running":
                await anyio.sleep(0.05)
        await org.metrics.flush()
        seen = await scrape(f"http://127.0.0.1:{port}/metrics")
    assert seen["xml_pipeline_conversations_total{organism=plan-org}"] == 1


def test_the_sink_serves_from_a_registry_of_its_own() -> None:
    from prometheus_client import REGISTRY

    from xml_pipeline.metrics.sink import SinkContext

    sink = PrometheusSink(PrometheusSinkConfig(), SinkContext("o", "redis://", dict))
    assert sink.registry is not REGISTRY


async def test_circuit_state_and_recovery_counters_are_exposed() -> None:
    from tests.metrics.organisms import Part, left, plan, right
    from xml_pipeline import CircuitSettings, Listener

    org = Organism(
        [
            Listener("plan", Plan, plan, peers=("left", "right")),
            Listener("left", Part, left, circuit=CircuitSettings(failures=1, reset_seconds=60)),
            Listener("right", Part, right),
        ],
        name="plan-org",
        metrics=prometheus(),
    )
    async with org:
        for reason in ("handler_error", "circuit_open"):
            with pytest.raises(DeliveryError, match=reason):
                await org.request("left", Part(text="fail"), timeout=5)
        assert org.metrics is not None
        await org.metrics.flush()
        seen = await scrape(url_of(org))
    state = "xml_pipeline_listener_circuit_state{listener=left,organism=plan-org,state=open}"
    assert seen[state] == 1
    rejected = "xml_pipeline_listener_circuit_rejections_total{listener=left,organism=plan-org}"
    assert seen[rejected] == org.recovery_status()["left"].circuit_rejections == 1
