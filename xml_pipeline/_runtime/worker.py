"""The worker side of ``cpu_bound`` listeners: what runs in a process of the organism's pool.

Only bytes, names and strings cross the process boundary: the handler and payload classes
travel as import paths, the payload as XML bytes, the metadata as plain strings with a
read-only snapshot of the conversation history. The answer comes back as ``(target, class
path, XML)`` triples, validated in the parent with the class's XSD; an exception the handler
raised comes back as strings (type, message, reason, traceback), never as a pickled exception.

Both ways the XML was written by `to_xml` from an object that passed its checks, in this
organism's own processes: it is internal, like an object handed from one inline handler to the
next, so the caps for XML from outside (`ParseLimits`, ``max_message_bytes``) do not apply to
it. What a ``cpu_bound`` listener can receive or answer is exactly what an inline one can.

In the worker, each handler is imported once and async handlers share one event loop per
process (no new loop per task).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

from xml_pipeline._errors import SchemaViolation
from xml_pipeline._handlers import HandlerMetadata, HandlerResponse
from xml_pipeline._imports import import_path, resolve_path
from xml_pipeline._runtime.pool_worker import OUTPUT_LINE, OUTPUT_PROGRESS, emit, failure_data
from xml_pipeline._wire.history import HistoryEntry, decode_entry
from xml_pipeline._wire.parsing import parse_internal
from xml_pipeline._wire.payloads import from_element, is_payload, to_xml

__all__ = ["Output", "Raised", "Refusal", "extend_sys_path", "resolve", "run_handler"]

# (target listener or None for an answer, payload class path, payload XML)
Output = tuple[str | None, str, bytes]
# why the handler's result is refused: (reason, message)
Refusal = tuple[str, str]
# what the handler raised: ("raised", type name, message, reason, traceback): failure_data
Raised = tuple[str, str, str, str | None, str, tuple[str, ...], float | None]

_imported: dict[str, Any] = {}  # per process: import paths already resolved
_loop: asyncio.AbstractEventLoop | None = None  # per worker process: runs async handlers


def extend_sys_path(paths: tuple[str, ...]) -> None:
    """Worker initializer: see the organism's import path (its folder was added after the
    fork server started, so a worker would not find the organism's modules otherwise)."""
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)


def resolve(path: str) -> Any:
    """The object named by an `import_path`, imported once per process (by its file when it
    comes from an organism folder: see `xml_pipeline._imports`)."""
    found = _imported.get(path)
    if found is None:
        found = _imported[path] = resolve_path(path)
    return found


def run_handler(
    handler_path: str, payload_path: str, payload_xml: bytes, meta: dict[str, Any]
) -> list[Output] | Refusal | Raised:
    """Worker side: bind the payload, run the handler, serialize what it returned.

    Returns:
        the outputs; ``(reason, message)`` saying why the handler's result is refused; or,
        when the handler raised (any ``BaseException``), that exception as plain data.
    """
    handler: Callable[..., Any] = resolve(handler_path)
    # the parent wrote these bytes with to_xml from a checked object: valid by construction
    message = from_element(resolve(payload_path), parse_internal(payload_xml), validate=False)
    stored: list[bytes] = meta["history"]

    async def snapshot() -> list[HistoryEntry]:
        return [decode_entry(entry) for entry in stored]  # decoded only when asked for

    metadata = HandlerMetadata(
        meta["thread_id"], meta["from_id"], meta["own_name"], snapshot, meta.get("attempt", 1)
    )
    metadata._hop = _WorkerRun(meta.get("attempt", 1))  # meta.progress/log reach the parent
    try:
        return _outputs(meta["own_name"], _call(handler, message, metadata))
    except BaseException as exc:  # SystemExit and GeneratorExit too: they are the handler's
        return failure_data("raised", exc)


class _WorkerRun:
    """What ``meta.progress``/``meta.log`` write to in a worker: sent to the parent's run."""

    __slots__ = ("attempt",)

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt

    def log(self, line: str) -> None:
        emit(OUTPUT_LINE, line)

    @property
    def progress(self) -> str:
        return ""

    @progress.setter
    def progress(self, text: str) -> None:
        emit(OUTPUT_PROGRESS, text)


def _call(handler: Callable[..., Any], message: object, metadata: HandlerMetadata) -> object:
    global _loop
    result = handler(message, metadata)
    if asyncio.iscoroutine(result):
        if _loop is None:
            _loop = asyncio.new_event_loop()
        result = _loop.run_until_complete(result)
    return result


def _outputs(own_name: str, result: object) -> list[Output] | Refusal:
    if result is None:
        return []
    items = result if isinstance(result, list | tuple) else [result]
    outputs: list[Output] = []
    for item in items:
        if type(item) is not HandlerResponse or not is_payload(item.payload):
            return (
                "invalid_response",
                f"{own_name!r} returned {type(item).__name__}; return None, a "
                "HandlerResponse of a @payload object, or a list of them",
            )
        try:
            outputs.append((item.to, import_path(type(item.payload)), to_xml(item.payload)))
        except SchemaViolation as exc:
            return "schema_violation", f"{own_name!r} sent {exc.message}"
    return outputs
