"""The parent side of ``cpu_bound`` listeners: how the pump runs a handler in the pool.

`PoolInvoker` sends the handler and payload classes as import paths, the payload as XML and the
metadata as plain strings to `xml_pipeline._runtime.worker.run_handler`, and binds what comes
back: each output validated with its class's XSD (every payload a listener receives conforms to
its schema, whatever process made it), a failure turned into a `DeliveryError`. See the worker
module for why no outside-input caps apply to these internal hops.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from xml_pipeline._errors import DeliveryError, Reason, SchemaViolation, XmlInputError, raised_at
from xml_pipeline._handlers import HandlerMetadata, HandlerResponse, Listener
from xml_pipeline._imports import import_path
from xml_pipeline._runtime.pool import ProcessPool, WorkerFailure
from xml_pipeline._runtime.pool_worker import OUTPUT_DROPPED, OUTPUT_PROGRESS
from xml_pipeline._runtime.runs import RunOutput
from xml_pipeline._runtime.worker import Raised, Refusal, resolve, run_handler
from xml_pipeline._wire.parsing import parse_internal
from xml_pipeline._wire.payloads import from_element, is_payload, to_xml

__all__ = ["BoundOutputs", "Invoker", "PoolInvoker"]

log = logging.getLogger("xml_pipeline.workers")


@dataclass(frozen=True, slots=True)
class BoundOutputs:
    """What an invoker returns for a handler that ran elsewhere: each output with the XML its
    payload was bound from after XSD validation, so the pump need not check or write it again.
    """

    items: list[tuple[HandlerResponse, bytes]]


# (listener, payload, metadata, timeout, stored history) -> BoundOutputs
Invoker = Callable[[Listener, object, HandlerMetadata, float, list[bytes]], Awaitable[BoundOutputs]]


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
    ) -> BoundOutputs:
        plain = {
            "thread_id": meta.thread_id,
            "from_id": meta.from_id,
            "own_name": meta.own_name,
            "attempt": meta.attempt,
            "history": history,
        }
        hop = meta._hop  # the pump's run record: told the worker's pid and what it prints
        result = await self.pool.run(
            run_handler,
            import_path(listener.handler),
            import_path(type(payload)),
            to_xml(payload),
            plain,
            timeout=timeout,
            label=f"listener {listener.name!r} on thread {meta.thread_id}",
            tag=hop,
            on_start=None if hop is None else partial(_started, hop),
            on_output=None if hop is None else partial(_said, hop),
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


def _started(hop: Any, pid: int) -> None:
    hop.worker_pid = pid


def _said(hop: Any, kind: int, text: str) -> None:
    """What a worker sent while the run ran: a line, its progress, or lines it lost."""
    if kind == OUTPUT_PROGRESS:
        hop.progress = text
        return
    if kind != OUTPUT_DROPPED:
        hop.log(text)
        return
    output = hop.output
    if output is None:
        output = hop.output = RunOutput()
    output.dropped += int(text) if text.isdigit() else 1


def _refused(listener: str, thread: str, result: Refusal | Raised) -> DeliveryError:
    """The error for a handler that raised, or whose result the worker refused."""
    if len(result) == 2:
        reason, message = result
        return DeliveryError(message, reason=reason, listener=listener, thread=thread)
    _, name, text, code, trace, types, after = result
    log.debug("handler of %r raised in a worker process:\n%s", listener, trace)
    short = name.rpartition(".")[2]  # the class's own name, as for an inline handler
    said = f"{listener!r} raised {short}: {text}" if text else f"{listener!r} raised {short}"
    error = DeliveryError(
        said + raised_at(trace),
        reason=Reason.HANDLER_ERROR,
        listener=listener,
        thread=thread,
    )
    error.__cause__ = WorkerFailure(name, text, code, trace, types, after)
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
