"""The ``organism`` command: run, validate and inspect organisms. Thin: it calls the public API.

organism run FILE                                 messages from stdin, one per line
organism run FILE --to LISTENER --send 'XML'      one message; its answer on stdout
organism validate FILE                            every problem at once; exit 0 when clean
organism schema FILE [LISTENER]                   XSD, example document, prompt-ready description
organism schema FILE [LISTENER] --json            JSON Schema and example object, as one JSON
organism graph FILE [--format mermaid|dot|svg]    the organism's listeners and peers, drawn
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from xml_pipeline._config import load_config
from xml_pipeline._errors import (
    ConfigError,
    DeliveryError,
    Reason,
    UsageError,
    XmlPipelineError,
)
from xml_pipeline._graph import OrganismGraph, render_svg
from xml_pipeline._loader import validate_organism
from xml_pipeline._organism import Organism
from xml_pipeline._wire.envelope import Envelope
from xml_pipeline._wire.json_schema import json_schema
from xml_pipeline._wire.payloads import from_element, from_xml, payload_spec, to_xml

__all__ = ["main"]

log = logging.getLogger("xml_pipeline.cli")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="organism", description=__doc__.split("\n")[0])
    # accepted before or after the subcommand, in any case; the subcommand's copy leaves the
    # value alone unless given there (SUPPRESS), so `organism --log-level debug run` works too
    log_level: dict[str, Any] = {
        "type": str.upper,
        "choices": _LOG_LEVELS,
        "metavar": "{debug,info,warning,error}",
        "help": "what to log on stderr (default info)",
    }
    parser.add_argument("--log-level", default="INFO", **log_level)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS, **log_level)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="boot an organism and send it messages")
    run.add_argument("file", help="path of organism.yaml")
    run.add_argument("--to", help="target listener for --send")
    run.add_argument("--send", metavar="PAYLOAD_XML", help="one payload to send to --to")
    run.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for each answer (30)"
    )
    validate = sub.add_parser(
        "validate", parents=[common], help="check an organism file and what it names"
    )
    validate.add_argument("file")
    schema = sub.add_parser(
        "schema",
        parents=[common],
        help="print the XSD, an example and the description of listeners' payloads",
    )
    schema.add_argument("file")
    schema.add_argument("listener", nargs="?")
    schema.add_argument(
        "--json",
        action="store_true",
        help="print the JSON Schema and an example JSON object instead (one JSON document: "
        "listener name to description, schema and example)",
    )
    _add_graph(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``organism`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "validate":
            return _validate(args.file)
        if args.command == "schema":
            return _schema(args.file, args.listener, as_json=args.json)
        if args.command == "graph":
            return _graph(args.file, args.format, args.output)
        if (args.to is None) != (args.send is None):
            print("error: --to and --send go together", file=sys.stderr)
            return EXIT_CONFIG
        org = Organism.from_yaml(args.file)
        return _run_async(_run(org, args.to, args.send, args.timeout))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except XmlPipelineError as exc:  # e.g. the backend is unreachable, the pool cannot start
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _run_async(coro: Any) -> int:
    async def runner() -> int:
        return int(await coro)

    try:
        import uvloop  # noqa: F401

        options = {"use_uvloop": True}
    except ImportError:
        options = {}
    return int(anyio.run(runner, backend="asyncio", backend_options=options))


def _validate(file: str) -> int:
    config, resolved = validate_organism(file)
    for r in resolved:
        payload_spec(r.payload_class).schema  # noqa: B018 - compiling is the check
    names = ", ".join(r.name for r in resolved)
    print(f"{config.file}: ok ({len(resolved)} listeners: {names})")
    return EXIT_OK


def _schema(file: str, listener: str | None, *, as_json: bool) -> int:
    config, resolved = validate_organism(file)
    chosen = [r for r in resolved if listener is None or r.name == listener]
    if not chosen:
        print(f"error: no listener {listener!r} in {config.file}", file=sys.stderr)
        return EXIT_CONFIG
    if as_json:
        documents = {}
        for r in chosen:
            schema = json_schema(r.payload_class)
            example = schema["examples"][0]
            documents[r.name] = {"description": r.description, "schema": schema, "example": example}
        print(json.dumps(documents, indent=2, ensure_ascii=False))
        return EXIT_OK
    for r in chosen:
        spec = payload_spec(r.payload_class)
        print(f"<!-- listener {r.name}: {r.description} -->")
        print(spec.xsd)
        print(f"<!-- example {spec.tag} -->")
        print(spec.example().decode())
        print(spec.describe())
        print()
    return EXIT_OK


# -- organism graph ----------------------------------------------------------------------------

_GRAPH_FORMATS = ("mermaid", "dot", "svg")
_GRAPH_SUFFIXES = {".mmd": "mermaid", ".mermaid": "mermaid", ".dot": "dot", ".gv": "dot"}


def _add_graph(sub: Any, common: argparse.ArgumentParser) -> None:
    graph = sub.add_parser(
        "graph",
        parents=[common],
        help="draw the organism: listeners, peers as arrows, backend (Mermaid, DOT or SVG)",
        description="Draw an organism from its file alone (its handlers are not imported).",
    )
    graph.add_argument("file", help="path of organism.yaml")
    graph.add_argument(
        "--format",
        choices=_GRAPH_FORMATS,
        help="mermaid (default), dot, or svg (needs Graphviz's dot); default: from -o's "
        "suffix (.mmd .dot .gv .svg), else mermaid",
    )
    graph.add_argument("-o", "--output", metavar="OUT", help="write to this file, not stdout")


def _graph(file: str, fmt: str | None, output: str | None) -> int:
    suffix = Path(output).suffix.lower() if output else ""
    chosen = fmt or ("svg" if suffix == ".svg" else _GRAPH_SUFFIXES.get(suffix, "mermaid"))
    graph = OrganismGraph.from_config(load_config(file))
    if chosen == "mermaid":
        text = graph.mermaid()
    elif chosen == "dot":
        text = graph.dot()
    else:
        try:
            text = render_svg(graph.dot())
        except UsageError as exc:
            print(f"error: {exc.message}: --format mermaid or --format dot", file=sys.stderr)
            return EXIT_FAILED
    if output is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"error: cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


async def _run(org: Organism, to: str | None, send: str | None, timeout: float) -> int:
    async with org:
        log.info("organism %r running with %d listeners", org.name, len(org.listeners))
        if to is not None and send is not None:
            return await _answer(org, to, send, timeout, where="--send")
        statuses: list[int] = []
        # no more lines in flight than the organism admits: reading waits instead of failing
        limiter = anyio.Semaphore(org.ingress_limit)
        async with anyio.create_task_group() as group:
            lineno = 0
            async for line in anyio.wrap_file(sys.stdin):
                lineno += 1
                text = line.strip()
                if text:
                    await limiter.acquire()
                    group.start_soon(_line, org, text, timeout, lineno, statuses, limiter)
            log.info("end of input: draining")
        failures = sum(1 for status in statuses if status != EXIT_OK)
        log.info("done: %d answered, %d failed", len(statuses) - failures, failures)
        return EXIT_FAILED if failures else EXIT_OK


async def _line(
    org: Organism,
    text: str,
    timeout: float,
    lineno: int,
    statuses: list[int],
    limiter: anyio.Semaphore,
) -> None:
    where = f"stdin line {lineno}"
    try:
        if text.startswith("@"):
            to, _, xml = text[1:].partition(" ")
            statuses.append(await _answer(org, to, xml, timeout, where=where))
        else:
            statuses.append(await _answer(org, None, text, timeout, where=where))
    finally:
        limiter.release()


async def _answer(org: Organism, to: str | None, xml: str, timeout: float, where: str) -> int:
    """Send one message, print its answer (stdout) or the error (stderr); returns exit status."""
    limits = org.limits
    payload: object
    try:
        if to is None:
            env = Envelope.from_bytes(xml, limits)
            to = env.to
            payload = from_element(_listener_class(org, to), env.payload)
        else:
            payload = from_xml(_listener_class(org, to), xml, limits=limits)
        answer = await org.request(to, payload, timeout=timeout)
    except XmlPipelineError as exc:
        hint = ""
        if to is None and exc.reason in (Reason.MALFORMED, Reason.NOT_AN_ENVELOPE):
            hint = " (a line is a v1 envelope, or '@listener <payload-xml>')"
        print(f"error ({where}): {exc}{hint}", file=sys.stderr)
        return EXIT_FAILED
    print(to_xml(answer).decode(), flush=True)
    return EXIT_OK


def _listener_class(org: Organism, name: str) -> type:
    for listener in org.listeners:
        if listener.name == name:
            return listener.payload_class
    names = ", ".join(sorted(listener.name for listener in org.listeners))
    raise DeliveryError(f"no listener named {name!r}; listeners: {names}", reason="no_route")
