"""Traces of conversations a stopped process ran, read back from what its sinks stored.

Hop records (``type: hop``) written by the ``jsonl`` and ``redis_stream`` sinks carry each
hop's thread, calling thread, sender, listener, payload tag, attempt, duration and outcome:
enough for `build_tree`. Only conversations whose records reached a sink are there (a
Prometheus or OTel sink keeps counts, not hops).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio

from xml_pipeline._errors import NotFoundError
from xml_pipeline.metrics.redis_stream import read_stream
from xml_pipeline.metrics.settings import JsonlSinkConfig, MetricsConfig, RedisStreamSinkConfig
from xml_pipeline.metrics.trace import Trace, build_tree, rows_from_records

__all__ = ["read_trace"]


async def read_trace(metrics: MetricsConfig | None, conversation: str, *, redis_url: str) -> Trace:
    """The trace of ``conversation`` from the records of the ``jsonl`` and ``redis_stream``
    sinks ``metrics`` names (``redis_url``: the backend's, for a stream sink without one).

    Raises:
        NotFoundError: no sink keeps records, or none holds this conversation.
        OSError, redis.exceptions.RedisError: a sink's file or server cannot be read.
    """
    sinks = [] if metrics is None else list(metrics.sinks)
    keeping = [s for s in sinks if isinstance(s, JsonlSinkConfig | RedisStreamSinkConfig)]
    if not keeping:
        raise NotFoundError(
            "the organism file has no jsonl or redis_stream sink, so no trace outlives its "
            "process: add one under metrics: sinks: (hop records are written there), or read "
            f"the trace from the running organism: organism trace {conversation} --control URL "
            "(its control plane), or Organism.trace() in code"
        )
    records: list[dict[str, Any]] = []
    searched = []
    for sink in keeping:
        if isinstance(sink, JsonlSinkConfig):
            searched.append(sink.path)
            records += await anyio.to_thread.run_sync(_read_file, Path(sink.path), conversation)
        else:
            url = sink.url or redis_url
            searched.append(f"{url} stream {sink.stream}")
            records += await read_stream(url, sink.stream, conversation)
        if any(r.get("type") == "hop" for r in records):
            break
    rows = rows_from_records(records)
    if not rows:
        raise NotFoundError(
            f"no records of conversation {conversation!r} in {', '.join(searched)}; check the "
            "id (what send and inject return; each record names its conversation), and that "
            "the process stopped cleanly (it flushes then)"
        )
    return build_tree(sorted(rows, key=_row_time), conversation=conversation)


def _row_time(row: tuple[Any, ...]) -> float:
    return float(row[3] if row[0] in ("opened", "ended") else row[7])


def _read_file(path: Path, conversation: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as file:
        for line in file:
            if conversation in line:
                record = json.loads(line)
                if record.get("conversation") == conversation:
                    found.append(record)
    return found
