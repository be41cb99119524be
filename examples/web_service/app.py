"""The web_service example's app: an organism behind a Starlette app, served by uvicorn.

From the repository root: ``uvicorn app:app --app-dir examples/web_service``.

Routes:
    POST /quote: a JSON `QuoteRequest`, answered with a JSON `Quote` (``from_dict``, ``to_dict``).
    GET /quote/schema: the JSON Schema of what POST /quote takes (``json_schema``).
    POST /slow: a JSON `Work`, answered with a JSON `Done` when it is done.
    POST /gateway: a raw v1 envelope, answered with the raw answer envelope.
    GET /stats: the organism's counters.

Every failure is answered with a JSON object ``{"reason": ..., "message": ...}`` and an HTTP
status chosen by its reason (`status_of`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypedDict

from handlers import NotQuoted, QuoteRequest, Work  # this folder's module, as the organism's
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from xml_pipeline import (
    DeliveryError,
    Organism,
    Reason,
    XmlInputError,
    XmlPipelineError,
    from_dict,
    json_schema,
    to_dict,
)

HERE = Path(__file__).resolve().parent
REQUEST_TIMEOUT = 10.0  # seconds; bounds every request, so uvicorn's graceful shutdown too
RETRY_AFTER = "1"  # seconds, in the Retry-After header of a 503

# uvicorn's own logger: these lines go where uvicorn's go, in its format
log = logging.getLogger("uvicorn.error")

# Input refused before a conversation started: the client must change the request.
REFUSED: dict[str, int] = {
    Reason.MALFORMED: 400,  # not XML, not JSON, or not an object
    Reason.DOCTYPE: 400,  # a DOCTYPE (entities, billion laughs...): never parsed
    Reason.TOO_DEEP: 400,
    Reason.TOO_MANY_ELEMENTS: 400,
    Reason.NOT_AN_ENVELOPE: 400,
    Reason.NO_ROUTE: 400,  # an envelope for no listener, or with a payload its listener refuses
    Reason.FORGED_SENDER: 403,  # an envelope from outside claiming to come from inside
    Reason.TOO_LARGE: 413,
    Reason.SCHEMA_VIOLATION: 422,  # well-formed, but not what the payload class takes
}
# The organism is busy, stopping or slow: the same request may succeed later.
LATER: dict[str, int] = {
    Reason.OVERLOADED: 503,
    Reason.SHUTDOWN: 503,
    Reason.CIRCUIT_OPEN: 503,
    Reason.BACKEND_UNREACHABLE: 503,
    Reason.TIMEOUT: 504,
}


class State(TypedDict):
    """What the lifespan gives each request, as ``request.state``."""

    org: Organism


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[State]:
    """Run the organism while the app serves.

    uvicorn leaves this block when it stops, once the requests in flight are answered; leaving
    the organism then drains whatever is still open (what a ``send`` would have started) for
    up to its ``drain_timeout_seconds``.
    """
    async with Organism.from_yaml(HERE / "organism.yaml") as org:
        yield {"org": org}
    stats = org.stats
    log.info(
        "organism stopped: %d conversations (%d answered, %d failed, %d still open), "
        "%d refused for their input, %d refused as overloaded",
        stats.conversations,
        stats.answered,
        stats.failed,
        stats.conversations - stats.answered - stats.failed,
        stats.rejected,
        stats.overloaded,
    )


# -- routes ---------------------------------------------------------------------------------


async def quote(request: Request) -> Response:
    """JSON in, JSON out: the bridge checks the JSON as the pump checks XML."""
    org: Organism = request.state.org
    question = from_dict(QuoteRequest, await read_json(request, org))
    answer = await org.request("quoter", question, timeout=REQUEST_TIMEOUT)
    if isinstance(answer, NotQuoted):  # an answer, not a failure: the organism said no
        return JSONResponse({"reason": "not_quoted", "message": answer.why}, status_code=422)
    return JSONResponse(to_dict(answer))


async def quote_schema(request: Request) -> Response:
    return JSONResponse(json_schema(QuoteRequest))


async def slow(request: Request) -> Response:
    org: Organism = request.state.org
    work = from_dict(Work, await read_json(request, org))
    return JSONResponse(to_dict(await org.request("slow", work, timeout=REQUEST_TIMEOUT)))


async def gateway(request: Request) -> Response:
    """A raw envelope in, the raw answer envelope out: read by the same guarded parser, with
    the same checks and reason codes, as ``org.inject``."""
    org: Organism = request.state.org
    body = await read_body(request, org.limits.max_bytes)
    answer = await org.request_envelope(body, timeout=REQUEST_TIMEOUT)
    return Response(answer, media_type="application/xml")


async def stats(request: Request) -> Response:
    org: Organism = request.state.org
    return JSONResponse(asdict(org.stats))


# -- reading requests -----------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused (``too_large``) once it passes ``limit`` bytes, without
    reading the rest.

    Raises:
        XmlInputError: the body is larger than ``limit``.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise XmlInputError(
            f"the body is {declared} bytes; the limit is {limit}", reason="too_large"
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise XmlInputError(f"the body is over the limit of {limit} bytes", reason="too_large")
    return bytes(body)


async def read_json(request: Request, org: Organism) -> Any:
    """The request's body as JSON, capped as XML from outside is (``max_message_bytes``);
    nesting and size within it are capped by ``from_dict``.

    Raises:
        XmlInputError: the body is too large (``too_large``), not JSON (``malformed``), or
            nested too deep for the JSON reader (``too_deep``).
    """
    body = await read_body(request, org.limits.max_bytes)
    try:
        return json.loads(body)
    except RecursionError:  # the JSON reader recurses per level of nesting
        raise XmlInputError("the JSON body is nested too deep", reason="too_deep") from None
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        raise XmlInputError(f"the body is not JSON: {exc}", reason="malformed") from None


# -- errors ---------------------------------------------------------------------------------


def status_of(exc: XmlPipelineError) -> int:
    """The HTTP status for an error: 4xx when the request is at fault, 503 or 504 when the
    same request may succeed later, 500 when the service failed."""
    if isinstance(exc, XmlInputError):  # the request's XML or JSON, refused as it came in
        return REFUSED.get(exc.reason, 400)
    if isinstance(exc, DeliveryError):
        if exc.thread is None and exc.reason in REFUSED:  # refused before any conversation
            return REFUSED[exc.reason]
        return LATER.get(exc.reason, 500)  # a no_route inside the organism is a bug: 500
    return 500


async def error_response(request: Request, exc: Exception) -> Response:
    """Answer an error as JSON: ``{"reason": ..., "message": ...}``.

    A 4xx, 503 or 504 says what was wrong, as the library words it. A 500 says only that the
    service failed: the details (handler names, files, lines) go to the log, not to clients.
    """
    assert isinstance(exc, XmlPipelineError)  # the only class this handler is registered for
    status = status_of(exc)
    message = exc.message
    if status == 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
        message = f"the service could not answer ({exc.reason}); its log has the details"
    headers = {"Retry-After": RETRY_AFTER} if status == 503 else None
    body = {"reason": str(exc.reason), "message": message}
    return JSONResponse(body, status_code=status, headers=headers)


app = Starlette(
    routes=[
        Route("/quote", quote, methods=["POST"]),
        Route("/quote/schema", quote_schema, methods=["GET"]),
        Route("/slow", slow, methods=["POST"]),
        Route("/gateway", gateway, methods=["POST"]),
        Route("/stats", stats, methods=["GET"]),
    ],
    exception_handlers={XmlPipelineError: error_response},
    lifespan=lifespan,
)
