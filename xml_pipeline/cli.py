"""The ``organism`` command: run, validate and inspect organisms. Thin: it calls the public API
(its ``--help`` text is written for users, in `_parser`).

organism run FILE                                 envelopes from stdin, one per line
organism run FILE --file PATH                     envelopes from a file, over several lines
organism run FILE --to LISTENER --send 'XML'      one message; its answer on stdout
organism validate FILE                            every problem at once; exit 0 when clean
organism schema FILE [LISTENER]                   XSD, example document, prompt-ready description
organism schema FILE [LISTENER] --json            JSON Schema and example object, as one JSON
organism graph FILE [--format mermaid|dot|svg]    the organism's listeners and peers, drawn
organism dlq list|show|replay|purge FILE ...      the dead-letter queue (see xml_pipeline._cli_dlq)
organism trace FILE CONVERSATION                  a conversation's hop tree, from stored records
organism trace CONVERSATION --control URL         the same, from a running organism
organism ps|top|logs|kill|cancel|stats ...        a running organism, through its control plane
                                                  (see xml_pipeline._cli_control)

SIGTERM or SIGINT stops ``organism run`` gracefully (see xml_pipeline._cli_run): it reads no more
input, lets what is in flight finish for up to ``drain_timeout_seconds``, keeps the rest as dead
letters (reason ``shutdown``) and says how many lines it read, so nothing it took is lost.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

import anyio
from redis.exceptions import RedisError

from xml_pipeline import _cli_control, _cli_run
from xml_pipeline._cli_dlq import add_dlq_parser, dlq_command
from xml_pipeline._cli_run import EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, RunOptions
from xml_pipeline._config import load_config
from xml_pipeline._errors import ConfigError, NotFoundError, UsageError, XmlPipelineError
from xml_pipeline._graph import OrganismGraph, render_svg
from xml_pipeline._loader import cpu_bound_call_warnings, validate_organism
from xml_pipeline._organism import Organism
from xml_pipeline._settings import ANSWER_TIMEOUT_SECONDS
from xml_pipeline._wire.json_schema import json_schema
from xml_pipeline._wire.payloads import payload_spec
from xml_pipeline.control.settings import ControlConfig, parse_listen

__all__ = ["main"]

log = logging.getLogger("xml_pipeline.cli")

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

_RUN_HELP = """\
Boot an organism and answer envelopes. Without --to/--send it reads v1 envelopes from stdin,
one per line (or '@listener <payload-xml>'), or from --file PATH, where an envelope may span
several lines. Envelopes are answered concurrently, at most the organism's ingress_limit at once.

stdout  one line per answer, as it comes:  line N: <message ...>...</message>
        N is the input line its envelope started on; a newline inside is written &#10;
stderr  line N: failed [reason] message    for every envelope that got no answer;
        logs, hop trees (--trace), and a summary: N answered, M failed (reason count, ...)

End of input waits for the pending answers (each within --timeout). A first SIGINT (Ctrl-C)
or SIGTERM stops reading and stops the organism: what is in flight gets up to the organism's
drain_timeout_seconds to finish, the rest fails with reason shutdown and is kept as a dead
letter (organism dlq list FILE); every line read is accounted for in the summary
(stopped by SIGTERM after reading N lines: ...). A second signal gives up on the pending
answers (reason cancelled).
Exit status: 0 every envelope answered, 1 some failed or the organism could not start (its
backend unreachable, the control plane's port in use), 2 the organism file or the arguments
are wrong, 130 stopped by SIGINT, 143 stopped by SIGTERM.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="organism",
        description="Run, validate and inspect organisms; see and steer running ones through "
        "their control plane (ps, top, logs, kill, cancel, stats, trace --control).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
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
    run = sub.add_parser(
        "run",
        parents=[common],
        help="boot an organism and answer envelopes",
        description=_RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("file", help="path of organism.yaml")
    run.add_argument(
        "--file",
        dest="input",
        metavar="PATH",
        help="read envelopes from PATH ('-': stdin); an envelope may span several lines",
    )
    run.add_argument("--to", help="target listener for --send")
    run.add_argument("--send", metavar="PAYLOAD_XML", help="one payload to send to --to")
    run.add_argument(
        "--timeout",
        type=float,
        default=ANSWER_TIMEOUT_SECONDS,
        help=f"seconds to wait for each answer ({ANSWER_TIMEOUT_SECONDS:g})",
    )
    run.add_argument(
        "--trace", action="store_true", help="print each conversation's hop tree on stderr"
    )
    run.add_argument(
        "--gc-threshold",
        type=_gc_threshold,
        metavar="N",
        help=f"the cyclic GC's first threshold ({GC_THRESHOLD}; Python's own is 700): with "
        "many conversations in flight the default collector walks them all again and again",
    )
    run.add_argument(
        "--control",
        metavar="[HOST:]PORT",
        help="serve the control plane there (overrides control.listen; port 0: a free one)",
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
    add_dlq_parser(sub, common)
    trace = sub.add_parser(
        "trace",
        parents=[common],
        help="print a conversation's hop tree from the records its jsonl/redis_stream sinks "
        "kept (FILE), or from a running organism (--control URL)",
    )
    trace.add_argument("file", nargs="?", help="path of organism.yaml (not with --control)")
    trace.add_argument("conversation", help="the conversation id (its first thread id)")
    _cli_control.add_control_options(trace)
    _cli_control.add_control_parsers(sub, common)
    _describe(parser)
    return parser


def _describe(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand (nested ones too) without a description its one-line help as one,
    so that ``organism ps --help`` says what ``ps`` does."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:  # the (name, help) of each subcommand
                command = action.choices[choice.dest]
                if command.description is None and choice.help:
                    command.description = choice.help[0].upper() + choice.help[1:] + "."
                _describe(command)


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
        if args.command == "dlq":
            return _run_async(dlq_command(args))
        if args.command in _cli_control.CONTROL_COMMANDS:
            return _cli_control.control_command(args)
        if args.command == "trace":
            if args.file is None or args.control is not None:
                if args.file is not None:
                    print("error: give FILE or --control URL, not both", file=sys.stderr)
                    return EXIT_CONFIG
                return _cli_control.trace_command(args)
            return _run_async(_trace(args.file, args.conversation))
        if (args.to is None) != (args.send is None):
            print("error: --to and --send go together", file=sys.stderr)
            return EXIT_CONFIG
        if args.send is not None and args.input is not None:
            print("error: --send and --file do not go together", file=sys.stderr)
            return EXIT_CONFIG
        if args.control is not None and parse_listen(args.control) is None:
            print(f"error: --control {args.control}: expected [HOST:]PORT, like 8750 or "
                  "127.0.0.1:8750", file=sys.stderr)  # fmt: skip
            return EXIT_CONFIG
        try:
            opened = _open_input(args.input)
        except OSError as exc:
            print(f"error: --file {args.input}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_CONFIG
        with opened as source:
            org = _organism(args.file, args.control)
            options = RunOptions(
                timeout=args.timeout,
                trace=args.trace,
                to=args.to,
                send=args.send,
                source=source,
                multiline=args.input is not None,
                organism_file=args.file,
            )
            _tune_gc(args.gc_threshold)  # None: not given
            return _run_async(_cli_run.run(org, options))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except NotFoundError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except XmlPipelineError as exc:  # e.g. the backend is unreachable, the pool cannot start
        problem = getattr(exc, "listen_problem", None)
        if problem is not None and getattr(args, "control", None) is not None:
            # the port came from --control, not from the file's control.listen
            print(f"error: control plane: {problem}; stop what uses the port or give --control "
                  "another one (--control 0 picks a free one)", file=sys.stderr)  # fmt: skip
            return EXIT_FAILED
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _organism(file: str, control: str | None) -> Organism:
    """The organism of ``file``, its control plane on ``control`` when given.

    Raises:
        ConfigError: the file is wrong.
    """
    config = load_config(file)
    if control is None:
        return Organism.from_config(config)
    found = parse_listen(control)  # checked by the caller; the file's listen: reads the same
    assert found is not None
    host, port = found
    control = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return Organism.from_config(
        config, control=replace(config.control or ControlConfig(), listen=control)
    )


def _open_input(path: str | None) -> contextlib.AbstractContextManager[BinaryIO]:
    """The envelopes to read: ``--file`` (``-``: stdin), else stdin.

    Raises:
        OSError: the file cannot be opened.
    """
    if path is None or path == "-":
        if sys.stdin is None:  # started with no stdin at all: nothing to read
            return open(os.devnull, "rb")
        return contextlib.nullcontext(sys.stdin.buffer)
    return open(path, "rb")  # closed by the caller's `with`


def _version() -> str:
    try:
        return f"{metadata.version('xml-pipeline')} (xml-pipeline)"
    except metadata.PackageNotFoundError:
        return "(xml-pipeline, not installed)"


GC_THRESHOLD = 10_000
_MOST_GC_THRESHOLD = 2**31 - 1  # gc.set_threshold takes a C int


def _gc_threshold(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= _MOST_GC_THRESHOLD:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of allocations from 1 to {_MOST_GC_THRESHOLD} (Python's "
            f"default: 700), got {text!r}"
        )
    return value


def _tune_gc(threshold: int | None) -> None:
    """Set the cyclic GC's first threshold for the organism's process (``organism run`` owns
    it; an embedding application decides for its own). Measured with ``bench_pump.py``: at
    30k conversations in flight, Python's 700 spends a third of the CPU per hop in full
    collections that find nothing to free (every in-flight task, future and frame walked
    again, CPU per hop ~1.45x that at 1k); 10,000 brings it to ~1.2x. Cyclic garbage waits
    for 10,000 allocations instead of 700 (milliseconds at the pump's rate)."""
    chosen = GC_THRESHOLD if threshold is None else threshold
    gc.set_threshold(chosen, *gc.get_threshold()[1:])
    source = (
        "organism run's default; --gc-threshold N to change"
        if threshold is None
        else ("--gc-threshold")
    )
    log.debug("cyclic GC thresholds %s (%s)", gc.get_threshold(), source)


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
    for warning in cpu_bound_call_warnings(config, resolved):
        print(f"warning: {warning}", file=sys.stderr)
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


async def _trace(file: str, conversation: str) -> int:
    from xml_pipeline.metrics.stored import read_trace  # reads Redis only when asked

    config = load_config(file)
    try:
        trace = await read_trace(config.metrics, conversation, redis_url=config.backend.redis_url)
    except (OSError, RedisError) as exc:
        print(f"error: cannot read the stored records: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(trace.render())
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
