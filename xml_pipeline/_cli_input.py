"""Standard input, a line at a time, for ``organism run``: a read can be cancelled cleanly.

A pipe, a terminal or a socket is read through the event loop (``connect_read_pipe``): when
``organism run`` stops on a signal, the read in progress is cancelled and what the process
had not yet taken stays unread (nothing is half-taken). A regular file (``< file``) is read in
a worker thread, where a read never waits for long.

A line longer than the ``max_bytes`` it is read with (plus room for a ``@listener`` prefix)
is cut there and the rest of it skipped: what is kept is still longer than any message may be,
so the parser refuses it as ``too_large`` and the line is reported with its number.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
from collections.abc import AsyncIterator
from typing import BinaryIO

import anyio.to_thread

__all__ = ["LineReader", "stdin_lines"]

_PREFIX_ROOM = 1024  # bytes allowed above max_bytes for '@listener ' before a line is cut


class LineReader:
    """The lines of standard input, without their line ends and surrounding blanks."""

    def __init__(self, stream: asyncio.StreamReader | None, limit: int) -> None:
        self._stream = stream
        self._limit = limit

    async def next(self) -> str | None:
        """The next line; ``None`` at the end of input."""
        if self._stream is None:
            data: bytes = await anyio.to_thread.run_sync(_read_stdin_line, self._limit)
        else:
            data = await self._read(self._stream)
        if not data:
            return None
        return data.decode("utf-8", "replace").strip()

    async def _read(self, stream: asyncio.StreamReader) -> bytes:
        try:
            return await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:  # the last line has no line end
            return exc.partial
        except asyncio.LimitOverrunError as exc:
            head = await stream.readexactly(exc.consumed)
            while True:  # skip the rest of the line
                try:
                    await stream.readuntil(b"\n")
                    return head
                except asyncio.IncompleteReadError:
                    return head
                except asyncio.LimitOverrunError as more:
                    await stream.readexactly(more.consumed)


def _read_stdin_line(limit: int) -> bytes:
    source: BinaryIO = sys.stdin.buffer
    line = source.readline(limit)
    if line and not line.endswith(b"\n"):
        while (rest := source.readline(limit)) and not rest.endswith(b"\n"):
            pass  # skip the rest of an overlong line
    return line or b""


@contextlib.asynccontextmanager
async def stdin_lines(max_bytes: int) -> AsyncIterator[LineReader]:
    """Standard input as a `LineReader`, for the block."""
    limit = max_bytes + _PREFIX_ROOM
    loop = asyncio.get_running_loop()
    fd = _pipe_fd()
    if fd is None:
        yield LineReader(None, limit)
        return
    stream = asyncio.StreamReader(limit=limit, loop=loop)
    pipe = os.fdopen(os.dup(fd), "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stream, loop=loop), pipe
        )
    except Exception:  # a device epoll refuses (/dev/null): read it in a thread
        pipe.close()
        yield LineReader(None, limit)
        return
    try:
        yield LineReader(stream, limit)
    finally:
        transport.close()
        with contextlib.suppress(OSError):
            os.set_blocking(fd, True)  # shared with whoever started us (a shell's terminal)


def _pipe_fd() -> int | None:
    """Standard input's descriptor when it is a pipe, socket or terminal."""
    try:
        fd = sys.stdin.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, ValueError, OSError):
        return None
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode):
        return fd
    return None
