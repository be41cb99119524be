"""Run the web_service example: python examples/web_service/main.py

Serves the app (``app.py``) with uvicorn on a free port, sends it the requests below with
httpx, one at a time, printing each with its answer, then stops the server as Ctrl-C does.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import anyio
import httpx
import uvicorn
from app import app

ENVELOPE = """\
<message xmlns="https://xml-pipeline.org/ns/envelope/v1">
  <meta><from>shop</from><to>{to}</to><thread/></meta>
  <QuoteRequest xmlns=""><item>tea</item><quantity>2</quantity></QuoteRequest>
</message>"""
# entities that expand to a thousand characters: a DOCTYPE is refused before parsing anything
DOCTYPE = """\
<!DOCTYPE message [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>
""" + ENVELOPE.format(to="quoter").replace("<item>tea</item>", "<item>&b;&b;&b;</item>")

REQUESTS: list[tuple[str, str, Any]] = [
    ("POST", "/quote", {"item": "tea", "quantity": 3}),
    ("POST", "/quote", {"item": "tea", "quantity": "3"}),  # a number in a string
    ("POST", "/quote", {"item": "tea", "qty": 3}),  # a key the payload does not have
    ("POST", "/quote", '{"item": "tea", "quantity": 3'),  # not JSON: cut short
    ("POST", "/quote", {"item": "milk", "quantity": 1}),  # the organism answers NotQuoted
    ("POST", "/gateway", ENVELOPE.format(to="quoter")),
    ("POST", "/gateway", ENVELOPE.format(to="qoter")),  # no such listener
    ("POST", "/gateway", DOCTYPE),
    ("POST", "/slow", {"seconds": 0.1, "ticket": 1}),
    ("POST", "/slow", {"seconds": 5, "ticket": 2}),  # over the listener's timeout_seconds
]


def layout(envelope: str) -> str:
    """An envelope written one line per part, as the requests above are (for reading only)."""
    parts = envelope.replace("><meta>", ">\n  <meta>").replace("</meta>", "</meta>\n  ")
    return parts.replace("</message>", "\n</message>")


async def tour(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for method, path, body in REQUESTS:
            content = body if isinstance(body, str) else json.dumps(body)
            print(f"{method} {path} " + content.replace("\n", "\n    "), flush=True)
            response = await client.request(method, path, content=content)
            if response.headers["content-type"] == "application/xml":
                lines = layout(response.text).splitlines()
            else:
                lines = textwrap.wrap(response.text, 88, break_on_hyphens=False)
            print(f"  -> {response.status_code} " + "\n         ".join(lines), flush=True)
        counters = (await client.get("/stats")).json()
        print(
            "the organism counted: {conversations} conversations, {answered} answered, "
            "{failed} failed; {rejected} envelopes refused (the JSON that from_dict refused "
            "never reached it)".format(**counters)
        )


async def main() -> None:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve)
        while not server.started:  # the lifespan has run: the organism is up
            await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        await tour(f"http://127.0.0.1:{port}")
        server.should_exit = True  # what Ctrl-C does: finish what is in flight, then stop


if __name__ == "__main__":
    anyio.run(main)
