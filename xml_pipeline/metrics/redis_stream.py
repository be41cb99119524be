"""The Redis stream sink: every record an entry of a stream (``XADD`` with ``MAXLEN ~``).

Processes sharing one Redis write to one stream; a reader aggregates them, and
``organism trace`` rebuilds a finished conversation's tree from its hop records. An entry has
the fields ``type``, ``organism`` and ``json`` (the record, as the JSON Lines sink writes it).
A batch is one pipeline: one round trip.
"""

from __future__ import annotations

import json
import re
from typing import Any

import redis.asyncio as aioredis

from xml_pipeline.metrics.records import Batch
from xml_pipeline.metrics.settings import RedisStreamSinkConfig
from xml_pipeline.metrics.sink import SinkContext

__all__ = ["RedisStreamSink", "read_stream"]

_SOCKET_SECONDS = 5.0


def _shown(url: str) -> str:
    """The URL without its password."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


class RedisStreamSink:
    """Appends records to a Redis stream."""

    aggregates = False

    def __init__(self, config: RedisStreamSinkConfig, context: SinkContext) -> None:
        self._url = config.url or context.redis_url
        self._stream = config.stream
        self._maxlen = config.maxlen
        self._client: Any = None

    @property
    def target(self) -> str:
        """The server (password hidden) and the stream."""
        return f"{_shown(self._url)} stream {self._stream}"

    async def start(self) -> None:
        """Connect and check the server answers.

        Raises:
            redis.exceptions.ConnectionError: the server cannot be reached.
        """
        client = aioredis.Redis.from_url(
            self._url,
            socket_timeout=_SOCKET_SECONDS,
            socket_connect_timeout=_SOCKET_SECONDS,
        )
        try:
            await client.ping()
        except BaseException:
            await client.aclose()
            raise
        self._client = client

    async def write(self, batch: Batch) -> None:
        """Add the batch's records to the stream in one pipeline.

        Raises:
            redis.exceptions.RedisError: the server failed or cannot be reached.
        """
        if self._client is None:
            await self.start()
        pipe = self._client.pipeline(transaction=False)
        for row in batch.json_rows():
            fields = {"type": row["type"], "organism": row["organism"], "json": json.dumps(row)}
            pipe.xadd(self._stream, fields, maxlen=self._maxlen, approximate=True)
        await pipe.execute()

    async def aclose(self) -> None:
        """Close the connection pool."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


async def read_stream(url: str, stream: str, conversation: str) -> list[dict[str, Any]]:
    """The records of ``conversation`` in a stream written by this sink, oldest first.

    Raises:
        redis.exceptions.RedisError: the server failed or cannot be reached.
    """
    client: Any = aioredis.Redis.from_url(url, socket_timeout=_SOCKET_SECONDS)
    found: list[dict[str, Any]] = []
    try:
        start = "-"
        while True:
            entries = await client.xrange(stream, min=start, max="+", count=10_000)
            for _, fields in entries:
                record = json.loads(fields[b"json"])
                if record.get("conversation") == conversation:
                    found.append(record)
            if len(entries) < 10_000:
                return found
            start = "(" + entries[-1][0].decode()
    finally:
        await client.aclose()
