"""The JSON Lines sink: every record a line of JSON, appended to a file.

Writing happens in a worker thread (`anyio.to_thread`), so a slow disk stalls the sink's own
lane, never the event loop; a write that never returns is abandoned when the organism stops.
Hop records carry what `organism trace` needs to rebuild a finished conversation's tree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

import anyio

from xml_pipeline.metrics.records import Batch
from xml_pipeline.metrics.settings import JsonlSinkConfig

__all__ = ["JsonlSink"]


class JsonlSink:
    """Appends records to ``config.path``."""

    aggregates = False

    def __init__(self, config: JsonlSinkConfig) -> None:
        self._path = Path(config.path)
        self._file: IO[str] | None = None

    @property
    def target(self) -> str:
        """The file's path."""
        return str(self._path)

    async def start(self) -> None:
        """Open the file for appending (created if missing).

        Raises:
            OSError: its folder does not exist or the file cannot be written.
        """
        self._file = await anyio.to_thread.run_sync(_open, self._path)

    async def write(self, batch: Batch) -> None:
        """Append the batch's records, one line each, and flush.

        Raises:
            OSError: the write failed (disk full, file gone read-only...).
        """
        if self._file is None:
            self._file = await anyio.to_thread.run_sync(_open, self._path)
        rows = batch.json_rows()
        await anyio.to_thread.run_sync(_write, self._file, rows, abandon_on_cancel=True)

    async def aclose(self) -> None:
        """Close the file."""
        file, self._file = self._file, None
        if file is not None:
            file.close()


def _open(path: Path) -> IO[str]:
    return path.open("a", encoding="utf-8")


def _write(file: IO[str], rows: list[dict[str, object]]) -> None:
    file.write("".join(json.dumps(row, default=str) + "\n" for row in rows))
    file.flush()
