"""Running ``cpu_bound`` listeners' handlers in the organism's process pool.

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
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

from lxml import etree

from xml_pipeline._errors import DeliveryError, Reason, SchemaViolation, XmlInputError, raised_at
from xml_pipeline._handlers import HandlerMetadata, HandlerResponse, HistoryEntry, Listener
from xml_pipeline._imports import import_path, resolve_path
from xml_pipeline._runtime.pool import ProcessPool, WorkerFailure, _failed
from xml_pipeline._runtime.pump import BoundOutputs
from xml_pipeline._wire.history import decode_entry
from xml_pipeline._wire.parsing import _syntax
from xml_pipeline._wire.payloads import from_element, is_payload, to_xml

__all__ = ["PoolInvoker", "extend_sys_path", "import_path", "parse_internal", "run_handler"]

log = logging.getLogger("xml_pipeline._runtime.worker")

# (target listener or None for an answer, payload class path, payload XML)
Output = tuple[str | None, str, bytes]
# why the handler's result is refused: (reason, message)
Refusal = tuple[str, str]
# what the handler raised: ("raised", type name, message, reason, traceback), see pool._failed
Raised = tuple[str, str, str, str | None, str]

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


_local = threading.local()


def parse_internal(data: bytes) -> etree._Element:
    """Parse XML this organism wrote itself with `to_xml` (never XML from outside).

    No caps for outside input apply (an inline handler's objects have none either), and the
    parser allows what libxml2 calls huge documents (text nodes over 10 MB, nesting past 256);
    it still resolves no entities and loads nothing.

    Raises:
        XmlInputError: ``malformed``, the bytes are not XML.
    """
    parser: etree.XMLParser | None = getattr(_local, "parser", None)
    if parser is None:  # lxml parsers may not be shared between threads
        parser = _local.parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            huge_tree=True,
            recover=False,
            collect_ids=False,
        )
    try:
        return etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise _syntax(exc) from None


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

    metadata = HandlerMetadata(meta["thread_id"], meta["from_id"], meta["own_name"], snapshot)
    try:
        return _outputs(meta["own_name"], _call(handler, message, metadata))
    except BaseException as exc:  # SystemExit and GeneratorExit too: they are the handler's
        return _failed("raised", exc)


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
            raise _refused(listener.name, meta.thread_id, result)
        outputs = []
        for to, path, xml in result:
            answer = _bind_answer(listener.name, path, xml)
            if to is None:
                outputs.append((HandlerResponse.respond(answer), xml))
            else:
                outputs.append((HandlerResponse(answer, to=to), xml))
        return BoundOutputs(outputs)


def _refused(listener: str, thread: str, result: Refusal | Raised) -> DeliveryError:
    """The error for a handler that raised, or whose result the worker refused."""
    if len(result) == 2:
        reason, message = result
        return DeliveryError(message, reason=reason, listener=listener, thread=thread)
    _, name, text, code, trace = result
    log.debug("handler of %r raised in a worker process:\n%s", listener, trace)
    short = name.rpartition(".")[2]  # the class's own name, as for an inline handler
    said = f"{listener!r} raised {short}: {text}" if text else f"{listener!r} raised {short}"
    error = DeliveryError(
        said + raised_at(trace),
        reason=Reason.HANDLER_ERROR,
        listener=listener,
        thread=thread,
    )
    error.__cause__ = WorkerFailure(name, text, code, trace)
    return error


def _bind_answer(listener: str, path: str, xml: bytes) -> object:
    """Bind an output the worker wrote, checked with its class's XSD: every payload a
    listener receives conforms to its schema, whatever process it was made in."""
    cls = resolve(path)
    if not (isinstance(cls, type) and is_payload(cls)):
        raise DeliveryError(
            f"{listener!r} answered with {path}, which is not a @payload class",
            reason=Reason.INVALID_RESPONSE,
            listener=listener,
        )
    try:
        return from_element(cls, parse_internal(xml))
    except XmlInputError as exc:  # SchemaViolation included
        reason = exc.reason if type(exc) is SchemaViolation else Reason.INVALID_RESPONSE
        raise DeliveryError(
            f"{listener!r} sent {exc.message}", reason=reason, listener=listener
        ) from None
