"""The ``organism`` command: run, validate and inspect organisms. Thin: it calls the public API.

organism run FILE                                 messages from stdin, one per line
organism run FILE --to LISTENER --send 'XML'      one message; its answer on stdout
organism validate FILE                            every problem at once; exit 0 when clean
organism schema FILE [LISTENER]                   XSD, example document, prompt-ready description
organism schema FILE [LISTENER] --json            JSON Schema and example object, as one JSON
organism dlq list|show|replay|purge FILE ...       the dead-letter queue (see xml_pipeline._cli_dlq)

SIGTERM or SIGINT stops ``organism run`` gracefully: it reads no more input, lets what is in
flight finish for up to ``drain_timeout_seconds``, and keeps the rest as dead letters (reason
``shutdown``), then says how many lines it read, so nothing it took is lost.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from xml_pipeline._cli_dlq import add_dlq_parser, dlq_command
from xml_pipeline._cli_input import stdin_lines
from xml_pipeline._errors import ConfigError, DeliveryError, Reason, XmlPipelineError
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
    add_dlq_parser(sub, common)
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
        if args.command == "dlq":
            return _run_async(dlq_command(args))
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


async def _run(org: Organism, to: str | None, send: str | None, timeout: float) -> int:
    run = _Run(org, timeout)
    async with org, anyio.create_task_group() as watching:
        log.info("organism %r running with %d listeners", org.name, len(org.listeners))
        watching.start_soon(run.stop_on_signal)
        if to is not None and send is not None:
            status = await _answer(org, to, send, timeout, where="--send")
            run.statuses.append(status)
        else:
            await run.read_stdin()
        if not run.stopping.is_set():
            watching.cancel_scope.cancel()  # done: no more signals to wait for
    return run.report()


class _Run:
    """``organism run``: lines from stdin, each sent as it comes, and a graceful stop on
    SIGTERM or SIGINT."""

    def __init__(self, org: Organism, timeout: float) -> None:
        self.org = org
        self.timeout = timeout
        self.statuses: list[int] = []
        self.lines = 0
        self.stopping = anyio.Event()
        self.signal_name = ""
        self.reading = False  # lines come from stdin (not --send)
        self._reading = anyio.CancelScope()

    async def read_stdin(self) -> None:
        org = self.org
        self.reading = True
        # no more lines in flight than the organism admits: reading waits instead of failing
        limiter = anyio.Semaphore(org.ingress_limit)
        async with anyio.create_task_group() as group, stdin_lines(org.limits.max_bytes) as lines:
            with self._reading:
                while True:
                    # a slot first, then the line: a line read is always sent (or reported)
                    await limiter.acquire()
                    text = await lines.next()
                    if text is None:
                        limiter.release()
                        log.info("end of input: draining")
                        break
                    self.lines += 1
                    if text:
                        group.start_soon(self._line, text, self.lines, limiter)
                    else:
                        limiter.release()

    async def stop_on_signal(self) -> None:
        """On the first SIGTERM or SIGINT: stop reading, drain, dead-letter the rest; returns
        once the organism has stopped."""
        if sys.platform == "win32":  # no signal handlers there: Ctrl-C interrupts
            await anyio.sleep_forever()
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as stopping:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if self.stopping.is_set():
                        log.warning("%s: already stopping; waiting for in-flight work", name)
                        continue
                    self.signal_name = name
                    self.stopping.set()
                    self._reading.cancel()
                    log.info(
                        "%s: stopping: no more input; in-flight work drains for up to %gs, "
                        "then what is left is kept as dead letters",
                        name, self.org.drain_timeout_seconds,
                    )  # fmt: skip
                    stopping.start_soon(self._stop, stopping.cancel_scope)

    async def _stop(self, watching: anyio.CancelScope) -> None:
        with anyio.CancelScope(shield=True):
            await self.org.aclose()
        watching.cancel()  # stopped: no more signals to wait for

    async def _line(self, text: str, lineno: int, limiter: anyio.Semaphore) -> None:
        where = f"stdin line {lineno}"
        try:
            if self.stopping.is_set():  # read just before the signal: never sent
                print(
                    f"error ({where}): [shutdown] the organism is stopping; this line was not sent",
                    file=sys.stderr,
                )
                self.statuses.append(EXIT_FAILED)
            elif text.startswith("@"):
                to, _, xml = text[1:].partition(" ")
                self.statuses.append(await _answer(self.org, to, xml, self.timeout, where=where))
            else:
                self.statuses.append(await _answer(self.org, None, text, self.timeout, where))
        finally:
            limiter.release()

    def report(self) -> int:
        failures = sum(1 for status in self.statuses if status != EXIT_OK)
        answered = len(self.statuses) - failures
        if self.signal_name:
            read = (
                f" after reading {self.lines} lines (the next line was not read)"
                if self.reading
                else ""
            )
            log.info(
                "stopped by %s%s: %d answered, %d failed; %d conversations kept as dead "
                "letters (organism dlq list FILE)",
                self.signal_name, read, answered, failures, self.org.stats.dead_lettered,
            )  # fmt: skip
        else:
            log.info("done: %d answered, %d failed", answered, failures)
        return EXIT_FAILED if failures else EXIT_OK


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
