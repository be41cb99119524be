"""The metrics: and tracing: sections, read from organism.yaml and given in code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from xml_pipeline import ConfigError, MetricsConfig, Organism, TracingConfig, UsageError
from xml_pipeline._config import parse_config
from xml_pipeline.metrics import JsonlSinkConfig, PrometheusSinkConfig, RedisStreamSinkConfig

ROOT = Path(__file__).resolve().parents[2]
HEAD = """organism:
  name: m
listeners:
  - name: a
    payload_class: handlers.A
    handler: handlers.a
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(HEAD + text, file="/o/organism.yaml")
    return [str(p) for p in info.value.problems]


def test_the_issues_example_reads_into_frozen_config() -> None:
    config = parse_config(
        HEAD
        + """metrics:
  flush_interval_seconds: 5
  batch_size: 500
  buffer: 100000
  sinks:
    - type: prometheus
      listen: 127.0.0.1:9464
    - type: jsonl
      path: metrics.jsonl
    - type: redis_stream
    - type: otlp
tracing: true
""",
        file="/o/organism.yaml",
    )
    metrics = config.metrics
    assert metrics is not None and config.tracing == TracingConfig()
    assert (metrics.flush_interval_seconds, metrics.batch_size, metrics.buffer) == (
        5.0,
        500,
        100000,
    )
    kinds = [type(s).__name__ for s in metrics.sinks]
    assert kinds == [
        "PrometheusSinkConfig", "JsonlSinkConfig", "RedisStreamSinkConfig", "OtlpSinkConfig",
    ]  # fmt: skip
    assert metrics.sinks[0] == PrometheusSinkConfig(listen="127.0.0.1:9464")
    assert metrics.sinks[1] == JsonlSinkConfig(path="/o/metrics.jsonl")  # the file's folder
    assert metrics.sinks[2] == RedisStreamSinkConfig()


def test_without_the_sections_metrics_and_tracing_are_off() -> None:
    config = parse_config(HEAD, file="/o/organism.yaml")
    assert config.metrics is None and config.tracing is None
    assert parse_config(HEAD + "tracing: false\n", file="/o/o.yaml").tracing is None
    tracing = parse_config(HEAD + "tracing:\n  conversations: 5\n", file="/o/o.yaml").tracing
    assert tracing == TracingConfig(conversations=5)


def test_bad_sinks_are_reported_at_their_key_path_and_line() -> None:
    found = problems(
        """metrics:
  batch_size: 0
  sinks:
    - type: prometeus
    - type: jsonl
    - type: prometheus
      listen: localhost
      path: x.jsonl
    - listen: 1.2.3.4:5
    - type: redis_stream
      maxlen: -1
    - jsonl
tracing: yes please
"""
    )
    assert found == [
        "/o/organism.yaml:8: metrics.batch_size: must be at least 1, found 0",
        "/o/organism.yaml:10: metrics.sinks[0].type: must be a sink type, found 'prometeus'; "
        "did you mean 'prometheus'?",
        "/o/organism.yaml:11: metrics.sinks[1].path: required key is missing; add 'path: ...'",
        "/o/organism.yaml:13: metrics.sinks[2].listen: must be host:port (like 127.0.0.1:9464; "
        "port 0 picks a free one), found 'localhost'",
        "/o/organism.yaml:14: metrics.sinks[2].path: unknown key for a prometheus sink; 'path' "
        "is a setting of jsonl sinks",
        "/o/organism.yaml:15: metrics.sinks[3].type: required key is missing; add 'type: ...' "
        "(prometheus, jsonl, redis_stream, otlp)",
        "/o/organism.yaml:17: metrics.sinks[4].maxlen: must be at least 1, found -1",
        "/o/organism.yaml:18: metrics.sinks[5]: expected a mapping (type: ...), found text 'jsonl'",
        "/o/organism.yaml:19: tracing: expected true, false or a mapping (conversations: 1000), "
        "found text 'yes please'",
    ]


def test_organism_validate_reports_a_bad_sink_with_file_key_path_and_line(tmp_path: Path) -> None:
    hello = (ROOT / "organisms" / "hello" / "organism.yaml").read_text()
    file = tmp_path / "organism.yaml"
    file.write_text(hello + "metrics:\n  sinks:\n    - type: jsonl\n      paht: m.jsonl\n")
    done = subprocess.run(
        [sys.executable, "-m", "xml_pipeline", "validate", str(file)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    line = len(hello.splitlines()) + 4
    assert f"{file}:{line}: metrics.sinks[0].paht: unknown key; did you mean 'path'?" in done.stderr
    assert "metrics.sinks[0].path: required key is missing" in done.stderr


def test_code_takes_the_same_sections_with_the_same_words() -> None:
    from tests.metrics.organisms import organism

    org = organism(metrics={"batch_size": 10, "sinks": [{"type": "jsonl", "path": "m.jsonl"}]})
    assert org._metrics_config == MetricsConfig(
        batch_size=10, sinks=(JsonlSinkConfig(path="m.jsonl"),)
    )
    with pytest.raises(UsageError, match=r"metrics= override: metrics.sinks\[0\].type: must be"):
        organism(metrics={"sinks": [{"type": "statsd"}]})
    with pytest.raises(UsageError, match="MetricsConfig: batch_size must be at least 1, found 0"):
        MetricsConfig(batch_size=0)
    with pytest.raises(UsageError, match="sinks takes sink configs"):
        MetricsConfig(sinks=("prometheus",))
    assert isinstance(organism(tracing=True)._tracing, TracingConfig)
    assert organism(tracing=False)._tracing is None
    overridden = Organism.from_yaml(ROOT / "organisms" / "hello" / "organism.yaml", tracing=True)
    assert overridden._tracing == TracingConfig()
