"""Counting at the source (`HopCounts`): the same `Summary` as counting the events, and the
organism uses it when every sink aggregates."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from tests.metrics.organisms import organism
from tests.metrics.test_prometheus import _request, scrape, url_of
from xml_pipeline import ConversationEvent, HopEvent, MetricsConfig
from xml_pipeline.metrics import JsonlSinkConfig, PrometheusSinkConfig
from xml_pipeline.metrics.records import Summary
from xml_pipeline.metrics.tally import HopCounts

LISTENERS = frozenset({"plan", "left", "right"})


def summary_fields(summary: Summary) -> dict[str, Any]:
    return {
        "received": dict(summary.received),
        "sent": dict(summary.sent),
        "failures": dict(summary.failures),
        "retries": dict(summary.retries),
        "durations": summary.durations,
        "ended": dict(summary.ended),
        "sample": summary.sample,
    }


def test_counts_at_the_source_sum_up_as_the_events_do() -> None:
    rng = random.Random(7)
    counts = HopCounts(capacity=100_000, batch_size=500, wake=asyncio.Event())
    events: list[Any] = []
    for i in range(2000):
        listener = rng.choice(sorted(LISTENERS))
        sender = rng.choice([*sorted(LISTENERS), "_external", "outsider"])
        attempt = rng.choice([1, 1, 1, 2, 3])
        duration = rng.random() / 100
        outcome = rng.choice([None, None, None, "handler_error", "timeout", "ended"])
        counts.hop(listener, sender, attempt, duration, outcome)
        events.append(HopEvent(
            "finished", "c", "t", sender, listener, None, attempt, 0.0, duration, outcome
        ))  # fmt: skip
        if i % 7 == 0:
            answered = HopEvent("answered", "c", "t", listener, "plan", None, 1, 0.0)
            ended = ConversationEvent("ended", "c", "plan", 0.0, rng.choice([None, "timeout"]))
            opened = ConversationEvent("opened", "c", "plan", 0.0)
            for event in (answered, ended, opened):
                counts.event(event)
                events.append(event)
    held, counted = counts.take(LISTENERS) or (0, Summary())
    assert held == len(events)
    assert summary_fields(counted) == summary_fields(Summary.of(events, LISTENERS))
    assert counts.take(LISTENERS) is None, "taken: counting starts again"


def test_counts_beyond_the_capacity_are_dropped_and_counted() -> None:
    wake = asyncio.Event()
    counts = HopCounts(capacity=3, batch_size=2, wake=wake)
    for _ in range(5):
        counts.hop("plan", "_external", 1, 0.001, None)
    assert wake.is_set(), "a batch's worth wakes the flush"
    assert (counts.held, counts.lost) == (3, 2)


@pytest.mark.anyio
async def test_prometheus_alone_counts_at_the_source_and_exposes_what_events_gave(
    tmp_path: Path,
) -> None:
    """The same work on an organism whose only sink aggregates (counted at the source, no
    hop event built) and on one that also keeps records (events): the same counters."""
    kept = (
        "xml_pipeline_messages_", "xml_pipeline_handler_failures",
        "xml_pipeline_conversations_ended", "xml_pipeline_handler_retries",
        "xml_pipeline_handler_duration_seconds_count",
    )  # fmt: skip
    seen = {}
    prometheus = PrometheusSinkConfig(listen="127.0.0.1:0")
    jsonl = JsonlSinkConfig(path=str(tmp_path / "metrics.jsonl"))
    for name, sinks in [("source", (prometheus,)), ("events", (prometheus, jsonl))]:
        config = MetricsConfig(flush_interval_seconds=0.05, sinks=sinks)
        org = organism(metrics=config)
        async with org:
            assert org.metrics is not None
            assert (org.metrics._counts is not None) == (name == "source")
            assert org.hooks.hop_events == (name == "events")
            for text in ["a", "b", "fail", "c"]:
                await _request(org, text)
            await org.wait_idle()
            assert await org.metrics.flush()
            scraped = await scrape(url_of(org))
        seen[name] = {key: value for key, value in scraped.items() if key.startswith(kept)}
    assert seen["source"] == seen["events"] and len(seen["source"]) > 6
