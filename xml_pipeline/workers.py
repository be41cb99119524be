"""Running ``cpu_bound`` listeners' handlers in the organism's process pool.

Only bytes and names cross the process boundary: the handler and payload classes travel as
import paths, the payload as XML bytes, the metadata as plain strings with a read-only
snapshot of the conversation history. The answer comes back as ``(target, class path, XML)``
triples and is parsed and validated with the class's XSD like any other bytes from outside.

In the worker, each handler is imported once and async handlers share one event loop per
process (no new loop per task).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

from xml_pipeline.errors import DeliveryError, SchemaViolation
from xml_pipeline.handlers import HandlerMetadata, HandlerResponse, HistoryEntry, Listener
from xml_pipeline.history import decode_entry
from xml_pipeline.imports import import_path, resolve_path
from xml_pipeline.parsing import parse_guarded
from xml_pipeline.payloads import from_element, from_xml, is_payload, to_xml
from xml_pipeline.pool import ProcessPool
from xml_pipeline.pump import BoundOutputs

__all__ = ["PoolInvoker", "extend_sys_path", "import_path", "run_handler"]

# (target listener or None for an answer, payload class path, payload XML)
Output = tuple[str | None, str, bytes]

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
    comes from an organism folder: see `xml_pipeline.imports`)."""
    found = _imported.get(path)
    if found is None:
        found = _imported[path] = resolve_path(path)
    return found


def run_handler(
    handler_path: str, payload_path: str, payload_xml: bytes, meta: dict[str, Any]
) -> list[Output] | tuple[str, str]:
    """Worker side: bind the payload, run the handler, serialize what it returned.

    Returns:
        the outputs, or ``(reason, message)`` saying why the handler's result is refused.
    """
    global _loop
    handler: Callable[..., Any] = resolve(handler_path)
    # the parent wrote these bytes with to_xml from a checked object: valid by construction
    message = from_element(resolve(payload_path), parse_guarded(payload_xml), validate=False)
    stored: list[bytes] = meta["history"]

    async def snapshot() -> list[HistoryEntry]:
        return [decode_entry(entry) for entry in stored]  # decoded only when asked for

    metadata = HandlerMetadata(meta["thread_id"], meta["from_id"], meta["own_name"], snapshot)
    result = handler(message, metadata)
    if asyncio.iscoroutine(result):
        if _loop is None:
            _loop = asyncio.new_event_loop()
        result = _loop.run_until_complete(result)
    if result is None:
        return []
    items = result if isinstance(result, list | tuple) else [result]
    outputs: list[Output] = []
    for item in items:
        if type(item) is not HandlerResponse or not is_payload(item.payload):
            return (
                "invalid_response",
                f"{meta['own_name']!r} returned {type(item).__name__}; return None, a "
                "HandlerResponse of a @payload object, or a list of them",
            )
        try:
            outputs.append((item.to, import_path(type(item.payload)), to_xml(item.payload)))
        except SchemaViolation as exc:
            return "schema_violation", f"{meta['own_name']!r} sent {exc.message}"
    return outputs


class PoolInvoker:
    """The pump's way into the pool: ``await invoker(listener, payload, metadata)``."""

    def __init__(self, pool: ProcessPool) -> None:
        self.pool = pool

    async def __call__(
        self,
        listener: Listener,
        payload: object,
        meta: HandlerMetadata,
        timeout: float,
        history: list[bytes],
    ) -> object:
        plain = {
            "thread_id": meta.thread_id,
            "from_id": meta.from_id,
            "own_name": meta.own_name,
            "history": history,
        }
        result = await self.pool.run(
            run_handler,
            import_path(listener.handler),
            import_path(type(payload)),
            to_xml(payload),
            plain,
            timeout=timeout,
            label=f"listener {listener.name!r} on thread {meta.thread_id}",
        )
        if isinstance(result, tuple):
            reason, message = result
            raise DeliveryError(message, reason=reason, listener=listener.name)
        return BoundOutputs(
            [
                (
                    HandlerResponse(from_xml(resolve(path), xml), to=to)
                    if to is not None
                    else HandlerResponse.respond(from_xml(resolve(path), xml)),
                    xml,
                )
                for to, path, xml in result
            ]
        )
