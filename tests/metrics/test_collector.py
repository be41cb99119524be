"""The collector never blocks the pump, loses nothing that fit, and says what it lost."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from tests.metrics.organisms import BlockedSink, ListSink, Plan, organism
from xml_pipeline import MetricsConfig, Organism, SinkError, SinkStats
from xml_pipeline.metrics.lane import BACKOFF

pytestmark = pytest.mark.anyio


def config(*sinks: object, **options: object) -> MetricsConfig:
    settings: dict[str, object] = {"flush_interval_seconds": 0.05, "batch_size": 20}
    settings.update(options)
    return MetricsConfig(sinks=tuple(sinks), **settings)  # type: ignore[arg-type]


def balanced(stats: SinkStats) -> bool:
    return stats.submitted == stats.flushed + stats.dropped + stats.dead_lettered + stats.depth


async def converse(org: Organism, n: int) -> None:
    async with anyio.create_task_group() as group:
        for i in range(n):
            group.start_soon(org.request, "plan", Plan(text=f"t{i}"))


async def test_without_a_metrics_or_tracing_section_nothing_observes_the_hops() -> None:
    org = organism()
    async with org:
        await converse(org, 3)
        assert org.metrics is None
        assert not org.hooks.active  # the pump builds no event at all


async def test_a_sink_that_fails_for_a_while_then_recovers_loses_nothing_that_fit() -> None:
    sink = ListSink(fail_for=1.0)
    org = organism(metrics=config(sink))
    async with org:
        await converse(org, 40)
        await org.wait_idle()
        assert org.metrics is not None
        assert await org.metrics.flush(timeout=30)
    stats = org.metrics.stats()["list"]
    assert stats.retried >= 3  # 0.1 + 0.2 + 0.4 s of backoff fit in the second it failed
    assert (stats.dropped, stats.dead_lettered) == (0, 0)
    assert stats.flushed == stats.submitted == len(sink.rows) and balanced(stats)
    kinds = sink.kinds()
    assert kinds["finished"] == org.stats.hops  # every hop, none twice
    assert kinds["ended"] == kinds["opened"] == org.stats.conversations == 40
    assert stats.state == "stopped" and stats.last_error == "ConnectionError: the store is down"


async def test_a_sink_that_never_recovers_dead_letters_its_batches_with_the_error(
    tmp_path: Path,
) -> None:
    dead = tmp_path / "dead.jsonl"
    sink = ListSink(fail_always=True, retry_seconds=0.3)
    good = ListSink("good")
    org = organism(metrics=config(sink, good, dead_letter=str(dead)))
    async with org:
        await converse(org, 10)
        await org.wait_idle()
        assert org.metrics is not None
        assert await org.metrics.flush(timeout=30)
    stats = org.metrics.stats()
    failing = stats["list"]
    assert failing.flushed == 0 and failing.dead_lettered > 0 and balanced(failing)
    assert failing.retried >= 1
    letters = [json.loads(line) for line in dead.read_text().splitlines()]
    assert {(d["sink"], d["error"]) for d in letters} == {
        ("list", "ConnectionError: the store is down")
    }
    assert sum(len(d["records"]) for d in letters) == failing.dead_lettered
    hops = [r for d in letters for r in d["records"] if r["type"] == "hop"]
    assert {h["listener"] for h in hops} == {"plan", "left", "right"}
    # the other sink went on, unaffected
    assert stats["good"].flushed == stats["good"].submitted == failing.submitted


async def test_a_blocked_sink_holds_up_neither_the_pump_nor_the_other_sinks() -> None:
    blocked, good = BlockedSink(), ListSink("good")
    metrics = config(blocked, good, buffer=1000, batch_size=10, shutdown_timeout_seconds=0.3)
    org = organism(metrics=metrics)
    with anyio.fail_after(60):  # a bound for a hang, not a speed assertion
        async with org:
            for _ in range(10):  # 30 conversations (about 240 records) at a time
                await converse(org, 30)
                await org.wait_idle()
            assert org.metrics is not None
            await org.metrics.flush(timeout=5)
            stats = org.metrics.stats()
            lost = org.metrics.dropped  # records the shared buffer had no room for: none, usually
            assert org.stats.answered == 300
            assert blocked.writes == 1  # its first write never returned
            stuck = stats["blocked"]
            assert stuck.dropped > lost and 0 < stuck.depth <= 1000 and balanced(stuck)
            # the other sink dropped nothing of its own and wrote all it got (a sample may
            # have come in since the flush)
            good_stats = stats["good"]
            assert good_stats.dropped == lost and good_stats.depth <= 1 and balanced(good_stats)
        after = org.metrics.stats()
    assert after["blocked"].state == "stopped" and after["blocked"].depth == 0
    assert after["blocked"].flushed == 0 and balanced(after["blocked"])
    assert len(good.rows) == after["good"].flushed and balanced(after["good"])


async def test_a_full_buffer_drops_new_records_and_counts_them() -> None:
    sink = ListSink()
    metrics = config(sink, buffer=5, batch_size=1000, flush_interval_seconds=60)
    org = organism(metrics=metrics)
    async with org:
        await converse(org, 5)
        await org.wait_idle()
        assert org.metrics is not None
        dropped = org.metrics.dropped
        assert dropped > 0 and org.metrics.depth == 5
        await org.metrics.flush()
        stats = org.metrics.stats()["list"]
        assert stats.dropped == org.metrics.dropped >= dropped and balanced(stats)
        assert len(sink.rows) == stats.flushed


async def test_stopping_flushes_what_is_buffered() -> None:
    sink = ListSink()
    org = organism(metrics=config(sink, flush_interval_seconds=60, batch_size=10_000))
    async with org:
        await converse(org, 5)
    assert org.metrics is not None
    stats = org.metrics.stats()["list"]
    assert stats.flushed == stats.submitted > 0 and stats.depth == 0
    assert sink.kinds()["sample"] == 1  # the last sample, taken as it stopped
    sample = next(row for row in sink.rows if row[0] == "sample")
    assert sample.stats == org.stats


async def test_a_sink_that_cannot_start_fails_the_start_naming_it() -> None:
    org = organism(metrics=config(ListSink("store", start_failures=1)))
    named = r"metrics sink store \(memory:store\) cannot start"
    with pytest.raises(SinkError, match=named) as info:
        async with org:
            pass
    assert info.value.reason == "sink_error" and info.value.sink == "store"
    assert "required: false" in str(info.value)


async def test_an_optional_sink_that_cannot_start_is_reported_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = ListSink("store", start_failures=2, required=False)
    org = organism(metrics=config(sink))
    async with org:
        assert org.metrics is not None
        assert org.metrics.stats()["store"].state == "starting"
        await converse(org, 3)
        with anyio.fail_after(10):
            while not sink.started:
                await anyio.sleep(BACKOFF[0])
        assert await org.metrics.flush(timeout=10)
        stats = org.metrics.stats()["store"]
    assert stats.flushed == stats.submitted and stats.dropped == 0
    assert "the organism starts without it and retries" in caplog.text


async def test_two_sinks_of_a_type_are_numbered() -> None:
    org = organism(metrics=config(ListSink("list"), ListSink("list")))
    async with org:
        assert org.metrics is not None
        assert sorted(org.metrics.stats()) == ["list#1", "list#2"]
