"""The control plane's HTTP routes: a Starlette app over an `OrganismSource` and an `EventHub`.

With a token (its variable set when the organism started), every ``/api/*`` and ``/metrics``
request needs ``Authorization: Bearer <token>`` (compared
with `hmac.compare_digest`); without it the answer is 401 with a fixed body and nothing is
read. The console's static files (``/``, ``/console/*``: package files, no data) need no token.
Errors are JSON: ``{"error": "...", "id": "..."}``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xml_pipeline.control.events import EventHub, stream
from xml_pipeline.control.ids import Ambiguous, resolve_conversation, resolve_run
from xml_pipeline.control.source import Finished, Invalid, Missing, OrganismSource, Stopped

__all__ = ["UNAUTHORIZED", "build_app", "console_folder"]

UNAUTHORIZED = b'{"error": "unauthorized"}'
_GUARDED = ("/api/", "/metrics")
_END_SECONDS = 0.1  # how long ending an event stream may wait for its client


def console_folder() -> Path:
    """The folder of the web console's files (shipped in the package)."""
    return Path(str(resources.files("xml_pipeline.control") / "console"))


class _BearerAuth:
    """401 for a guarded path without the right bearer token, before any route runs."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = None if token is None else f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(_GUARDED):
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            # compare_digest takes as long for any wrong value of one length; a missing
            # header is compared too, so missing and wrong look alike
            if self.expected is not None and not hmac.compare_digest(given, self.expected):
                await send({
                    "type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(UNAUTHORIZED)).encode()),
                                (b"www-authenticate", b"Bearer")],
                })  # fmt: skip
                await send({"type": "http.response.body", "body": UNAUTHORIZED})
                return
        await self.app(scope, receive, send)


def _error(status: int, message: str, id: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if id is not None:
        body["id"] = id
    return JSONResponse(body, status_code=status)


Endpoint = Callable[[Request], Awaitable[Response]]


def _answers(endpoint: Endpoint) -> Endpoint:
    """The control plane's errors as HTTP answers."""

    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Missing as exc:
            return _error(404, exc.message, exc.id)
        except Finished as exc:
            return _error(409, exc.message, exc.id)
        except Ambiguous as exc:
            return JSONResponse(
                {"error": exc.message, "id": exc.id, "candidates": exc.candidates},
                status_code=400,
            )
        except Invalid as exc:
            return _error(400, str(exc))
        except Stopped as exc:
            return _error(503, f"the organism is not running: {exc}")

    return wrapped


class _EventStream:
    """``GET /api/events``: text/event-stream of ``hop`` and ``runs`` events (raw ASGI, so the
    hub can end a stream that stopped reading by cancelling its scope)."""

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub = self.hub
        first = await hub.runs_event()
        client = hub.add()
        try:
            await send({
                "type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream"),
                            (b"cache-control", b"no-store"), (b"x-accel-buffering", b"no")],
            })  # fmt: skip

            async def body(data: bytes) -> None:
                await send({"type": "http.response.body", "body": data, "more_body": True})

            await body(b": xml-pipeline control plane events\n\n" + first)
            with client.scope:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(_until_disconnect, receive, client.scope)
                    await stream(hub, client, body)
            # ended by the hub (stopping, or the client stopped reading): end the response
            # when the client still takes it; a stalled one is cut off (the server closes it)
            with anyio.move_on_after(_END_SECONDS):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            hub.remove(client)


async def _until_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


def build_app(source: OrganismSource, hub: EventHub, token: str | None) -> ASGIApp:
    """The control plane's ASGI app (``token`` None: no auth, loopback only)."""

    async def list_runs(request: Request) -> Response:
        q = request.query_params
        runs = await source.run_dicts(q.get("listener") or None, q.get("status") or None)
        return JSONResponse({"runs": runs})

    async def get_run(request: Request) -> Response:
        return JSONResponse(await source.run(await resolve_run(source, request.path_params["id"])))

    async def cancel_run(request: Request) -> Response:
        run_id = await resolve_run(source, request.path_params["id"])
        await source.cancel_run(run_id)
        return JSONResponse({"cancelled": run_id}, status_code=202)

    async def conversations(request: Request) -> Response:
        return JSONResponse({"conversations": await source.conversations()})

    async def cancel_conversation(request: Request) -> Response:
        conversation = await resolve_conversation(source, request.path_params["id"])
        await source.cancel_conversation(conversation)
        return JSONResponse({"cancelled": conversation}, status_code=202)

    async def workers(request: Request) -> Response:
        return JSONResponse({"workers": source.workers()})

    async def kill_worker(request: Request) -> Response:
        given = request.path_params["pid"]
        if not given.isdigit():
            return _error(404, f"no worker process {given!r}: a pid is a number", given)
        await source.kill_worker(int(given))
        return JSONResponse({"killed": int(given)}, status_code=202)

    async def stats(request: Request) -> Response:
        listeners = hub.listener_counts()
        for name, recovery in source.recovery().items():
            listeners.setdefault(name, {"hops": 0, "failed": 0}).update(recovery)
        return JSONResponse({
            "organism": source.stats(),
            "listeners": listeners,
            "edges": hub.edge_counts(),
            "events": hub.stats(),
            "metrics": source.metrics_stats(),
        })  # fmt: skip

    async def graph(request: Request) -> Response:
        return JSONResponse(source.graph())

    async def trace(request: Request) -> Response:
        conversation = await resolve_conversation(source, request.path_params["id"])
        return JSONResponse(await source.trace(conversation))

    async def metrics(request: Request) -> Response:
        found = source.exposition()
        if found is None:
            return _error(
                404,
                "no Prometheus exposition here: add a sink '- type: prometheus' without "
                "listen: to the organism's metrics: section",
            )
        body, content_type = found
        return Response(body, media_type=content_type)

    async def index(request: Request) -> Response:
        return FileResponse(console_folder() / "index.html")

    routes = [
        Route("/", index),
        Route("/api/runs", _answers(list_runs)),
        Route("/api/runs/{id}", _answers(get_run)),
        Route("/api/runs/{id}/cancel", _answers(cancel_run), methods=["POST"]),
        Route("/api/conversations", _answers(conversations)),
        Route("/api/conversations/{id}/cancel", _answers(cancel_conversation), methods=["POST"]),
        Route("/api/workers", _answers(workers)),
        Route("/api/workers/{pid}/kill", _answers(kill_worker), methods=["POST"]),
        Route("/api/stats", _answers(stats)),
        Route("/api/graph", _answers(graph)),
        Route("/api/trace/{id}", _answers(trace)),
        Route("/api/events", _EventStream(hub)),
        Route("/metrics", _answers(metrics)),
        Mount("/console", StaticFiles(directory=console_folder()), name="console"),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, f"no such endpoint: {request.method} {request.url.path}")

    app = Starlette(routes=routes, exception_handlers={404: not_found})
    return _BearerAuth(app, token)
