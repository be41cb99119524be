"""The record-keeping sinks (JSON Lines, a Redis stream), read back, and what fails to start."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.metrics.organisms import Plan, organism
from tests.redis_server import free_port
from xml_pipeline import MetricsConfig, Organism, SinkError
from xml_pipeline.metrics import JsonlSinkConfig, RedisStreamSinkConfig

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


def metrics(*sinks: object) -> MetricsConfig:
    return MetricsConfig(flush_interval_seconds=0.05, sinks=sinks)


async def test_jsonl_keeps_every_hop_conversation_and_sample(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    org = organism(metrics=metrics(JsonlSinkConfig(path=str(path))))
    async with org:
        conversation = await org.send("plan", Plan(text="x"))
        await org.wait_idle()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert org.metrics is not None
    assert len(records) == org.metrics.stats()["jsonl"].flushed
    hops = [r for r in records if r["type"] == "hop"]
    assert len(hops) == org.stats.hops == 5
    assert {h["conversation"] for h in hops} == {conversation}
    first = next(h for h in hops if h["sender"] == "_external")
    assert first["listener"] == "plan" and first["payload"] == "Plan" and first["outcome"] is None
    assert first["duration_seconds"] >= 0 and first["process"]
    ends = [r for r in records if r["type"] == "conversation" and r["event"] == "ended"]
    assert [(e["conversation"], e["outcome"]) for e in ends] == [(conversation, None)]
    samples = [r for r in records if r["type"] == "sample"]
    assert samples[-1]["stats"]["hops"] == 5
    assert samples[-1]["listeners"]["left"] == {"busy": 0, "backlog": 0, "limit": 16}


async def test_a_jsonl_file_that_cannot_be_written_fails_the_start(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder" / "metrics.jsonl"
    org = organism(metrics=metrics(JsonlSinkConfig(path=str(missing))))
    with pytest.raises(SinkError, match=f"metrics sink jsonl \\({missing}\\) cannot start"):
        async with org:
            pass


@pytest.mark.redis
async def test_a_redis_stream_keeps_the_records_and_is_trimmed(redis_url: str) -> None:
    sink = RedisStreamSinkConfig(url=redis_url, stream="t:metrics", maxlen=1000)
    org = organism(metrics=metrics(sink))
    async with org:
        for i in range(3):
            await org.request("plan", Plan(text=str(i)), timeout=5)
    client = redis.Redis.from_url(redis_url)
    try:
        entries = client.xrange("t:metrics")
    finally:
        client.close()
    assert org.metrics is not None
    assert len(entries) == org.metrics.stats()["redis_stream"].flushed
    records = [json.loads(fields[b"json"]) for _, fields in entries]
    assert sum(1 for r in records if r["type"] == "hop") == org.stats.hops
    assert {fields[b"organism"] for _, fields in entries} == {b"plan-org"}


@pytest.mark.redis
async def test_a_redis_stream_sink_without_a_url_uses_the_backends(redis_url: str) -> None:
    org = organism(
        backend={"type": "redis", "redis_url": redis_url, "redis_prefix": "t:"},
        metrics=metrics(RedisStreamSinkConfig()),
    )
    async with org:
        await org.request("plan", Plan(text="x"), timeout=5)
        assert org.metrics is not None
        assert org.metrics.stats()["redis_stream"].target.startswith(redis_url)


async def test_redis_down_fails_the_start_naming_the_server_and_stream() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    org = organism(metrics=metrics(RedisStreamSinkConfig(url=url)))
    with pytest.raises(SinkError, match=f"{url} stream xml_pipeline:metrics. cannot start"):
        async with org:
            pass


def _hello_with(tmp_path: Path, sinks: str) -> Path:
    """The hello organism in ``tmp_path`` with these sinks; its module has a name of its own,
    so that other tests' ``import handlers`` still get hello's."""
    shutil.copy(ROOT / "organisms" / "hello" / "handlers.py", tmp_path / "tracehello.py")
    text = (ROOT / "organisms" / "hello" / "organism.yaml").read_text()
    text = text.replace("handlers.", "tracehello.")
    file = tmp_path / "organism.yaml"
    file.write_text(f"{text}\nmetrics:\n  flush_interval_seconds: 0.05\n  sinks:\n{sinks}")
    return file


def trace_command(file: Path, conversation: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xml_pipeline", "trace", str(file), conversation],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def test_organism_trace_rebuilds_a_stopped_process_conversation(tmp_path: Path) -> None:
    file = _hello_with(tmp_path, "    - type: jsonl\n      path: hops.jsonl\n")
    org = Organism.from_yaml(file)
    async with org:
        greeting = org.listeners[0].payload_class
        conversation = await org.send("greeter", greeting(name="Ada"))
        await org.wait_idle()
    assert (tmp_path / "hops.jsonl").exists()  # relative to the organism file's folder
    done = trace_command(file, conversation)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"conversation {conversation} at greeter: answered in ")
    assert lines[1].startswith("greeter <Greeting> +")
    assert lines[2].startswith("└── shouter <Shout> +")
    unknown = trace_command(file, "nope")
    assert unknown.returncode == 1 and "no records of conversation 'nope'" in unknown.stderr


@pytest.mark.redis
async def test_organism_trace_reads_a_redis_stream(tmp_path: Path, redis_url: str) -> None:
    file = _hello_with(tmp_path, f"    - type: redis_stream\n      url: {redis_url}\n")
    org = Organism.from_yaml(file)
    async with org:
        conversation = await org.send("greeter", org.listeners[0].payload_class(name="Bo"))
        await org.wait_idle()
    done = trace_command(file, conversation)
    assert done.returncode == 0, done.stderr
    assert "└── shouter <Shout>" in done.stdout


def test_organism_trace_without_a_record_keeping_sink_says_where_traces_live(
    tmp_path: Path,
) -> None:
    file = _hello_with(tmp_path, "    - type: prometheus\n      listen: 127.0.0.1:0\n")
    done = trace_command(file, "abc")
    assert done.returncode == 1
    assert "no jsonl or redis_stream sink" in done.stderr and "Organism.trace()" in done.stderr
    assert "organism trace abc --control URL" in done.stderr
